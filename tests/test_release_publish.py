"""``llbgen plan`` / ``publish`` / ``pin`` on the stack: skip what a registry has, always rebuild
``-wip``, push nothing when a structure test fails, push to two registries (one with htpasswd)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.test_build_session import auth_registry  # noqa: F401 - the fixture

pytestmark = pytest.mark.buildkit

IMAGE = '''
import llbgen

PLATFORMS = ("linux/amd64", "linux/arm64")

def build(ctx):
    return ctx.base_image("debian:trixie").file(
        llbgen.mkfile("/etc/motd", 0o644, "published by llbgen\\n"), name="motd"
    ).with_label("org.opencontainers.image.title", "motd")
'''

TESTS = '''
from llbgen.structure import FileContentTest

TESTS = [FileContentTest("motd", "/etc/motd", expected_contents=[r"{expected}"])]
'''


class Project:
    def __init__(self, path: Path, stack: dict[str, str]) -> None:
        self.path = path
        self.env = dict(
            os.environ, LLBGEN_CONFIG=stack["LLBGEN_CONFIG"], BUILDKIT_HOST=stack["BUILDKIT_HOST"],
            GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_NAME="t",
            GIT_COMMITTER_EMAIL="t@example.invalid",
        )  # fmt: skip
        self.env.pop("WITHOUT_SUFFIX", None)
        self.write("motd", IMAGE, TESTS.format(expected="^published by llbgen$"))
        self.git("init", "-q")
        self.commit()

    def write(self, name: str, image: str, tests: str) -> None:
        (self.path / "images" / name).mkdir(parents=True, exist_ok=True)
        (self.path / "images" / name / "image.py").write_text(textwrap.dedent(image))
        (self.path / "images" / name / "tests.py").write_text(textwrap.dedent(tests))

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.path, env=self.env, check=True, capture_output=True, text=True).stdout

    def commit(self) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", "change")

    def llbgen(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "llbgen", *args], cwd=self.path, env=self.env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip


def manifest(ref: str) -> dict[str, object] | None:
    """The manifest the stack's (anonymous) registry serves for ``ref``, read with urllib."""
    host, _, rest = ref.partition("/")
    name, _, tag = rest.rpartition(":")
    request = urllib.request.Request(
        f"http://{host}/v2/{name}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.load(response))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


@pytest.fixture
def repo(tmp_path: Path, stack: dict[str, str]) -> Project:
    return Project(tmp_path, stack)


def registry() -> str:
    return f"{os.environ.get('LLBGEN_REGISTRY', '127.0.0.1:5000')}/llbgen-test-{uuid.uuid4().hex[:12]}"


def test_publish_twice_pushes_the_second_time_nothing(repo: Project) -> None:
    reg = registry()
    tag = repo.llbgen("tag", "motd").stdout.strip()
    plan = repo.llbgen("plan", "--registry", reg)
    assert plan.returncode == 0, plan.stderr
    assert f"motd {tag}: build (missing in {reg})" in plan.stdout
    first = repo.llbgen("publish", "--registry", reg, "--progress", "plain")
    assert first.returncode == 0, first.stderr
    assert f"motd {tag}: built and pushed" in first.stdout
    index = manifest(f"{reg}/motd:{tag}")
    assert index is not None
    platforms = sorted(f"{m['platform']['os']}/{m['platform']['architecture']}" for m in index["manifests"])  # type: ignore[index]
    assert platforms == ["linux/amd64", "linux/arm64"]
    second = repo.llbgen("publish", "--registry", reg, "--progress", "plain")
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == f"motd {tag}: skipped (every registry has it)"
    assert "pushing" not in second.stderr
    assert "motd " + tag + ": skip (every registry has it)" in repo.llbgen("plan", "--registry", reg).stdout
    pinned = repo.llbgen("pin", f"{reg}/motd:{tag}")
    assert pinned.returncode == 0, pinned.stderr
    digest = first.stdout.split("sha256:")[1][:64]
    assert pinned.stdout.strip() == f"{reg}/motd:{tag}@sha256:{digest}"


def test_wip_tags_always_rebuild(repo: Project) -> None:
    reg = registry()
    (repo.path / "images" / "motd" / "notes.txt").write_text("uncommitted\n")
    tag = repo.llbgen("tag", "motd").stdout.strip()
    assert tag.endswith("-wip")
    for _ in range(2):
        run = repo.llbgen("publish", "--registry", reg, "--progress", "plain")
        assert run.returncode == 0, run.stderr
        assert f"motd {tag}: built and pushed" in run.stdout
    assert "wip tag: always rebuilt" in repo.llbgen("publish", "--registry", reg, "--dry-run").stdout


def test_a_failing_structure_test_pushes_nothing(repo: Project) -> None:
    reg = registry()
    repo.write("motd", IMAGE, TESTS.format(expected="^something else$"))
    repo.commit()
    tag = repo.llbgen("tag", "motd").stdout.strip()
    run = repo.llbgen("publish", "--registry", reg, "--progress", "plain")
    assert run.returncode == 1, run.stderr
    assert f"motd {tag}: failed (structure tests failed: motd on linux/amd64; motd on linux/arm64; nothing pushed)" in run.stdout
    assert manifest(f"{reg}/motd:{tag}") is None


def test_two_registries_one_with_htpasswd_both_get_the_image(
    repo: Project, auth_registry: tuple[str, str, str]  # noqa: F811
) -> None:
    host, user, password = auth_registry
    reg, private = registry(), f"{host}/llbgen-test"
    tag = repo.llbgen("tag", "motd").stdout.strip()
    denied = repo.llbgen("plan", "--registry", reg, "--registry", private)
    assert denied.returncode == 1 and "refused the credentials" in denied.stderr, denied.stderr
    repo.env.update(ANY_REGISTRY_USERNAME=user, ANY_REGISTRY_PASSWORD=password)
    run = repo.llbgen("publish", "--registry", reg, "--registry", private, "--progress", "plain")
    assert run.returncode == 0, run.stderr
    assert f"to {reg}, {private}" in run.stdout
    assert password not in run.stdout + run.stderr
    after = repo.llbgen("plan", "--registry", reg, "--registry", private)
    assert f"{private}/motd:{tag}: present" in after.stdout and f"{reg}/motd:{tag}: present" in after.stdout
    # both hold the same index
    assert repo.llbgen("pin", f"{reg}/motd:{tag}").stdout.split("@")[1] == repo.llbgen("pin", f"{private}/motd:{tag}").stdout.split("@")[1]

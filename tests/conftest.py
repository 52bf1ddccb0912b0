from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKE_DEBIAN = "127.0.0.1:5000/llbgen/debian:trixie@sha256:" + "0" * 64


@attrs.frozen
class Result:
    code: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode()


@attrs.define
class Cli:
    """Runs ``python -m llbgen`` as a user would, in a project directory of its own."""

    cwd: Path
    env: dict[str, str]

    def __call__(self, *args: str, stdin: bytes | None = None) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "llbgen", *args],
            cwd=self.cwd,
            env=self.env,
            input=stdin,
            capture_output=True,
            timeout=120,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr.decode())

    def write_image(self, name: str, source: str) -> Path:
        path = self.cwd / "images" / name / "image.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        return path


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """A project with the repository's images and a configuration pinning a (fake) Debian base."""
    shutil.copytree(ROOT / "images", tmp_path / "images")
    (tmp_path / "stack").mkdir()
    (tmp_path / "stack" / "bases.json").write_text(json.dumps({"debian:trixie": FAKE_DEBIAN}))
    (tmp_path / "stack" / "llbgen.toml").write_text('bases-file = "bases.json"\n')
    env = dict(os.environ, LLBGEN_CONFIG=str(tmp_path / "stack" / "llbgen.toml"))
    return Cli(tmp_path, env)


@pytest.fixture
def buildctl() -> Callable[..., subprocess.CompletedProcess[bytes]]:
    exe = shutil.which("buildctl")
    if exe is None:
        pytest.fail("buildctl is not installed: run scripts/install-buildkit (the test command does)")

    def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([exe, *args], input=stdin, capture_output=True, timeout=60)

    return run


STACK_DIR = Path(os.environ.get("LLBGEN_STACK_DIR", "/var/lib/llbgen-stack"))


def _stack_env() -> dict[str, str]:
    env_file = STACK_DIR / "stack.env"
    if not env_file.exists() or not (STACK_DIR / "bases.json").exists():
        pytest.fail(f"the BuildKit stack is not up ({env_file}): run scripts/stack-up (scripts/test does)")
    values = {}
    for line in env_file.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values[key.strip()] = value.strip()
    if "LLBGEN_CONFIG" not in values:
        pytest.fail(f"{env_file} has no LLBGEN_CONFIG (llbgen.toml): run scripts/stack-up again")
    return values


@pytest.fixture(scope="session")
def stack() -> dict[str, str]:
    """The environment of the stack's daemon and registry; fails when scripts/stack-up has not run."""
    values = _stack_env()
    probe = subprocess.run(
        ["buildctl", "--addr", values["BUILDKIT_HOST"], "debug", "workers"], capture_output=True, timeout=30
    )
    if probe.returncode != 0:
        pytest.fail(f"buildkitd at {values['BUILDKIT_HOST']} does not answer: run scripts/stack-up")
    return values


@pytest.fixture
def project(tmp_path: Path, stack: dict[str, str]) -> Cli:
    """A project with the repository's images, building on the stack's daemon with its base pins."""
    root = tmp_path / "project"
    shutil.copytree(ROOT / "images", root / "images")
    env = dict(os.environ, LLBGEN_CONFIG=stack["LLBGEN_CONFIG"], BUILDKIT_HOST=stack["BUILDKIT_HOST"])
    return Cli(root, env)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the stack (the ``stack`` fixture, directly or through another) must carry
    the ``buildkit`` marker: ``pytest -m "not buildkit"`` is the tier that runs with no daemon, and a
    forgotten marker would only show there."""
    unmarked = [
        item.nodeid
        for item in items
        if "stack" in getattr(item, "fixturenames", ()) and item.get_closest_marker("buildkit") is None
    ]
    if unmarked:
        raise pytest.UsageError("tests that use the stack without @pytest.mark.buildkit: " + ", ".join(unmarked))

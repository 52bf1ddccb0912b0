"""The maker image: its credential helper and Python locks (no daemon), and ``llbgen publish`` run
from inside the image against the stack's daemon and an htpasswd registry (the stack).

The stack test builds maker for linux/amd64 only (the image a CI job on this machine runs), loads
it into the stack's dockerd (scripts/stack-buildx) and runs it with the host's network and the
daemon's socket. The registry's password reaches the container on stdin, where a shell exports it
as ``ANY_REGISTRY_PASSWORD`` for llbgen and crane: ``docker run -e`` would write it into the
container's configuration on disk. ``llbgen test maker`` runs here on linux/amd64; ``make
e2e-maker`` runs it on both platforms (arm64's Debian packages install under QEMU: the longest
part of a cold build).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from llbgen.credential_env import NOT_FOUND, main
from tests.conftest import ROOT
from tests.test_build_session import auth_registry  # noqa: F401 - the fixture

MAKER = ROOT / "images" / "maker"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DOCKER = "/usr/bin/docker"  # the stack's dockerd's own client (scripts/stack-buildx)
BUILD_TIMEOUT = 3600

# -- docker-credential-env (no daemon) ---------------------------------------------------------


def helper(action: str, stdin: str, **env: str) -> tuple[int, str]:
    out = io.StringIO()
    saved = sys.stdout
    sys.stdout = out
    try:
        code = main([action], io.StringIO(stdin), env)
    finally:
        sys.stdout = saved
    return code, out.getvalue()


@pytest.mark.parametrize(
    ("server", "prefix"),
    [
        ("https://index.docker.io/v1/", "DOCKER_HUB"),
        ("quay.io", "QUAY"),
        ("127.0.0.1:5001", "ANY_REGISTRY"),
        ("https://ghcr.io", "ANY_REGISTRY"),
    ],
)
def test_credential_env_answers_from_the_variables_of_the_host(server: str, prefix: str) -> None:
    env = {f"{p}_{k}": f"{p}-{k}".lower() for p in ("DOCKER_HUB", "QUAY", "ANY_REGISTRY") for k in ("USERNAME", "PASSWORD")}
    code, out = helper("get", server + "\n", **env)
    assert code == 0
    assert json.loads(out) == {
        "ServerURL": server, "Username": f"{prefix}-username".lower(), "Secret": f"{prefix}-password".lower()
    }  # fmt: skip


def test_credential_env_without_variables_is_not_found_so_anonymous() -> None:
    # Docker Hub never falls back to ANY_REGISTRY's credentials
    assert helper("get", "https://index.docker.io/v1/", ANY_REGISTRY_USERNAME="u", ANY_REGISTRY_PASSWORD="p") == (
        1, NOT_FOUND + "\n"
    )  # fmt: skip
    code, out = helper("get", "ghcr.io", ANY_REGISTRY_PUBLIC_ACCESS_ONLY="true", ANY_REGISTRY_PASSWORD="p")
    assert code == 0 and json.loads(out) == {"ServerURL": "ghcr.io", "Username": "", "Secret": ""}


def test_credential_env_half_set_names_the_variable_not_the_value() -> None:
    code, out = helper("get", "127.0.0.1:5001", ANY_REGISTRY_PASSWORD="s3cret-value")
    assert code == 1
    assert "ANY_REGISTRY_USERNAME is not" in out and "s3cret-value" not in out


def test_credential_env_is_read_only() -> None:
    for action in ("store", "erase"):
        code, out = helper(action, '{"ServerURL": "h", "Username": "u", "Secret": "p"}')
        assert code == 1 and "not supported" in out
    assert helper("list", "") == (0, "{}\n")
    assert helper("nonsense", "")[0] == 2


def test_credential_env_runs_as_docker_runs_it() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "llbgen.credential_env", "get"], input="127.0.0.1:5001",
        env={"PATH": os.environ["PATH"], "ANY_REGISTRY_USERNAME": "u", "ANY_REGISTRY_PASSWORD": "p"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["Secret"] == "p" and proc.stderr == ""


# -- the Python locks (no daemon) ---------------------------------------------------------------


def locked(path: Path) -> dict[str, tuple[str, int]]:
    """``{name: (version, number of hashes)}`` of a hash-pinned requirements file."""
    text = re.sub(r"\s*\\\n\s*", " ", path.read_text())
    pins: dict[str, tuple[str, int]] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            m = re.fullmatch(r"([a-z0-9-]+)==(\S+)((?: --hash=sha256:[0-9a-f]{64})+)\s*", line)
            assert m, f"{path.name}: not NAME==VERSION --hash=sha256:...: {line!r}"
            pins[m[1]] = (m[2], m[3].count("--hash"))
    return pins


def test_requirements_lock_pins_what_pyproject_asks_for() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runtime, build = locked(MAKER / "requirements.lock"), locked(MAKER / "build.lock")
    for spec, lock in [(d, runtime) for d in project["project"]["dependencies"]] + [
        (d, build) for d in project["build-system"]["requires"]
    ]:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in lock, f"{name} is not in the lock"
        assert req.specifier.contains(lock[name][0]), f"{name}=={lock[name][0]} does not satisfy {spec}"
    # llbgen runs with the grpcio its bindings were generated for
    assert build["grpcio"][0] == runtime["grpcio"][0] and build["protobuf"][0] == runtime["protobuf"][0]
    # a compiled package has a wheel per machine
    assert runtime["grpcio"][1] == 2 and runtime["pyyaml"][1] == 2 and build["grpcio-tools"][1] == 2


# -- llbgen publish from inside the image (the stack) -------------------------------------------

IMAGE = '''
import llbgen

PLATFORMS = ("linux/amd64", "linux/arm64")

def build(ctx):
    return ctx.base_image("debian:trixie").file(
        llbgen.mkfile("/etc/motd", 0o644, "published from maker\\n"), name="motd"
    )
'''

TESTS = '''
from llbgen.structure import FileContentTest

TESTS = [FileContentTest("motd", "/etc/motd", expected_contents=["^published from maker$"])]
'''

# What the CI job runs in the container: the password arrives on stdin, the rest is its environment.
JOB = r"""
set -eu
IFS= read -r ANY_REGISTRY_PASSWORD
export ANY_REGISTRY_PASSWORD
llbgen publish --registry "$REGISTRY" --progress plain
# crane reaches the registry through the docker config's credential store, docker-credential-env
crane digest "$REGISTRY/motd:$(llbgen tag motd)"
"""


def ca_secret() -> list[str]:
    """pip and Go in the build trust the machine's CA bundle (a TLS-intercepting proxy)."""
    return ["--secret", f"id=ca-certificates,src={CA_BUNDLE}"] if CA_BUNDLE.is_file() else []


@pytest.fixture(scope="module")
def maker_image(stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The maker image for linux/amd64, loaded into the stack's dockerd; its image ID."""
    if not Path(DOCKER).exists():
        pytest.fail(f"{DOCKER} is missing: scripts/stack-up (stack-buildx) installs the stack's dockerd")
    tar = tmp_path_factory.mktemp("maker") / "maker.tar"
    name = f"llbgen-test/maker:{uuid.uuid4().hex[:12]}"
    argv = [sys.executable, "-m", "llbgen", "build", "maker", "--platform", "linux/amd64", "--progress", "plain",
            "-o", f"type=docker,dest={tar},name={name}", *ca_secret()]  # fmt: skip
    env = dict(os.environ, **stack)
    built = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert built.returncode == 0, built.stderr[-6000:]
    loaded = subprocess.run([DOCKER, "load", "-i", str(tar)], capture_output=True, text=True, timeout=600)
    assert loaded.returncode == 0, loaded.stderr
    tar.unlink()
    yield name
    subprocess.run([DOCKER, "rmi", "-f", name], capture_output=True, timeout=120)


@pytest.mark.buildkit
def test_structure_tests_pass_on_amd64(maker_image: str, stack: dict[str, str]) -> None:
    """`llbgen test maker` on linux/amd64 (the image from the cache); `make e2e-maker` adds arm64."""
    result = subprocess.run(
        [sys.executable, "-m", "llbgen", "test", "maker", "--platform", "linux/amd64", "--progress", "plain",
         *ca_secret()],
        cwd=ROOT, env=dict(os.environ, **stack), capture_output=True, text=True, timeout=BUILD_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert re.search(r"^maker: (\d+) passed, 0 failed", result.stdout, re.M), result.stdout


@pytest.mark.buildkit
def test_llbgen_publish_from_inside_maker_with_credentials_from_the_environment(
    maker_image: str, stack: dict[str, str], tmp_path: Path, auth_registry: tuple[str, str, str]  # noqa: F811
) -> None:
    host, user, password = auth_registry
    registry = f"{host}/maker-{uuid.uuid4().hex[:8]}"
    project = tmp_path / "project"
    (project / "images" / "motd").mkdir(parents=True)
    (project / "images" / "motd" / "image.py").write_text(textwrap.dedent(IMAGE))
    (project / "images" / "motd" / "tests.py").write_text(textwrap.dedent(TESTS))
    bases = json.loads((Path(stack["LLBGEN_STACK_DIR"]) / "bases.json").read_text())
    (project / "llbgen.toml").write_text(f'[bases]\n"debian:trixie" = "{bases["debian:trixie"]}"\n')
    git = ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "motd"], check=True)
    socket = stack["BUILDKIT_HOST"].removeprefix("unix://")
    run = subprocess.run(
        [DOCKER, "run", "--rm", "-i", "--network", "host", "-v", f"{socket}:/run/buildkit/buildkitd.sock",
         "-v", f"{project}:/workspace", "-w", "/workspace",
         "-e", "BUILDKIT_HOST=unix:///run/buildkit/buildkitd.sock", "-e", f"ANY_REGISTRY_USERNAME={user}",
         "-e", f"REGISTRY={registry}", maker_image, "bash", "-c", JOB],
        input=password + "\n", capture_output=True, text=True, timeout=BUILD_TIMEOUT,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr[-6000:]
    assert password not in run.stdout + run.stderr
    tag = subprocess.run(
        [sys.executable, "-m", "llbgen", "tag", "motd"], cwd=project, capture_output=True, text=True, check=True
    ).stdout.strip()
    published = re.search(rf"^motd {re.escape(tag)}: built and pushed .*(sha256:[0-9a-f]{{64}})", run.stdout, re.M)
    assert published, run.stdout
    # crane, inside, found the index through docker-credential-env
    assert run.stdout.strip().splitlines()[-1] == published[1]
    # and the registry, asked from here with the same credentials, serves that index under the tag
    request = urllib.request.Request(
        f"http://{host}/v2/{registry.partition('/')[2]}/motd/manifests/{tag}",
        headers={
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(),
            "Accept": "application/vnd.oci.image.index.v1+json",
        },
        method="HEAD",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Docker-Content-Digest"] == published[1]
    # nor in any file of the project the job ran in
    assert not any(password.encode() in p.read_bytes() for p in project.rglob("*") if p.is_file())

"""What travels through the session in real builds: local contexts, secrets, registry credentials."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import socket
import stat
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli

pytestmark = pytest.mark.buildkit  # every test here builds on the stack's daemon

COPY_CONTEXT = '''
import llbgen

def build(ctx):
    files = llbgen.local("ctx", exclude=["build", "*.log", "!keep.log"])
    return llbgen.scratch().file(llbgen.copy(files, "/", "/", contents_only=True))
'''


def make_context(root: Path, many: int) -> None:
    root.mkdir()
    (root / "with space.txt").write_text("spaces\n")
    (root / "ünïcødé ✓.txt").write_text("unicode\n")
    (root / "empty").write_bytes(b"")
    (root / "emptydir").mkdir()
    (root / "exec.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "exec.sh", 0o755)
    (root / "secret.pem").write_text("not really\n")
    os.chmod(root / "secret.pem", 0o600)
    os.symlink("with space.txt", root / "link-in")
    os.symlink("/etc/passwd", root / "link-abs")
    os.symlink("../outside", root / "link-out")
    (root / "build").mkdir()
    (root / "build" / "artifact.o").write_bytes(b"\0" * 10)
    (root / "debug.log").write_text("noise\n")
    (root / "keep.log").write_text("kept\n")
    for i in range(many):
        sub = root / "many" / f"d{i // 500:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:05d}.txt").write_text(f"{i}\n" * 400)  # ~2 kB: data outweighs metadata


def tree(root: Path) -> dict[str, tuple[str, int, str]]:
    """path -> (kind, permission bits, content or link target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            out[rel] = ("link", 0, os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir", stat.S_IMODE(info.st_mode), "")
        else:
            out[rel] = ("file", stat.S_IMODE(info.st_mode), path.read_text())
    return out


def transferred(stderr: str, name: str) -> float:
    """Bytes of ``transferring NAME: 1.23MB done`` in plain progress output."""
    match = re.findall(rf"transferring {name}: ([0-9.]+)([kMG]?B)", stderr)
    assert match, stderr
    value, unit = match[-1]
    return float(value) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit]


def test_context_edge_cases_and_resending_only_changes(project: Cli, tmp_path: Path) -> None:
    project.write_image("copyctx", COPY_CONTEXT)
    ctx = tmp_path / "ctx"
    make_context(ctx, many=10_000)
    out = tmp_path / "out"
    args = ["build", "copyctx", "--platform", "linux/amd64", "--local", f"ctx={ctx}", "--progress", "plain"]
    first = project(*args, "--output", f"type=local,dest={out}")
    assert first.code == 0, first.stderr

    expected = tree(ctx)
    for excluded in ("build", "build/artifact.o", "debug.log"):
        del expected[excluded]
    assert tree(out) == expected
    assert os.readlink(out / "link-out") == "../outside"  # sent as a link, never followed

    (ctx / "many" / "d00" / "f00000.txt").write_text("changed\n")  # one file of 10,000
    second = project(*args, "--output", f"type=local,dest={tmp_path / 'out2'}")
    assert second.code == 0, second.stderr
    assert (tmp_path / "out2" / "many/d00/f00000.txt").read_text() == "changed\n"
    assert transferred(second.stderr, "ctx") < transferred(first.stderr, "ctx") / 10


SECRET_IMAGE = '''
import llbgen

def build(ctx):
    base = ctx.base_image("debian:trixie")
    return base.run(
        ["sh", "-c", "sha256sum < /run/secrets/token > /token.sha256 && printenv TOKEN | sha256sum > /env.sha256"],
        mounts=[llbgen.secret("token"), llbgen.secret("token", env="TOKEN")],
    ).root
'''


def _layers_text(archive: Path) -> bytes:
    """Every file of the OCI archive, with gzip layers decompressed."""
    out = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.isfile():
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                out.append(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
    return b"".join(out)


def test_a_tmpdir_too_long_for_a_socket_still_builds(project: Cli, tmp_path: Path) -> None:
    """The session's socket path must fit in 108 bytes; under a longer $TMPDIR it goes to /tmp."""
    long_tmp = tmp_path / ("t" * 100)
    long_tmp.mkdir()
    project.env["TMPDIR"] = str(long_tmp)
    project.write_image("copyctx", COPY_CONTEXT)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "file.txt").write_text("built\n")
    out = tmp_path / "out"
    result = project(
        "build", "copyctx", "--platform", "linux/amd64", "--local", f"ctx={ctx}", "--progress", "plain",
        "--output", f"type=local,dest={out}",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert (out / "file.txt").read_text() == "built\n"


def test_secret_is_used_but_never_leaks(project: Cli, tmp_path: Path) -> None:
    project.write_image("secret", SECRET_IMAGE)
    value = "s3cr3t-" + uuid.uuid4().hex
    (tmp_path / "token").write_text(value)
    oci = tmp_path / "image.oci.tar"
    result = project(
        "build", "secret", "--platform", "linux/amd64", "--progress", "plain", "--no-cache",
        "--secret", f"id=token,src={tmp_path / 'token'}",
        "--output", f"type=oci,dest={oci}", "--output", f"type=local,dest={tmp_path / 'out'}",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    digest = hashlib.sha256(value.encode()).hexdigest()
    assert (tmp_path / "out/token.sha256").read_text().split()[0] == digest
    assert (tmp_path / "out/env.sha256").read_text().split()[0] == hashlib.sha256(value.encode() + b"\n").hexdigest()
    assert value.encode() not in _layers_text(oci)
    assert value not in result.stderr
    llb = project("llb", "secret", "--format", "json")
    assert llb.code == 0 and value not in llb.text
    assert not (tmp_path / "out/run/secrets/token").exists() or not (tmp_path / "out/run/secrets/token").read_text()


def test_missing_secret_fails_with_the_step_and_id(project: Cli) -> None:
    project.write_image("secret", SECRET_IMAGE)
    result = project("build", "secret", "--platform", "linux/amd64", "--progress", "plain", "--no-cache")
    assert result.code == 1
    assert "images/secret/image.py:" in result.stderr and "token" in result.stderr


# -- registry authentication ------------------------------------------------------------------

AUTH_PORT = 5001


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A docker-registry with htpasswd authentication on 127.0.0.1:5001 (user, password)."""
    user, password = "builder", "pw-" + uuid.uuid4().hex
    htpasswd = tmp_path / "htpasswd"
    subprocess.run(["htpasswd", "-Bbc", str(htpasswd), user, password], check=True, capture_output=True)
    config = tmp_path / "registry.yml"
    config.write_text(
        f"""version: 0.1
storage:
  filesystem:
    rootdirectory: {tmp_path / 'registry-data'}
http:
  addr: 127.0.0.1:{AUTH_PORT}
auth:
  htpasswd:
    realm: llbgen-test
    path: {htpasswd}
"""
    )
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", AUTH_PORT), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the authenticated registry did not start")
        yield f"127.0.0.1:{AUTH_PORT}", user, password
    finally:
        proc.terminate()
        proc.wait(timeout=10)


HELLO_FILE = '''
import llbgen

def build(ctx):
    return llbgen.scratch().file(llbgen.mkfile("/hello", 0o644, "hello\\n"))
'''


def test_push_with_credentials_from_the_environment(project: Cli, auth_registry: tuple[str, str, str]) -> None:
    registry, user, password = auth_registry
    project.write_image("file", HELLO_FILE)
    project.env.update(ANY_REGISTRY_USERNAME=user, ANY_REGISTRY_PASSWORD=password)
    result = project(
        "build", "file", "--progress", "plain", "--output", f"type=image,name={registry}/auth/file:1,push=true"
    )
    assert result.code == 0, result.stderr
    assert password not in result.stderr
    request = urllib.request.Request(
        f"http://{registry}/v2/auth/file/manifests/1",
        headers={
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(),
            "Accept": "application/vnd.oci.image.manifest.v1+json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.load(response)["layers"]


def test_wrong_credentials_give_a_clear_error(project: Cli, auth_registry: tuple[str, str, str]) -> None:
    registry, user, _ = auth_registry
    project.write_image("file", HELLO_FILE)
    project.env.update(ANY_REGISTRY_USERNAME=user, ANY_REGISTRY_PASSWORD="wrong-password")
    result = project(
        "build", "file", "--progress", "plain", "--output", f"type=image,name={registry}/auth/file:2,push=true"
    )
    assert result.code == 1
    assert "Traceback" not in result.stderr and "wrong-password" not in result.stderr
    report = result.stderr[result.stderr.index("llbgen: error:") :]
    assert "failed to push" in report and registry in report and "401 Unauthorized" in report
    assert "ANY_REGISTRY" in report

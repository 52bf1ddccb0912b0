"""``llbgen build`` against the real stack: exporters, platforms and image config.

These run the CLI as a user would, on the daemon and registry that scripts/stack-up started.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli

pytestmark = pytest.mark.buildkit  # every test here builds on the stack's daemon

TOOL = '''
import llbgen

PLATFORMS = ("linux/amd64", "linux/arm64")


def build(ctx):
    base = ctx.base_image("debian:trixie")
    arch = base.run(
        "sh -c 'uname -m > /out/arch'", mounts=[llbgen.bind("/out", llbgen.scratch())]
    ).mount("/out")
    payload = llbgen.local("context", include=["payload/**"])
    return (
        llbgen.scratch()
        .file(
            llbgen.copy(arch, "/arch", "/etc/arch", create_dest_path=True)
            .copy(payload, "payload", "/opt/payload", create_dest_path=True)
            .mkdir("/usr/local/bin", 0o755, parents=True)
            .mkfile("/usr/local/bin/tool", 0o755, "#!/bin/sh\\necho tool\\n")
        )
        .with_env("TOOL_HOME", "/opt/payload")
        .with_dir("/opt")
        .with_user("1000:1000")
        .with_entrypoint("/usr/local/bin/tool")
        .with_cmd("--help")
        .with_label("org.example.kind", "test")
    )
'''

ARCH = {"amd64": "x86_64", "arm64": "aarch64"}


@pytest.fixture
def tool(project: Cli) -> Cli:
    project.write_image("tool", TOOL)
    (project.cwd / "payload" / "sub").mkdir(parents=True)
    (project.cwd / "payload" / "data.txt").write_text("payload\n")
    (project.cwd / "payload" / "sub" / "private.key").write_text("k\n")
    os.chmod(project.cwd / "payload" / "sub" / "private.key", 0o600)
    return project


def build(cli: Cli, *args: str) -> bytes:
    result = cli("build", "tool", "--progress", "plain", *args)
    assert result.code == 0, result.stderr
    return result.stdout


def check_config(config: dict[str, Any], arch: str) -> None:
    assert config["architecture"] == arch and config["os"] == "linux"
    c = config["config"]
    assert c["Entrypoint"] == ["/usr/local/bin/tool"] and c["Cmd"] == ["--help"]
    assert "TOOL_HOME=/opt/payload" in c["Env"] and any(e.startswith("PATH=") for e in c["Env"])
    assert c["WorkingDir"] == "/opt" and c["User"] == "1000:1000"
    assert c["Labels"] == {"org.example.kind": "test"}


def test_local_export_of_two_platforms(tool: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build(tool, "--platform", "linux/amd64,linux/arm64", "--output", f"type=local,dest={out}")
    for arch, uname in ARCH.items():
        root = out / f"linux_{arch}"
        assert (root / "etc/arch").read_text() == uname + "\n"  # arm64 ran under QEMU
        assert (root / "opt/payload/data.txt").read_text() == "payload\n"
        assert stat.S_IMODE((root / "usr/local/bin/tool").stat().st_mode) == 0o755
        assert stat.S_IMODE((root / "opt/payload/sub/private.key").stat().st_mode) == 0o600


def _oci_blobs(archive: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    return json.loads(files["index.json"]), files


def _blob(files: dict[str, bytes], digest: str) -> dict[str, Any]:
    return json.loads(files["blobs/" + digest.replace(":", "/")])


def test_oci_export_is_a_multi_platform_index(tool: Cli, tmp_path: Path) -> None:
    dest = tmp_path / "tool.oci.tar"
    build(tool, "--platform", "linux/amd64,linux/arm64", "--output", f"type=oci,dest={dest}")
    index, files = _oci_blobs(dest.read_bytes())
    image_index = _blob(files, index["manifests"][0]["digest"])
    platforms = {m["platform"]["architecture"]: m["digest"] for m in image_index["manifests"]}
    assert set(platforms) == {"amd64", "arm64"}
    for arch, digest in platforms.items():
        manifest = _blob(files, digest)
        check_config(_blob(files, manifest["config"]["digest"]), arch)


def test_docker_export_of_one_platform(tool: Cli, tmp_path: Path) -> None:
    dest = tmp_path / "tool.docker.tar"
    build(tool, "--platform", "linux/arm64", "--output", f"type=docker,name=tool:test,dest={dest}")
    with tarfile.open(dest) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert manifest[0]["RepoTags"] == ["tool:test"]
        config = json.loads(tar.extractfile(manifest[0]["Config"]).read())  # type: ignore[union-attr]
    check_config(config, "arm64")


def test_tar_export_to_stdout(tool: Cli) -> None:
    stdout = build(tool, "--platform", "linux/amd64", "--output", "type=tar,dest=-")
    with tarfile.open(fileobj=io.BytesIO(stdout)) as tar:
        names = set(tar.getnames())
        assert tar.extractfile("etc/arch").read() == b"x86_64\n"  # type: ignore[union-attr]
    assert {"usr/local/bin/tool", "opt/payload/data.txt"} <= names


def _registry_json(registry: str, path: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://{registry}/v2/{path}",
        headers={
            "Accept": "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)  # type: ignore[no-any-return]


def test_image_push_to_the_registry(tool: Cli, stack: dict[str, str], tmp_path: Path) -> None:
    registry = stack["LLBGEN_REGISTRY"]
    name, tag = "llbgen-test/tool", uuid.uuid4().hex[:12]
    meta = tmp_path / "meta.json"
    build(
        tool,
        "--platform", "linux/amd64,linux/arm64",
        "--output", f"type=image,name={registry}/{name}:{tag},push=true",
        "--metadata-file", str(meta),
    )  # fmt: skip
    digest = json.loads(meta.read_text())["containerimage.digest"]
    index = _registry_json(registry, f"{name}/manifests/{tag}")
    assert {m["platform"]["architecture"] for m in index["manifests"]} == {"amd64", "arm64"}
    assert _registry_json(registry, f"{name}/manifests/{digest}") == index
    for entry in index["manifests"]:
        manifest = _registry_json(registry, f"{name}/manifests/{entry['digest']}")
        config = _registry_json(registry, f"{name}/blobs/{manifest['config']['digest']}")
        check_config(config, entry["platform"]["architecture"])

"""Pinned Debian sources kept in a registry: ``llbgen sources push``, and a build whose pin the
mirror does not have, served from the registry (same bytes, same checksum)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.request
import uuid

import pytest

from llbgen.release.registry import Registry, Repository
from llbgen.release.sources import push_artifact
from tests.conftest import Cli

pytestmark = pytest.mark.buildkit

FALLBACK = '''
import llbgen

def build(ctx):
    debian = ctx.helper("sources/debian")
    source = debian.source_package(ctx, "hello", "9.99", orig_sha256="{sha}", pin="a test pin")
    return source.unpack(ctx.base_image("debian:trixie"))
'''


def tarball(text: str) -> bytes:
    """A gzip'd tar with hello-9.99/README, as an orig tarball would hold it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        data = text.encode()
        info = tarfile.TarInfo("hello-9.99/README")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def repository(stack: dict[str, str]) -> str:
    return f"{stack['LLBGEN_REGISTRY']}/llbgen-test-{uuid.uuid4().hex[:12]}"


def test_a_pin_the_mirror_does_not_have_comes_from_the_registry(project: Cli, stack: dict[str, str]) -> None:
    marker = f"kept in a registry {uuid.uuid4()}\n"
    data = tarball(marker)
    sha = hashlib.sha256(data).hexdigest()
    project.write_image("fallback", FALLBACK.format(sha=sha))
    prefix = repository(stack)
    build = ["build", "fallback", "--platform", "linux/amd64", "--progress", "plain"]

    # not in the registry yet: the step says the mirror lacks it, and so does the registry
    missing = project(*build, "--arg", f"SOURCES_REGISTRY={prefix}/sources", "-o", f"type=local,dest={project.cwd / 'no'}")
    assert missing.code == 1
    assert "has no blob sha256:" + sha in missing.stderr, missing.stderr
    assert "no longer has source package hello at the pinned upstream version 9.99" in missing.stderr

    with Registry() as registry:
        push_artifact(registry, Repository.parse(f"{prefix}/sources")[0], data, "hello_9.99.orig.tar.gz")
    out = project.cwd / "out"
    built = project(*build, "--arg", f"SOURCES_REGISTRY={prefix}/sources", "-o", f"type=local,dest={out}")
    assert built.code == 0, built.stderr
    assert (out / "README").read_text() == marker
    assert (out / ".provenance").read_text() == f"hello 9.99 hello_9.99.orig.tar.gz sha256:{sha}\n"
    assert f"trying the copy in {prefix}/sources" in built.stderr


def test_sources_push_uploads_what_the_definitions_pin(project: Cli, stack: dict[str, str]) -> None:
    """bpftool pins linux and elfutils: both land as blobs with their pinned sha256, once."""
    prefix = repository(stack)
    first = project("sources", "push", "bpftool", "--registry", prefix, "--progress", "plain")
    assert first.code == 0, first.stderr
    lines = first.text.splitlines()
    assert [line.split(":")[0] for line in lines] == ["elfutils 0.192", "linux 6.12.107"]
    for line in lines:
        sha = line.split(" sha256:")[1].split()[0]
        url = f"http://{prefix.split('/', 1)[0]}/v2/{prefix.split('/', 1)[1]}/sources/blobs/sha256:{sha}"
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=60) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
        assert digest.hexdigest() == sha
    again = project("sources", "push", "bpftool", "--registry", prefix)
    assert again.code == 0
    assert again.text.splitlines() == [f"elfutils 0.192: present in {prefix}/sources", f"linux 6.12.107: present in {prefix}/sources"]

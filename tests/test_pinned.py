"""Lint: every source an image in images/ builds from is pinned.

Registry images by digest, http sources by checksum, git sources by commit, and Debian source
packages by upstream version and orig-tarball checksum (the download step's arguments). Checked
on the marshalled graphs, for every image and platform, so nothing a definition computes escapes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import llbgen
from llbgen.pb import ops_pb2
from tests.conftest import ROOT

PINS = {"debian:trixie": "127.0.0.1:5000/llbgen/debian:trixie@sha256:" + "0" * 64}
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def graphs() -> list[tuple[str, str, llbgen.Definition]]:
    project = llbgen.Project(ROOT / "images", bases_file=Path("/nonexistent"))
    args = {f"base:{name}": ref for name, ref in PINS.items()}
    out = []
    for name in project.names():
        for platform in project.definition(name).platforms:
            state = project.state(name, project.context(platform, args, llbgen.Platform.parse("linux/amd64")))
            out.append((name, str(platform), llbgen.marshal(state, platform=platform)))
    return out


def unpinned(definition: llbgen.Definition) -> list[str]:
    problems = []
    for _, data in definition:
        op = ops_pb2.Op.FromString(data)
        kind = op.WhichOneof("op")
        if kind == "source":
            ident, attrs = op.source.identifier, dict(op.source.attrs)
            if ident.startswith("docker-image://") and "@sha256:" not in ident:
                problems.append(f"image not pinned by digest: {ident}")
            elif ident.startswith(("http://", "https://")) and "http.checksum" not in attrs:
                problems.append(f"http source without checksum: {ident}")
            elif ident.startswith("git://") and not (
                "git.checksum" in attrs or re.search(r"#[0-9a-f]{40}(:|$)", ident)
            ):
                problems.append(f"git source not pinned to a commit: {ident}")
        elif kind == "exec":
            args = list(op.exec.meta.args)
            for i, arg in enumerate(args):
                if arg.endswith("fetch-debian-source.sh"):
                    package, version, checksum = (args[i + 1 : i + 4] + ["", "", ""])[:3]
                    if not version or not SHA256.match(checksum):
                        problems.append(f"Debian source {package!r} without version and sha256: {args}")
    return problems


GRAPHS = graphs()


def test_every_image_is_checked() -> None:
    names = {name for name, _, _ in GRAPHS}
    assert {"hello", "compilers", "bpftool"} <= names


@pytest.mark.parametrize(("name", "platform", "definition"), GRAPHS, ids=[f"{n}-{p}" for n, p, _ in GRAPHS])
def test_image_sources_are_pinned(name: str, platform: str, definition: llbgen.Definition) -> None:
    assert unpinned(definition) == []


def test_the_lint_catches_unpinned_sources() -> None:
    bad = llbgen.merge(
        [
            llbgen.image("debian:trixie"),
            llbgen.http("https://example.com/x.tar.gz"),
            llbgen.git("https://example.com/x.git", "main"),
            llbgen.image("debian:trixie@sha256:" + "1" * 64).run(["sh", "/llbgen/fetch-debian-source.sh", "linux"]).root,
        ]
    )
    problems = unpinned(llbgen.marshal(bad, platform="linux/amd64"))
    assert len(problems) == 4, json.dumps(problems, indent=1)


def test_debian_source_downloads_are_seen_by_the_lint() -> None:
    packages = set()
    for name, _, definition in GRAPHS:
        for _, data in definition if name == "bpftool" else ():
            op = ops_pb2.Op.FromString(data)
            args = list(op.exec.meta.args) if op.WhichOneof("op") == "exec" else []
            for i, arg in enumerate(args):
                if arg.endswith("fetch-debian-source.sh"):
                    packages.add(args[i + 1])
    assert packages == {"linux", "elfutils"}

"""llbgen reproduces, byte for byte, the definitions BuildKit's Go client made for the same graphs.

The vectors (tests/data/llb-vectors, copied from the project's shared reference material) were
marshalled by github.com/moby/buildkit/client/llb v0.32.2 with platform linux/amd64 and local unique
id "llbgen-vectors"; their README lists the Go construction each expression below mirrors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

import llbgen
from llbgen.pb import ops_pb2

VECTORS = Path(__file__).parent / "data" / "llb-vectors"
DEB = (
    "docker.io/library/debian:bookworm"
    "@sha256:b5ed2cb4e2e5d8c4b2d3c2b1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1"
)


def base() -> llbgen.State:
    return llbgen.image(DEB)


def mount_output() -> llbgen.ExecState:
    return base().run("cp /etc/os-release /out/", mounts=[llbgen.bind("/out", llbgen.scratch())])


CASES: dict[str, Callable[[], llbgen.State]] = {
    "01_image": base,
    "02_mkfile": lambda: llbgen.scratch().file(llbgen.mkfile("/hello.txt", 0o644, "hello\n")),
    "03_run_env_dir": lambda: base().with_env("CC", "gcc").with_dir("/src").run("make -j2 all").root,
    "04_run_args_user": lambda: base()
    .with_user("nobody")
    .run(["/bin/sh", "-c", "id > /tmp/id"])
    .root,
    "05_mounts_cache_tmpfs": lambda: base()
    .run(
        "apt-get update",
        mounts=[
            llbgen.cache("/var/cache/apt", "apt-cache", sharing="locked"),
            llbgen.tmpfs("/tmp"),
        ],
    )
    .root,
    "06_secret_ssh": lambda: base()
    .run(
        "git clone git@example.com:x.git",
        mounts=[llbgen.secret("token", target="/run/secrets/token"), llbgen.ssh("default")],
    )
    .root,
    "07_bind_readonly_netnone": lambda: base()
    .with_network("none")
    .run(
        "cc -o /out/a /src/a.c",
        mounts=[llbgen.bind("/src", llbgen.local("context"), readonly=True, path="/cmd")],
    )
    .root,
    "08_mount_output": lambda: mount_output().mount("/out"),
    "09_fileop_chain": lambda: llbgen.scratch().file(
        llbgen.mkdir("/usr/local/bin", 0o755, parents=True)
        .copy(mount_output().root, "/out/os-release", "/usr/local/share/os-release", create_dest_path=True)
        .rm("/tmp", allow_not_found=True)
    ),
    "10_copy_options": lambda: llbgen.scratch().file(
        llbgen.copy(
            llbgen.local("context"),
            "/src/",
            "/app/",
            follow_symlinks=True,
            contents_only=True,
            include=["*.py"],
            allow_wildcard=True,
            create_dest_path=True,
            owner=(1000, 1000),
        )
    ),
    "11_local_opts": lambda: llbgen.local(
        "src", include=["images/**"], exclude=["**/*.md"], shared_key_hint="src"
    ),
    "12_git": lambda: llbgen.git("https://github.com/libbpf/bpftool.git", "v7.7.0", keep_git_dir=True),
}


def load_vector(name: str) -> ops_pb2.Definition:
    return ops_pb2.Definition.FromString((VECTORS / f"{name}.pb").read_bytes())


def test_every_vector_has_a_case() -> None:
    assert sorted(CASES) == sorted(p.stem for p in VECTORS.glob("*.pb"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_bytes_equal_go(name: str) -> None:
    expected = list(getattr(load_vector(name), "def"))
    ours = llbgen.marshal(CASES[name](), platform="linux/amd64", local_unique_id="llbgen-vectors")
    assert [op.hex() for op in ours.ops] == [op.hex() for op in expected]
    assert list(ours.digests) == ["sha256:" + hashlib.sha256(op).hexdigest() for op in expected]


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_metadata_equals_go(name: str) -> None:
    expected = load_vector(name).metadata
    ours = llbgen.marshal(
        CASES[name](), platform="linux/amd64", local_unique_id="llbgen-vectors"
    ).to_pb()
    assert set(ours.metadata) == set(expected)
    for digest, meta in expected.items():
        assert ours.metadata[digest] == meta, digest

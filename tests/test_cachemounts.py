"""Cache mounts that travel (--cache-mounts-to / --cache-mounts-from, llbgen.client.cachemounts).

The fast tier: parsing the flags, finding cache mounts in a marshalled definition, the copy steps'
graphs. The stack tier: ccache's cache mount exported by one daemon, seeding a new empty daemon
that builds after a one-line change.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import urllib.request
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import llbgen
from llbgen.cli import main
from llbgen.client.cachemounts import export_state, find_cache_mounts, seed_state, select
from llbgen.client.cachemountspec import CacheMountsRef, dir_name
from llbgen.llb.errors import LLBGenError, UsageError
from llbgen.llb.existing import ExistingGraph
from llbgen.pb import ops_pb2
from tests.conftest import ROOT
from tests.test_release_publish import Project, manifest

DATA = ROOT / "tests" / "data" / "cachemounts"
AMD64 = llbgen.Platform.parse("linux/amd64")
ARM64 = llbgen.Platform.parse("linux/arm64")
BASE = "127.0.0.1:5000/x/debian@sha256:" + "1" * 64


# -- the flags --------------------------------------------------------------------------------


def test_parse_a_reference_alone() -> None:
    spec = CacheMountsRef.parse("127.0.0.1:5000/app-cache:main", "--cache-mounts-to")
    assert spec == CacheMountsRef("127.0.0.1:5000/app-cache:main")
    assert spec.wants("anything")


def test_parse_ids_and_max_size() -> None:
    spec = CacheMountsRef.parse("r.example/c:t,ids=ccache,apt-*,max-size=2G", "--cache-mounts-to")
    assert spec.ids == ("ccache", "apt-*")
    assert spec.max_size == 2 * 1024**3
    assert spec.wants("ccache") and spec.wants("apt-lists") and not spec.wants("go-build")
    assert CacheMountsRef.parse("r.example/c,max-size=500M,ids=a", "f").max_size == 500 * 1024**2


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("ids=a", "expected REF"),
        (",ids=a", "expected REF"),
        ("r.example/c,ids=", "needs at least one"),
        ("r.example/c,mode=max", "unknown key 'mode'"),
        ("r.example/c,max-size=lots", "not a size"),
        ("r.example/c,ccache", "not KEY=VALUE"),
        ("r.example/UPPER", "invalid image reference"),
        ("r.example/c@sha256:" + "a" * 64, "under a tag, not a digest"),
    ],
)
def test_bad_specs_are_usage_errors(text: str, says: str) -> None:
    with pytest.raises(UsageError, match=re.escape(says)):
        CacheMountsRef.parse(text, "--cache-mounts-to")


def test_a_seed_has_no_size_limit() -> None:
    with pytest.raises(UsageError, match=re.escape("unknown key 'max-size' (keys: ids)")):
        CacheMountsRef.parse("r.example/c,max-size=1G", "--cache-mounts-from")


def test_bad_flag_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--images", str(tmp_path), "build", "app", "--cache-mounts-to", "r.example/c,bogus=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("llbgen: error: --cache-mounts-to 'r.example/c,bogus=1': unknown key")


def test_each_node_of_a_multi_node_build_has_its_own_tag() -> None:
    assert CacheMountsRef("r.example/c:main", ("a",)).for_node(ARM64) == CacheMountsRef("r.example/c:main-linux-arm64", ("a",))
    assert CacheMountsRef("localhost:5000/c").for_node(AMD64).ref == "localhost:5000/c:latest-linux-amd64"
    with pytest.raises(UsageError, match="needs a tag"):
        CacheMountsRef("r.example/c@sha256:" + "a" * 64).for_node(AMD64)


def test_directory_names_keep_ids_apart_and_inside() -> None:
    assert dir_name("llvm-ccache-linux_amd64") == "llvm-ccache-linux_amd64"
    assert dir_name("/root/.cache/go-build") == "%2Froot%2F%2Ecache%2Fgo-build"
    assert dir_name("..") == "%2E%2E"
    assert dir_name("a b") != dir_name("a_b")


# -- finding the cache mounts -----------------------------------------------------------------


def _graph() -> llbgen.State:
    base = llbgen.image(BASE)
    seeded = base.run("sh -c 'echo seed > /s'").root
    first = base.run(
        "sh -c 'make'",
        mounts=[llbgen.cache("/ccache", "cc", sharing="locked"), llbgen.cache("/var/cache/apt", "apt")],
    ).root
    second = first.run(
        "sh -c 'make again'",
        mounts=[llbgen.cache("/ccache", "cc", sharing="shared"), llbgen.cache("/go", "go", source=seeded, sharing="private")],
        platform=ARM64,
    ).root
    return second


def _exec_digests(definition: llbgen.Definition) -> list[tuple[str, ops_pb2.Op]]:
    ops = [(d, ops_pb2.Op.FromString(o)) for d, o in definition]
    return [(d, op) for d, op in ops if op.WhichOneof("op") == "exec"]


def test_every_cache_mount_is_found_with_the_first_step_using_it() -> None:
    definition = llbgen.marshal(_graph(), platform=AMD64)
    uses = find_cache_mounts([definition])
    assert sorted(uses) == ["apt", "cc", "go"]
    assert uses["cc"].sharing == llbgen.CacheSharing.LOCKED  # the first step's mode, not the second's
    assert uses["apt"].sharing == llbgen.CacheSharing.SHARED
    assert uses["go"].sharing == llbgen.CacheSharing.PRIVATE
    execs = dict(_exec_digests(definition))
    image_digest = definition.digests[0]
    assert uses["cc"].rootfs == (image_digest, 0) and uses["cc"].platform == AMD64
    # the second step's root is the first step's output; its go cache has the seeded state as base
    make = next(d for d, op in execs.items() if op.exec.meta.args[-1] == "make")
    seed = next(d for d, op in execs.items() if op.exec.meta.args[-1] == "echo seed > /s")
    assert uses["go"].rootfs == (make, 0) and uses["go"].platform == ARM64
    assert uses["go"].base == (seed, 0)


def test_a_step_on_scratch_is_not_a_place_to_copy_from() -> None:
    state = llbgen.scratch().run("/bin/tool", mounts=[llbgen.cache("/c", "only-on-scratch")]).root
    assert find_cache_mounts([llbgen.marshal(state, platform=AMD64)]) == {}


def test_selecting_an_id_the_build_does_not_use_is_an_error() -> None:
    uses = find_cache_mounts([llbgen.marshal(_graph(), platform=AMD64)])
    assert [u.id for u in select(uses, CacheMountsRef("r.example/c", ("c*", "go")), "--cache-mounts-to")] == ["cc", "go"]
    with pytest.raises(LLBGenError, match=r"^--cache-mounts-to: the build uses no cache mount 'ccache' \(its cache mounts: apt, cc, go\)$"):
        select(uses, CacheMountsRef("r.example/c", ("cc", "ccache")), "--cache-mounts-to")


def test_existing_ops_marshal_to_the_same_bytes() -> None:
    definition = llbgen.marshal(_graph(), platform=AMD64)
    again = llbgen.marshal(ExistingGraph(definition).state(definition.digests[-2]), platform=ARM64)
    assert again.ops == definition.ops
    assert again.metadata == definition.metadata


def test_copy_steps_mount_the_cache_as_the_build_does_on_its_root() -> None:
    definition = llbgen.marshal(_graph(), platform=AMD64)
    uses = find_cache_mounts([definition])
    chosen = [uses["cc"], uses["go"]]
    exported = llbgen.marshal(export_state(chosen, max_size=3000), platform=AMD64)
    copies = {op.exec.meta.args[4]: (d, op) for d, op in _exec_digests(exported) if op.exec.meta.args[3:4] == ["llbgen-cache-mounts"]}
    assert sorted(copies) == ["cc", "go"]
    for id, (_, op) in copies.items():
        cache = next(m for m in op.exec.mounts if m.mountType == ops_pb2.CACHE)
        assert (cache.cacheOpt.ID, cache.cacheOpt.sharing) == (id, uses[id].sharing)
        root = next(m for m in op.exec.mounts if m.dest == "/")
        assert (op.inputs[root.input].digest, op.inputs[root.input].index) == uses[id].rootfs
    go = copies["go"][1]
    go_cache = next(m for m in go.exec.mounts if m.mountType == ops_pb2.CACHE)
    assert go.inputs[go_cache.input].digest == uses["go"].base[0]  # type: ignore[index]
    assert go.platform.Architecture == "arm64" and copies["cc"][1].platform.Architecture == "amd64"
    assert copies["cc"][1].exec.meta.args[-1] == "3"  # KiB, rounded up
    # one layer per id: the outputs merged
    assert ops_pb2.Op.FromString(exported.ops[-2]).WhichOneof("op") == "merge"
    # every copy is a new step (a token), and none ignores the cache (it would get an empty mount)
    again = llbgen.marshal(export_state(chosen), platform=AMD64)
    assert set(again.digests).isdisjoint({d for d, _ in copies.values()})
    assert not any(m.ignore_cache for m in exported.metadata.values())


def test_the_seed_is_mounted_read_only_from_the_pinned_image() -> None:
    uses = find_cache_mounts([llbgen.marshal(_graph(), platform=AMD64)])
    pinned = "r.example/c:main@sha256:" + "2" * 64
    seeded = llbgen.marshal(seed_state([uses["cc"]], pinned), platform=AMD64)
    sources = [ops_pb2.Op.FromString(o).source.identifier for o in seeded.ops if ops_pb2.Op.FromString(o).WhichOneof("op") == "source"]
    assert f"docker-image://{pinned}" in sources
    (_, copy), = [(d, op) for d, op in _exec_digests(seeded) if op.exec.meta.args[3:4] == ["llbgen-cache-mounts"]]
    seed_mount = next(m for m in copy.exec.mounts if m.dest == "/llbgen-seed")
    assert seed_mount.readonly


# -- on the stack: daemon A exports, a new empty daemon B is seeded ---------------------------


def _llbgen(env: dict[str, str], images: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llbgen", "--images", str(images), *args],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _image(tmp_path: Path, name: str, source: str) -> Path:
    """A project of one image ``name``; its images directory."""
    image = tmp_path / "images" / name / "image.py"
    image.parent.mkdir(parents=True)
    image.write_text(source)
    return tmp_path / "images"


def _stack_env(stack: dict[str, str]) -> dict[str, str]:
    return dict(os.environ, LLBGEN_CONFIG=stack["LLBGEN_CONFIG"], BUILDKIT_HOST=stack["BUILDKIT_HOST"])


def _hits(log: str) -> str:
    """ccache's 'Hits: N / M' of the compile step (the first such line of ccache -s)."""
    found = re.search(r"ccache:\s+Hits:\s+(\d+ / +\d+)", log)
    assert found, log[-3000:]
    return re.sub(r" +", " ", found.group(1))


def _layers(ref: str) -> list[str]:
    found = manifest(ref)
    assert found is not None, ref
    return [layer["digest"] for layer in found["layers"]]  # type: ignore[index, union-attr]


@pytest.mark.buildkit
def test_a_new_daemon_seeded_from_the_registry_hits_ccache_and_builds_what_a_cold_one_does(
    tmp_path: Path, stack: dict[str, str]
) -> None:
    from benchmarks.private_daemon import private_daemon

    env = _stack_env(stack)
    registry = f"{stack['LLBGEN_REGISTRY']}/llbgen-test-{uuid.uuid4().hex[:12]}"
    # The compilers image with ccache, pushed once and pinned: a fresh daemon pulls it.
    pushed = subprocess.run(
        [sys.executable, "-m", "llbgen", "build", "compilers-ccache", "--platform", "linux/amd64",
         "-o", f"type=image,name={registry}/compilers-ccache:t,push=true", "--progress", "plain"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    compilers = f"{registry}/compilers-ccache:t@" + re.findall(r"sha256:[0-9a-f]{64}", pushed.stderr)[-1]
    # Sources of this test run alone (so no daemon has their compile cached), then a one-line change.
    context = tmp_path / "context"
    shutil.copytree(DATA / "src", context / "src")
    (context / "src" / "main.c").write_text((DATA / "src" / "main.c").read_text() + f"/* {uuid.uuid4().hex} */\n")
    cache_id = uuid.uuid4().hex[:12]
    common = ["build", "ccdemo", "--arg", f"COMPILERS={compilers}", "--local", f"context={context}", "--progress", "plain"]
    cache_ref = f"{registry}/ccdemo-cache:main"
    layers_ref = f"{registry}/ccdemo-layers:main"

    def build(environment: dict[str, str], name: str, *extra: str, id: str = cache_id) -> str:
        run = _llbgen(environment, DATA / "images", *common, "--arg", f"CACHE_ID={id}", "-o", f"type=local,dest={tmp_path / name}", *extra)
        assert run.returncode == 0, run.stderr[-3000:]
        return run.stderr

    # A: the stack's daemon; no seed yet (a warning), the cache exported after the build.
    log_a = build(
        env, "a", "--cache-mounts-from", cache_ref, "--cache-mounts-to", cache_ref,
        "--cache-to", f"type=registry,ref={layers_ref},mode=max",
    )  # fmt: skip
    assert f"llbgen: warning: --cache-mounts-from {cache_ref}: not in the registry; building without seeding" in log_a
    assert _hits(log_a) == "0 / 5"
    first = _layers(cache_ref)
    assert len(first) == 1  # one layer per cache mount id
    # the same cache exported again (the build is cached, the mount unchanged): the same layer blob
    log_again = build(env, "a-again", "--cache-mounts-to", f"{cache_ref}-again")
    assert "Hits:" not in log_again  # the compile step came from the daemon's cache
    assert _layers(f"{cache_ref}-again") == first
    assert manifest(f"{cache_ref}-again") == manifest(cache_ref)  # and the same image (a fixed creation time)

    (context / "src" / "part2.c").write_text("int part2(int x) { return x * 2 + 20; }\n")
    # B: a new, empty daemon, seeded from the registry.
    state = Path(f"/tmp/llbgen-cm-{uuid.uuid4().hex[:8]}")  # short: the daemon's socket lives in it
    try:
        with private_daemon(state) as address:
            log_b = build(
                dict(env, BUILDKIT_HOST=address), "b", "--cache-mounts-from", cache_ref,
                "--cache-from", f"type=registry,ref={layers_ref}",
            )  # fmt: skip
    finally:
        subprocess.run(["rm", "-rf", str(state)], check=False)
    assert f"llbgen: cache mount ccdemo-ccache-{cache_id}: seeded" in log_b
    # the compile's root came from the registry cache, for the seeding's copy steps too
    assert "prepare the compile's root" in log_b
    assert "llbgen-test: prepared the root" not in log_b
    assert _hits(log_b) == "4 / 5"  # every file but part2.c
    # C: a cold build of the same change (an empty cache mount of another id).
    log_c = build(env, "c", id=uuid.uuid4().hex[:12])
    assert _hits(log_c) == "0 / 5"
    binary = "usr/local/bin/ccdemo"
    assert (tmp_path / "b" / binary).read_bytes() == (tmp_path / "c" / binary).read_bytes()
    assert (tmp_path / "a" / binary).read_bytes() != (tmp_path / "b" / binary).read_bytes()  # the change is in it
    assert subprocess.run([str(tmp_path / "b" / binary)], capture_output=True, text=True).stdout == "ccdemo 58\n"


COUNTER = """
import llbgen

PLATFORMS = ("linux/amd64",)
CACHE_MOUNTS = ("counter-*",)

def build(ctx):
    return ctx.base_image("debian:trixie").run(
        ["sh", "-c", "n=$(cat /cache/n 2>/dev/null || echo 0); echo $((n + 1)) >/cache/n; uname -m >/cache/arch; echo $n >/seen # {token}"],
        mounts=[llbgen.cache("/cache", "counter-{token}", sharing="locked")],
    ).root
"""

COUNTER_TESTS = """
from llbgen.structure import FileContentTest

TESTS = [FileContentTest("seen", "/seen", expected_contents=[r"^[0-9]+$"])]
"""


def _layer_tars(ref: str) -> list[tarfile.TarFile]:
    """The layers of the image ``ref``, read from the stack's registry, in order."""
    host, _, rest = ref.partition("/")
    tars = []
    for digest in _layers(ref):
        with urllib.request.urlopen(f"http://{host}/v2/{rest.rpartition(':')[0]}/blobs/{digest}", timeout=30) as response:
            tars.append(tarfile.open(fileobj=io.BytesIO(gzip.decompress(response.read()))))
    return tars


def _file_in_layer(ref: str, path: str) -> str:
    """A file of the single-layer image ``ref``."""
    (tar,) = _layer_tars(ref)
    member = tar.extractfile(path)
    assert member is not None, path
    return member.read().decode()


@pytest.mark.buildkit
def test_publish_carries_the_declared_cache_mounts_to_a_new_daemon(tmp_path: Path, stack: dict[str, str]) -> None:
    from benchmarks.private_daemon import private_daemon

    repo = Project(tmp_path / "repo", stack)
    token = uuid.uuid4().hex[:12]
    repo.write("counter", COUNTER.format(token=token), COUNTER_TESTS)
    repo.commit()
    prefix = f"{stack['LLBGEN_REGISTRY']}/llbgen-test-{uuid.uuid4().hex[:12]}"
    cache_ref = f"{prefix}/counter-cache-mounts:latest"
    first = repo.llbgen("publish", "counter", "--registry", prefix, "--progress", "plain")
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"--cache-mounts-from {cache_ref}: not in the registry" in first.stderr
    assert _file_in_layer(cache_ref, f"counter-{token}/n") == "1\n"
    state = Path(f"/tmp/llbgen-cm-{uuid.uuid4().hex[:8]}")
    try:
        with private_daemon(state) as address:
            again = repo.llbgen("publish", "counter", "--registry", prefix, "--force", "--addr", address, "--progress", "plain")
    finally:
        subprocess.run(["rm", "-rf", str(state)], check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"llbgen: cache mount counter-{token}: seeded" in again.stderr
    # the new daemon counted on from the seed (a cold one would have written 1 again)
    assert _file_in_layer(cache_ref, f"counter-{token}/n") == "2\n"


@pytest.mark.buildkit
def test_each_node_of_a_builder_keeps_its_own_cache_mounts(tmp_path: Path, stack: dict[str, str]) -> None:
    multi = stack.get("LLBGEN_BUILDX_MULTINODE")
    if multi is None or shutil.which("docker") is None:
        pytest.fail("the stack has no multi-node buildx builder: run scripts/stack-up")
    token = uuid.uuid4().hex[:12]
    images = _image(tmp_path, "counter", COUNTER.format(token=token).replace('("linux/amd64",)', '("linux/amd64", "linux/arm64")'))
    env = {k: v for k, v in _stack_env(stack).items() if k not in ("BUILDKIT_HOST", "BUILDX_BUILDER")}
    ref = f"{stack['LLBGEN_REGISTRY']}/llbgen-test-{uuid.uuid4().hex[:12]}/counter-cache:main"
    common = ["build", "counter", "--builder", multi, "--platform", "linux/amd64,linux/arm64", "--progress", "plain"]
    run = _llbgen(env, images, *common, "--cache-mounts-to", ref)
    assert run.returncode == 0, run.stderr[-3000:]
    for arch in ("amd64", "arm64"):
        assert _file_in_layer(f"{ref}-linux-{arch}", f"counter-{token}/n") == "1\n"
    # Each node loses its cache mount; the next build seeds it from the node's own tag.
    for arch in ("amd64", "arm64"):
        subprocess.run(
            ["docker", "exec", f"buildx_buildkit_{multi}-{arch}", "buildctl", "prune", "--filter", f"description~=counter-{token}"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    again = _llbgen(env, images, *common, "--cache-mounts-from", ref, "--cache-mounts-to", f"{ref}-again")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count(f"llbgen: cache mount counter-{token}: seeded") == 2
    # what each node pushed back is what it was seeded with: its own platform's cache
    for arch, machine in (("amd64", "x86_64"), ("arm64", "aarch64")):
        assert _file_in_layer(f"{ref}-again-linux-{arch}", f"counter-{token}/arch") == f"{machine}\n"


NO_SH = """
import llbgen

def build(ctx):
    base = ctx.base_image("debian:trixie")
    if ctx.arg("NO_SH"):
        base = base.run(["rm", "/bin/sh"]).root
    return base.run(["/bin/bash", "-c", "head -c 20000 /dev/zero > /c/x # {token}"], mounts=[llbgen.cache("/c", "c-{token}")]).root
"""


@pytest.mark.buildkit
def test_copy_step_failures_are_one_line(tmp_path: Path, stack: dict[str, str]) -> None:
    token = uuid.uuid4().hex[:12]
    images = _image(tmp_path, "nosh", NO_SH.format(token=token))
    ref = f"{stack['LLBGEN_REGISTRY']}/llbgen-test-{token}/nosh:t"

    def build(*extra: str) -> subprocess.CompletedProcess[str]:
        return _llbgen(_stack_env(stack), images, "build", "nosh", "--progress", "plain", *extra)

    def error(run: subprocess.CompletedProcess[str]) -> str:
        assert run.returncode == 1, run.stderr[-3000:]
        return run.stderr.splitlines()[-1]

    assert re.fullmatch(
        rf"llbgen: error: --cache-mounts-to: cache mount c-{token} holds (2[0-9]) KiB, over max-size \(8 KiB\): not exported",
        error(build("--cache-mounts-to", f"{ref},max-size=8K")),
    )
    assert error(build("--cache-mounts-to", ref, "--arg", "NO_SH=1")) == (
        f"llbgen: error: --cache-mounts-to: export cache mount c-{token}: the root filesystem of the build step "
        "that uses the cache mount has no sh (the copy runs sh, cp and du there)"
    )
    assert error(build("--cache-mounts-to", f"{ref},ids=nope")) == (
        f"llbgen: error: --cache-mounts-to: the build uses no cache mount 'nope' (its cache mounts: c-{token})"
    )


TWO = """
import llbgen

def build(ctx):
    step = ctx.base_image("debian:trixie").run(
        ["sh", "-c", "echo a >/a/file; echo b >/b/file # {token}"],
        mounts=[llbgen.cache("/a", "a-{token}"), llbgen.cache("/b", "b-{token}", sharing="private")],
    )
    return step.root
"""


@pytest.mark.buildkit
def test_one_layer_per_cache_mount_id(tmp_path: Path, stack: dict[str, str]) -> None:
    token = uuid.uuid4().hex[:12]
    images = _image(tmp_path, "two", TWO.format(token=token))
    ref = f"{stack['LLBGEN_REGISTRY']}/llbgen-test-{token}/two"
    for spec in (f"{ref}:all", f"{ref}:b,ids=b-*"):
        run = _llbgen(_stack_env(stack), images, "build", "two", "--cache-mounts-to", spec)
        assert run.returncode == 0, run.stderr[-3000:]
    files = [[sorted(m.name for m in tar.getmembers() if m.isfile()) for tar in _layer_tars(f"{ref}:{tag}")] for tag in ("all", "b")]
    assert files == [[[f"a-{token}/file"], [f"b-{token}/file"]], [[f"b-{token}/file"]]]

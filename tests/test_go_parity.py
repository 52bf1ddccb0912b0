"""Differential tests: generated graphs marshalled by llbgen and by BuildKit's Go client v0.32.2.

tests/go-oracle is a Go program that builds each recipe of tests/graphs.py with ``client/llb``'s
own API and prints the marshalled ``pb.Definition``; llbgen must give the same op bytes and the
same metadata for every recipe (or both must refuse it). CI runs a bounded, derandomised number of
examples; ``LLBGEN_PARITY_EXAMPLES=100000`` runs a long random campaign (see README). A divergence
is fixed in llbgen, never in the oracle. Needs Go (installed by the project's scripts), not
BuildKit.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from google.protobuf import text_format
from hypothesis import HealthCheck, given, settings

import llbgen
from llbgen.pb import ops_pb2
from tests.graphs import DEB, action, marshal, mount, recipes, step

ROOT = Path(__file__).resolve().parent.parent
ORACLE = ROOT / "tests" / "go-oracle"
EXAMPLES = int(os.environ.get("LLBGEN_PARITY_EXAMPLES", "300"))


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        pytest.fail(
            "Go is required for the parity tests (scripts/install-buildkit installs it); "
            "put `go` on PATH and run again"
        )
    return go


class Oracle:
    """One running go-oracle process: a recipe line in, a definition line out."""

    def __init__(self, binary: Path) -> None:
        self._proc = subprocess.Popen(
            [str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def definition(self, recipe: list[dict[str, Any]]) -> ops_pb2.Definition | str:
        """Go's definition, or the Go client's error message."""
        stdin, stdout = self._pipes()
        stdin.write(json.dumps(recipe) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"go-oracle exited ({self._proc.wait()}) on {json.dumps(recipe)}")
        if line.startswith("error: "):
            return str(json.loads(line[len("error: ") :]))
        return ops_pb2.Definition.FromString(base64.b64decode(line))

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        return self._proc.stdin, self._proc.stdout

    def close(self) -> None:
        self._pipes()[0].close()
        self._proc.wait(timeout=30)


@pytest.fixture(scope="session")
def oracle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oracle]:
    """go-oracle, built once per version of its sources (cached in pytest's cache directory, or
    for this session only when pytest runs without its cache: ``-p no:cacheprovider``)."""
    go = _go()
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((ORACLE / name).read_bytes())
    cache = getattr(request.config, "cache", None)
    directory = Path(cache.mkdir("go-oracle")) if cache is not None else tmp_path_factory.mktemp("go-oracle")
    binary = directory / f"go-oracle-{digest.hexdigest()[:16]}"
    if not binary.exists():
        built = subprocess.run(
            [go, "build", "-o", str(binary) + ".tmp", "."],
            cwd=ORACLE, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if built.returncode != 0:
            pytest.fail(f"building tests/go-oracle failed:\n{built.stderr}")
        os.replace(str(binary) + ".tmp", binary)
    running = Oracle(binary)
    yield running
    running.close()


def _describe(op: bytes) -> str:
    return text_format.MessageToString(ops_pb2.Op.FromString(op), as_utf8=True)


def _refused_step(recipe: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The shortest prefix of ``recipe`` that llbgen refuses, its last step's op made the result.

    llbgen checks each step where it is written; Go only what it marshals. The step llbgen refuses
    must be one Go refuses too when that step is the graph's result.
    """
    for end in range(1, len(recipe) + 1):
        try:
            marshal(recipe[:end])
        except llbgen.LLBGenError:
            last = dict(recipe[end - 1])
            if last["kind"] == "run":
                last.update(result="root", readonly_rootfs=False)
            return [*recipe[: end - 1], last]
    raise AssertionError("no prefix of the recipe is refused")


def assert_same_as_go(oracle: Oracle, recipe: list[dict[str, Any]]) -> None:
    """llbgen's definition of ``recipe`` is Go's, op for op and metadata for metadata."""
    expected = oracle.definition(recipe)
    try:
        ours = marshal(recipe).to_pb()
    except llbgen.LLBGenError as exc:
        if not isinstance(expected, str):
            refused = oracle.definition(_refused_step(recipe))
            assert isinstance(refused, str), f"llbgen refused a step the Go client marshals: {exc}"
        return
    assert not isinstance(expected, str), f"the Go client refused a graph llbgen marshals: {expected}"
    theirs = list(getattr(expected, "def"))
    mine = list(getattr(ours, "def"))
    for i, (a, b) in enumerate(zip(mine, theirs)):
        assert a == b, f"op {i} differs\nllbgen:\n{_describe(a)}\ngo:\n{_describe(b)}"
    assert len(mine) == len(theirs), f"llbgen has {len(mine)} ops, Go {len(theirs)}"
    assert dict(ours.metadata) == dict(expected.metadata)


@settings(
    max_examples=EXAMPLES,
    derandomize="LLBGEN_PARITY_EXAMPLES" not in os.environ,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(recipes)
def test_generated_graph_marshals_as_go_client(oracle: Oracle, recipe: list[dict[str, Any]]) -> None:
    assert_same_as_go(oracle, recipe)


def _python_chain(n: int) -> llbgen.State:
    spec = importlib.util.spec_from_file_location("marshal_bench", ROOT / "benchmarks" / "marshal.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    state: llbgen.State = module.chain(n)
    return state


def test_benchmark_chain_matches_go_client(tmp_path: Path) -> None:
    """benchmarks/go-marshal and benchmarks/marshal.py build the same chain: same bytes."""
    out = tmp_path / "go.pb"
    subprocess.run(
        [_go(), "run", ".", "-n", "301", "-runs", "1", "-o", str(out)],
        cwd=ROOT / "benchmarks" / "go-marshal",
        check=True,
        capture_output=True,
        timeout=900,
    )
    expected = ops_pb2.Definition.FromString(out.read_bytes())
    ours = llbgen.marshal(_python_chain(301), platform="linux/amd64")
    assert list(ours.ops) == list(getattr(expected, "def"))
    got = ours.to_pb()
    for digest, meta in expected.metadata.items():
        assert got.metadata[digest] == meta


# -- divergences the differential test found, each pinned by a fixed recipe and its Go value ------

REGRESSIONS: dict[str, list[dict[str, Any]]] = {
    # State.with_dir / run(dir=) joined relative paths without cleaning them.
    "relative_dir_is_cleaned": [
        step("dir", path="/src"), step("dir", path="build/"), step("run", cmd="make"),
        step("dir", path="../b/./c/.."), step("run", cmd="make", dir="x//"),
        step("file", actions=[action("mkdir", path="out/"), action("copy", src="a", dest="./")]),
    ],
    # image(resolve_mode="default") wrote the attribute Go leaves out (its zero value).
    "resolve_mode_default": [step("image", ref="debian", resolve_mode="default")],
    # Platforms were not normalised as containerd does.
    "platform_spellings": [
        step("image", ref="debian", platform=p)
        for p in ("linux/amd64/v1", "linux/arm/5", "linux/arm64/9", "linux/i686", "linux/armhf", "macos/arm64")
    ],
    # Local patterns were JSON-encoded with \\u escapes for non-ASCII and without Go's HTML escapes.
    "local_patterns_json": [step("local", local="context", include=["é", "<a&b>", "a\u2028b"])],
    # http(mode=) kept bits beyond the permissions.
    "http_mode_bits": [step("http", url="https://example.com/a", mode=0o4755)],
    # Owners: "root" is uid 0, signed and zero-padded numbers are ids, others names.
    "owner_strings": [
        step("file", actions=[action("mkdir", path=f"/{i}", owner=o) for i, o in enumerate(
            ["root", "root:root", "+5", "-1:007", "2147483648", "٣"])]),
    ],
    # Timestamps before 1970 with microseconds, and far from it.
    "created_timestamps": [
        step("file", actions=[action("mkfile", path="/a", created=-1_500_000),
                              action("mkfile", path="/b", created=2**52 + 1)]),
    ],
    # git(subdir=) was only stripped of slashes; Go cleans it.
    "git_subdir_cleaned": [step("git", url="github.com/a/b", ref="v1", subdir="/a/../b/./c/")],
    # copy(mode="u+x") wrote mode -1 where Go leaves 0.
    "copy_mode_string": [step("file", actions=[action("copy", src="/a", dest="/b", mode="u+x")])],
    # ExecState.mount() kept the run state's env and directory; Go's GetMount starts afresh.
    "mount_state_is_fresh": [
        step("env", key="A", value="1"), step("dir", path="/work"),
        step("run", cmd="make", mounts=[mount("bind", target="/out")], result="/out"),
        step("run", cmd="ls"),
        step("file", actions=[action("mkfile", path="rel")]),
    ],
    # run(platform=) gives its platform to the root and mount states, as Go's outputs carry it.
    "run_platform_carries_over": [
        step("run", cmd="make", platform="linux/arm64", mounts=[mount("bind", target="/out")]),
        step("run", cmd="make"),
        step("run", cmd="make", platform="linux/arm64", mounts=[mount("bind", target="/out")],
             result="/out"),
        step("run", cmd="make"),
        step("image", ref="debian", platform="linux/arm/v7"), step("platform", platform="linux/amd64"),
        step("run", cmd="true", readonly_rootfs=True), step("run", cmd="make"),
    ],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regression_marshals_as_go_client(oracle: Oracle, name: str) -> None:
    assert_same_as_go(oracle, REGRESSIONS[name])


def _ops(state: llbgen.State) -> list[ops_pb2.Op]:
    return [ops_pb2.Op.FromString(op) for op in llbgen.marshal(state, platform="linux/amd64").ops]


def _exec(state: llbgen.State) -> ops_pb2.ExecOp:
    return [op.exec for op in _ops(state) if op.WhichOneof("op") == "exec"][-1]


def test_relative_dir_is_joined_and_cleaned() -> None:
    src = llbgen.image(DEB).with_dir("/src")
    assert src.with_dir("build/").dir == "/src/build"
    assert src.with_dir("../b").dir == "/b"
    assert src.with_dir("").dir == "/src"
    assert src.with_dir("/kept/./as/written/").dir == "/kept/./as/written/"
    assert _exec(src.run("make", dir="build/.").root).meta.cwd == "/src/build"
    made = src.with_dir("a/..").file(llbgen.mkdir("out/")).file(llbgen.mkfile("../f"))
    paths = [op.file.actions[0] for op in _ops(made) if op.WhichOneof("op") == "file"]
    assert [paths[0].mkdir.path, paths[1].mkfile.path] == ["/src/out", "/f"]


def test_resolve_mode_default_is_not_written() -> None:
    assert dict(_ops(llbgen.image("debian", resolve_mode="default"))[0].source.attrs) == {}
    assert dict(_ops(llbgen.image("debian", resolve_mode="local"))[0].source.attrs) == {
        "image.resolvemode": "local"
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64/v1", "linux/amd64"), ("linux/arm/5", "linux/arm/v5"),
        ("linux/arm64/9", "linux/arm64/v9"), ("linux/i686", "linux/i686"),
        ("linux/armhf/v6", "linux/arm/v7"), ("macos/arm64", "darwin/arm64"),
        ("linux/i386/x", "linux/386"), ("Linux/AARCH64/V8", "linux/arm64"),
    ],
)  # fmt: skip
def test_platforms_are_normalised_as_containerd_does(text: str, expected: str) -> None:
    assert str(llbgen.Platform.parse(text)) == expected


def test_local_patterns_are_json_as_go_writes_it() -> None:
    attrs = _ops(llbgen.local("context", include=["é", "<a&b>", "a\u2028b"]))[0].source.attrs
    assert attrs["local.includepattern"] == '["é","\\u003ca\\u0026b\\u003e","a\\u2028b"]'


def test_http_mode_keeps_permission_bits() -> None:
    assert _ops(llbgen.http("https://example.com/a", mode=0o4755))[0].source.attrs["http.perm"] == "0755"


def test_owner_strings_parse_as_go_does() -> None:
    def chown(owner: str) -> ops_pb2.ChownOpt:
        return _ops(llbgen.scratch().file(llbgen.mkdir("/d", owner=owner)))[0].file.actions[0].mkdir.owner

    assert chown("root").user.WhichOneof("user") == "byID" and chown("root").user.byID == 0
    assert chown("+5:007").user.byID == 5 and chown("+5:007").group.byID == 7
    assert chown("-1").user.byID == 2**32 - 1
    assert chown("2147483648").user.byName.name == "2147483648"
    assert chown("٣").user.byName.name == "٣"


def test_created_timestamps_are_exact() -> None:
    from datetime import datetime, timedelta, timezone

    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    for us in (-1_500_000, 2**52 + 1):
        made = llbgen.scratch().file(llbgen.mkfile("/a", created=epoch + timedelta(microseconds=us)))
        assert _ops(made)[0].file.actions[0].mkfile.timestamp == us * 1000


def test_git_subdir_is_cleaned() -> None:
    source = _ops(llbgen.git("github.com/a/b", "v1", subdir="/a/../b/./c/"))[0].source
    assert source.identifier == "git://github.com/a/b#v1:b/c"


def test_copy_mode_string_leaves_mode_zero() -> None:
    made = llbgen.scratch().file(llbgen.copy(llbgen.scratch(), "/a", "/b", mode="u+x"))
    copy = _ops(made)[0].file.actions[0].copy
    assert (copy.mode, copy.modeStr) == (0, "u+x")


def test_mount_state_starts_afresh() -> None:
    es = llbgen.image(DEB).with_env("A", "1").with_dir("/work").run("make", mounts=[llbgen.bind("/out", llbgen.scratch())])
    out = es.mount("/out")
    assert (out.env, out.dir) == ((), "/")
    assert (es.root.env, es.root.dir) == ((("A", "1"),), "/work")


def test_run_platform_carries_to_its_outputs() -> None:
    base = llbgen.image(DEB)
    es = base.run("make", platform="linux/arm64", mounts=[llbgen.bind("/out", llbgen.scratch())])
    assert str(es.root.platform) == str(es.mount("/out").platform) == "linux/arm64"
    assert base.run("make").root.platform is None
    arm = llbgen.image(DEB, platform="linux/arm/v7").with_platform("linux/amd64")
    # A read-only root is the source's own output: it takes the source's platform back.
    assert str(arm.run("true", readonly_rootfs=True).root.platform) == "linux/arm/v7"

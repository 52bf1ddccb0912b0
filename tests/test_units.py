"""Pure logic: command splitting, image references, platforms, and the wire encoder."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import llbgen
from llbgen.llb import reference, shell, wire
from llbgen.llb.errors import DefinitionError
from llbgen.llb.platform import Platform
from llbgen.pb import ops_pb2


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("make -j2 all", ["make", "-j2", "all"]),
        ("sh -c 'echo 1 > /step'", ["sh", "-c", "echo 1 > /step"]),
        ('echo "a \\"quoted\\" word"', ["echo", 'a "quoted" word']),
        (r'echo "back\slash"', ["echo", "backslash"]),  # google/shlex: \ escapes any char in "..."
        ("echo a\\ b", ["echo", "a b"]),
        ("echo ''", ["echo", ""]),
        ("curl http://x/#frag # a comment", ["curl", "http://x/#frag"]),
        ("# only a comment\nls", ["ls"]),
        ("  spaced\t\ttabs\n", ["spaced", "tabs"]),
        ("a'b c'd", ["ab cd"]),
    ],
)
def test_shell_split_follows_go_shlex(command: str, argv: list[str]) -> None:
    assert shell.split(command) == argv


@pytest.mark.parametrize("command", ["echo 'open", 'echo "open', "echo trailing\\"])
def test_shell_split_rejects_unterminated_input(command: str) -> None:
    with pytest.raises(ValueError):
        shell.split(command)


@pytest.mark.parametrize("argv", [["make", None], ["sleep", 5], ["cat", b"file"]])
def test_run_takes_only_strings_in_its_argv(argv: list[object]) -> None:
    # str() of them would run "make None": the error names the argument instead
    with pytest.raises(DefinitionError, match=r"test_units.py:\d+: run: argument 1 of the command is .*, not a string"):
        llbgen.scratch().run(argv)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ref", "normalized"),
    [
        ("debian", "docker.io/library/debian:latest"),
        ("debian:trixie", "docker.io/library/debian:trixie"),
        ("cilium/image-tools", "docker.io/cilium/image-tools:latest"),
        ("index.docker.io/library/alpine:3", "docker.io/library/alpine:3"),
        ("127.0.0.1:5000/llbgen/debian:trixie", "127.0.0.1:5000/llbgen/debian:trixie"),
        ("localhost/x", "localhost/x:latest"),
        ("quay.io/cilium/cilium@sha256:" + "a" * 64, "quay.io/cilium/cilium@sha256:" + "a" * 64),
        ("debian:12@sha256:" + "b" * 64, "docker.io/library/debian:12@sha256:" + "b" * 64),
    ],
)
def test_image_references_normalize_like_docker(ref: str, normalized: str) -> None:
    assert reference.normalize(ref) == normalized


@pytest.mark.parametrize("ref", ["Debian", "debian:", "debian@sha256", "a//b", ""])
def test_bad_image_references_are_rejected(ref: str) -> None:
    with pytest.raises(ValueError):
        reference.normalize(ref)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("Linux/AArch64", Platform("linux", "arm64")),
        ("linux/arm64/v8", Platform("linux", "arm64")),
        ("linux/arm", Platform("linux", "arm", "v7")),
        ("linux/arm/v6", Platform("linux", "arm", "v6")),
    ],
)
def test_platforms_normalize_like_containerd(text: str, expected: Platform) -> None:
    assert Platform.parse(text) == expected


def test_platform_id_is_the_local_export_directory_name() -> None:
    assert Platform.parse("linux/arm/v7").id == "linux_arm_v7"


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_varints_decode_as_protobuf_int64(value: int) -> None:
    # Input.index is an int64: encode it with our writer and read it with protobuf.
    data = wire.str_field(1, "sha256:x") + wire.int_field(2, value)
    assert ops_pb2.Input.FromString(data).index == value


@given(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=5))
def test_string_maps_round_trip(entries: dict[str, str]) -> None:
    data = wire.str_field(1, "id") + wire.string_map_field(2, entries)
    assert dict(ops_pb2.SourceOp.FromString(data).attrs) == entries


def test_env_replacement_moves_the_key_last_like_go() -> None:
    state = llbgen.scratch().with_env("A", "1").with_env("B", "2").with_env("A", "3")
    assert state.env == (("B", "2"), ("A", "3"))


def test_relative_dir_joins_the_current_one() -> None:
    assert llbgen.scratch().with_dir("/src").with_dir("sub").dir == "/src/sub"


def test_states_are_immutable() -> None:
    base = llbgen.image("debian")
    derived = base.with_env("A", "1")
    assert base.env == () and derived.env == (("A", "1"),)
    with pytest.raises(AttributeError):
        base.dir = "/x"  # type: ignore[misc]


def test_merge_and_diff_of_scratch_short_circuit_like_go() -> None:
    a = llbgen.image("debian")
    assert llbgen.merge([llbgen.scratch(), a]) is a
    assert llbgen.merge([]).is_scratch
    assert llbgen.diff(llbgen.scratch(), a) is a


def test_scratch_marshals_to_an_empty_definition() -> None:
    assert llbgen.marshal(llbgen.scratch()).ops == ()


def test_step_names_progress_groups_and_ignore_cache_reach_metadata() -> None:
    group = llbgen.ProgressGroup("g1", "compile")
    state = llbgen.image("debian").run("make", name="compile it", ignore_cache=True, progress_group=group).root
    definition = llbgen.marshal(state, platform="linux/amd64").to_pb()
    meta = definition.metadata[llbgen.marshal(state, platform="linux/amd64").head]
    assert meta.description["llb.customname"] == "compile it"
    assert meta.ignore_cache and meta.progress_group.name == "compile"
    terminal = definition.metadata[llbgen.marshal(state, platform="linux/amd64").digests[-1]]
    assert {"meta.ignorecache", "meta.description"} <= set(terminal.caps)


def test_per_state_platform_lets_one_graph_build_and_target_different_platforms() -> None:
    build = llbgen.image("debian", platform="linux/amd64")
    target = llbgen.image("debian", platform="linux/arm64")
    cross = build.run("make ARCH=arm64").root
    final = target.file(llbgen.copy(cross, "/out/tool", "/usr/local/bin/tool"))
    ops = [ops_pb2.Op.FromString(op) for op in llbgen.marshal(final, platform="linux/arm64").ops]
    placed = sorted(
        (op.source.identifier or " ".join(op.exec.meta.args), op.platform.Architecture)
        for op in ops
        if op.HasField("platform")
    )
    image = "docker-image://docker.io/library/debian:latest"
    assert placed == [(image, "amd64"), (image, "arm64"), ("make ARCH=arm64", "amd64")]


def _imports(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports anywhere (function-level imports included),
    leaving out a module's own packages: their ``__init__`` re-exports it."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*here.split(".")[: len(here.split(".")) - node.level + 1], *filter(None, [base])])
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name and not name.startswith(m + ".")}
    return graph


def test_no_import_cycles_outside_the_graph_library() -> None:
    graph = _imports(Path(llbgen.__file__).parent)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            module = todo.pop()
            if module == goal:
                return True
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])
        return False

    assert "llbgen.cli" not in graph["llbgen.structure.cli"]
    cycles = {
        (module, dep)
        for module in graph
        for dep in graph[module]
        if reaches(dep, module) and not (module.startswith("llbgen.llb.") and dep.startswith("llbgen.llb."))
    }
    # The graph library's states and ops refer to each other at run time; nothing else may.
    assert cycles == set()

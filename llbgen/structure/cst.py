"""container-structure-test spec files (schema 2.0.0) as llbgen structure tests.

image-tools checks every image with ``test/spec.yaml`` files, run inside a Dockerfile build by its
``tester`` image (container-structure-test's host driver). llbgen reads the same files and compiles
them into the same checks as ``tests.py`` declares, so an existing spec works unchanged and runs on
every platform in the build graph, beside the Python checks.

Semantics follow container-structure-test: ``command`` and ``args`` are not run by a shell, and
``$VAR``/``${VAR}`` in them (and in file-existence paths) are expanded from the image's environment
with Go's ``os.Expand`` rules; ``globalEnvVars`` are expanded the same way and set for every
command; a command test's ``envVars`` are set as written; ``exitCode`` defaults to 0; regular
expressions are searched anywhere in the text with ``^``/``$`` at its ends only (Go's ``regexp``;
llbgen compiles them with Python's ``re``, which reads the common syntax the same way); a
``permissions`` string is compared with Go's ``os.FileMode`` format; ``uid``/``gid`` are checked
only when given. Command tests run on the pinned Debian base with the image's files on top, as
image-tools' test stage runs them (a scratch image has no ``which`` or ``ldd`` of its own); file
tests look at the image itself. ``metadataTest`` is checked against the image config the
definition declares. Beyond container-structure-test, which ignores what it does not know, an
unknown key or a value of the wrong type is an error at its line; ``licenseTests`` and
``containerRunOptions`` are refused with a line saying so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn, TypeVar

import yaml

from llbgen.llb.errors import DefinitionError
from llbgen.llb.location import Location
from llbgen.structure.spec import (
    Check,
    CommandTest,
    Expected,
    FileContentTest,
    FileExistenceTest,
    MetadataTest,
)

SCHEMA_VERSION = "2.0.0"
SPEC_FILE = "spec.yaml"

T = TypeVar("T")
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"

_TOP = {
    "schemaVersion", "globalEnvVars", "commandTests", "fileExistenceTests", "fileContentTests",
    "metadataTest", "licenseTests", "containerRunOptions",
}
_COMMAND = {
    "name", "setup", "teardown", "envVars", "exitCode", "command", "args",
    "expectedOutput", "excludedOutput", "expectedError", "excludedError",
}
_EXISTENCE = {"name", "path", "shouldExist", "permissions", "uid", "gid", "isExecutableBy"}
_CONTENT = {"name", "path", "expectedContents", "excludedContents"}
_METADATA = {
    "envVars", "unboundEnvVars", "exposedPorts", "unexposedPorts", "entrypoint", "cmd", "workdir",
    "volumes", "unmountedVolumes", "labels", "user",
}
_UNSUPPORTED = {
    "licenseTests": "licenseTests are not supported by llbgen: check the copyright files with "
    "fileExistenceTests instead",
    "containerRunOptions": "containerRunOptions are not supported by llbgen: set the environment "
    "with globalEnvVars or envVars",
}


def spec_files(directory: Path, architecture: str) -> list[Path]:
    """``test/spec.yaml`` and ``test/<architecture>/spec.yaml`` of an image directory, if present."""
    candidates = [directory / "test" / SPEC_FILE, directory / "test" / architecture / SPEC_FILE]
    return [path for path in candidates if path.is_file()]


def has_spec_files(directory: Path) -> bool:
    """True when the image has a spec file for any architecture."""
    return (directory / "test" / SPEC_FILE).is_file() or any((directory / "test").glob(f"*/{SPEC_FILE}"))


def go_expand(text: str, lookup: Callable[[str], str]) -> str:
    """``$NAME`` and ``${NAME}`` replaced as Go's ``os.Expand`` does (an unknown name is empty)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != "$" or i + 1 == len(text):
            out.append(text[i])
            i += 1
            continue
        name, width = _shell_name(text[i + 1 :])
        if name:
            out.append(lookup(name))
        elif width == 0:
            out.append("$")  # not followed by a name: kept
        i += 1 + width  # bad syntax such as "${}" is dropped, as Go drops it
    return "".join(out)


def _shell_name(rest: str) -> tuple[str, int]:
    special = "*#$@!?-0123456789"
    if rest[0] == "{":
        if len(rest) > 2 and rest[1] in special and rest[2] == "}":
            return rest[1], 3
        end = rest.find("}", 1)
        if end == 1:
            return "", 2
        return ("", 1) if end < 0 else (rest[1:end], end + 1)
    if rest[0] in special:
        return rest[0], 1
    match = re.match(r"[A-Za-z0-9_]*", rest)
    assert match is not None
    return match.group(), match.end()


class _Reader:
    """Typed access to the YAML nodes of one file; every mistake is reported at its line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, node: yaml.Node, message: str) -> NoReturn:
        raise DefinitionError(message, Location(str(self.path), node.start_mark.line + 1))

    def fields(self, node: yaml.Node, what: str, known: set[str]) -> dict[str, yaml.Node]:
        """The keys of a mapping, each known; a key whose value is empty (null) is left out."""
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, f"{what} must be a mapping")
        found: dict[str, yaml.Node] = {}
        for key_node, value in node.value:
            key = self.text(key_node, f"a key of {what}")
            if key in _UNSUPPORTED and known is _TOP:
                self.fail(key_node, _UNSUPPORTED[key])
            if key not in known:
                self.fail(key_node, f"unknown key {key!r} in {what}; known keys: {', '.join(sorted(known))}")
            if key in found:
                self.fail(key_node, f"{key!r} is given twice in {what}")
            if value.tag != _NULL:
                found[key] = value
        return found

    def titled(self, node: yaml.Node, kind: str) -> str:
        """``command test 'name'`` for messages, or ``a command test`` while it has no name."""
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == "name" and isinstance(value, yaml.ScalarNode) and value.value:
                    return f"{kind} {value.value!r}"
        return f"a {kind}"

    def required(self, fields: Mapping[str, yaml.Node], key: str, node: yaml.Node, what: str) -> str:
        if key not in fields:
            self.fail(node, f"{what} needs a non-empty {key!r}")
        value = self.text(fields[key], f"{key} of {what}")
        if not value:
            self.fail(fields[key], f"{what} needs a non-empty {key!r}")
        return value

    def text(self, node: yaml.Node, what: str) -> str:
        # As Go's YAML decoder does for a string field, any scalar is taken as written.
        if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL:
            self.fail(node, f"{what} must be a string")
        return str(node.value)

    def integer(self, node: yaml.Node, what: str) -> int:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _INT:
            self.fail(node, f"{what} must be an integer, not {getattr(node, 'value', '...')!r}")
        return int(node.value, 0)

    def boolean(self, node: yaml.Node, what: str) -> bool:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _BOOL:
            self.fail(node, f"{what} must be true or false, not {getattr(node, 'value', '...')!r}")
        return node.value.lower() in ("true", "yes", "on", "y")

    def items(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, f"{what} must be a list")
        return list(node.value)

    def texts(self, node: yaml.Node, what: str) -> list[str]:
        return [self.text(item, f"an item of {what}") for item in self.items(node, what)]

    def commands(self, node: yaml.Node, what: str) -> list[list[str]]:
        commands = []
        for item in self.items(node, what):
            argv = self.texts(item, f"a command of {what}")
            if not argv:
                self.fail(item, f"{what} has an empty command")
            commands.append(argv)
        return commands

    def pairs(self, node: yaml.Node, what: str, *, need_value: bool) -> list[Expected]:
        """``[{key: K, value: V, isRegex: B}, ...]``"""
        out = []
        for item in self.items(node, what):
            fields = self.fields(item, f"an item of {what}", {"key", "value", "isRegex"})
            key = self.required(fields, "key", item, f"an item of {what}")
            if need_value:
                value = self.required(fields, "value", item, f"an item of {what}")
            else:
                value = self.text(fields["value"], f"value of {what}") if "value" in fields else ""
            regex = self.boolean(fields["isRegex"], "isRegex") if "isRegex" in fields else False
            out.append(Expected(key, value, regex))
        return out

    def made(self, node: yaml.Node, make: Callable[[], T]) -> T:
        """A check made from a node; a value the check refuses is reported at the node's line."""
        try:
            return make()
        except DefinitionError as exc:
            self.fail(node, exc.message)


def load_spec(path: Path, image_env: Mapping[str, str], *, metadata_name: str = "metadata") -> list[Check]:
    """The checks of one spec file, for an image whose config declares ``image_env``.

    A spec's metadata test has no name of its own: it is called ``metadata_name``.
    """
    try:
        root = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise DefinitionError(f"invalid YAML: {exc.problem or exc}", Location(str(path), line)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError(f"cannot read the spec file: {exc}", Location(str(path), 1)) from None
    if root is None:
        raise DefinitionError(f"empty spec file: it needs schemaVersion: {SCHEMA_VERSION!r}", Location(str(path), 1))
    read = _Reader(path)
    top = read.fields(root, "the spec", _TOP)
    version = read.required(top, "schemaVersion", root, "the spec")
    if version != SCHEMA_VERSION:
        read.fail(top["schemaVersion"], f"schemaVersion {version!r} is not supported: llbgen reads {SCHEMA_VERSION!r}")

    def lookup(name: str) -> str:
        return image_env.get(name, "")

    global_env = {
        item.key: go_expand(item.value, lookup)
        for item in read.pairs(top["globalEnvVars"], "globalEnvVars", need_value=True)
    } if "globalEnvVars" in top else {}
    env = {**image_env, **global_env}

    checks: list[Check] = []
    for node in read.items(top["commandTests"], "commandTests") if "commandTests" in top else []:
        checks.append(_command(read, node, global_env, lambda n: env.get(n, "")))
    for node in read.items(top["fileExistenceTests"], "fileExistenceTests") if "fileExistenceTests" in top else []:
        checks.append(_existence(read, node, lambda n: env.get(n, "")))
    for node in read.items(top["fileContentTests"], "fileContentTests") if "fileContentTests" in top else []:
        checks.append(_content(read, node))
    if "metadataTest" in top:
        checks.append(_metadata(read, top["metadataTest"], metadata_name))
    return checks


def _regexes(read: _Reader, fields: Mapping[str, yaml.Node], key: str) -> list[str]:
    return read.texts(fields[key], key) if key in fields else []


def _command(
    read: _Reader, node: yaml.Node, global_env: Mapping[str, str], lookup: Callable[[str], str]
) -> CommandTest:
    what = read.titled(node, "command test")
    fields = read.fields(node, what, _COMMAND)
    name = read.required(fields, "name", node, what)
    command = read.required(fields, "command", node, what)
    args = read.texts(fields["args"], "args") if "args" in fields else []
    own_env = read.pairs(fields["envVars"], "envVars", need_value=True) if "envVars" in fields else []
    exit_code = read.integer(fields["exitCode"], "exitCode") if "exitCode" in fields else 0
    setup = read.commands(fields["setup"], "setup") if "setup" in fields else []
    teardown = read.commands(fields["teardown"], "teardown") if "teardown" in fields else []
    return read.made(
        node,
        lambda: CommandTest(
            name,
            [go_expand(arg, lookup) for arg in [command, *args]],
            env={**global_env, **{item.key: item.value for item in own_env}},
            setup=setup,
            teardown=teardown,
            exit_code=exit_code,
            expected_output=_regexes(read, fields, "expectedOutput"),
            excluded_output=_regexes(read, fields, "excludedOutput"),
            expected_error=_regexes(read, fields, "expectedError"),
            excluded_error=_regexes(read, fields, "excludedError"),
            multiline=False,
            on_base=True,
        ),
    )


def _existence(read: _Reader, node: yaml.Node, lookup: Callable[[str], str]) -> FileExistenceTest:
    what = read.titled(node, "file existence test")
    fields = read.fields(node, what, _EXISTENCE)
    name = read.required(fields, "name", node, what)
    path = go_expand(read.required(fields, "path", node, what), lookup)
    should_exist = read.boolean(fields["shouldExist"], "shouldExist") if "shouldExist" in fields else True
    permissions = read.text(fields["permissions"], "permissions") if "permissions" in fields else None
    executable_by = read.text(fields["isExecutableBy"], "isExecutableBy") if "isExecutableBy" in fields else None
    ids = {key: read.integer(fields[key], key) for key in ("uid", "gid") if key in fields}
    return read.made(
        node,
        lambda: FileExistenceTest(
            name,
            path,
            should_exist=should_exist,
            go_permissions=permissions or None,
            executable_by=executable_by or None,
            uid=ids.get("uid"),
            gid=ids.get("gid"),
        ),
    )


def _content(read: _Reader, node: yaml.Node) -> FileContentTest:
    what = read.titled(node, "file content test")
    fields = read.fields(node, what, _CONTENT)
    name = read.required(fields, "name", node, what)
    path = read.required(fields, "path", node, what)
    return read.made(
        node,
        lambda: FileContentTest(
            name,
            path,
            expected_contents=_regexes(read, fields, "expectedContents"),
            excluded_contents=_regexes(read, fields, "excludedContents"),
            multiline=False,
        ),
    )


def _metadata(read: _Reader, node: yaml.Node, name: str) -> MetadataTest:
    fields = read.fields(node, "metadataTest", _METADATA)
    lists = {key: read.texts(fields[key], key) for key in _METADATA - {"workdir", "user"} if key in fields
             and key not in ("envVars", "unboundEnvVars", "labels")}
    pairs = {key: read.pairs(fields[key], key, need_value=False)
             for key in ("envVars", "unboundEnvVars", "labels") if key in fields}
    texts = {key: read.text(fields[key], key) for key in ("workdir", "user") if key in fields}
    return read.made(
        node,
        lambda: MetadataTest(
            name,
            env=pairs.get("envVars", ()),
            unbound_env=[item.key for item in pairs.get("unboundEnvVars", ())],
            labels=pairs.get("labels", ()),
            entrypoint=lists.get("entrypoint"),
            cmd=lists.get("cmd"),
            workdir=texts.get("workdir"),
            user=texts.get("user"),
            exposed_ports=lists.get("exposedPorts", ()),
            unexposed_ports=lists.get("unexposedPorts", ()),
            volumes=lists.get("volumes", ()),
            unmounted_volumes=lists.get("unmountedVolumes", ()),
        ),
    )

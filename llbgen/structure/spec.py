"""The declarative structure-test spec: command, file existence and file content tests.

The values are immutable and validated when they are created, so a mistake (a bad regular
expression, a relative path) is reported at the line of ``tests.py`` that made it.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Union

import attrs

from llbgen.llb import shell
from llbgen.llb.errors import invalid

if TYPE_CHECKING:
    from llbgen.llb.state import State

#: Where the test harness mounts what it needs inside a check's container.
HARNESS_DIR = "/.llbgen-test"

_LS_MODE = re.compile(r"[-dlbcps][-r][-w][-xsS][-r][-w][-xsS][-r][-w][-xtT]")
_OCTAL_MODE = re.compile(r"0?[0-7]{3,4}|0o[0-7]{1,4}")


def _name(value: str) -> str:
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise invalid(f"a test needs a one-line, non-empty name, not {value!r}")
    return value


def _path(value: str) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise invalid(f"test path {value!r} must be absolute, e.g. /usr/local/bin/tool")
    return value


def _regexes(value: str | Iterable[str]) -> tuple[str, ...]:
    """One regular expression or several; each is compiled now, so a typo fails at its line."""
    items = (value,) if isinstance(value, str) else tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise invalid(f"expected a regular expression (str), not {item!r}")
        try:
            re.compile(item, re.MULTILINE)
        except re.error as exc:
            raise invalid(f"invalid regular expression {item!r}: {exc}") from None
    return items


def _argv(value: str | Iterable[str]) -> tuple[str, ...]:
    """A command: an argv list, or a string split as ``State.run`` splits it (no shell)."""
    if isinstance(value, str):
        try:
            args = tuple(shell.split(value))
        except ValueError as exc:
            raise invalid(f"{exc}: {value!r}") from None
    else:
        args = tuple(value)
        if not all(isinstance(a, str) for a in args):
            raise invalid(f"a command is a list of strings, not {value!r}")
    if not args:
        raise invalid("a test command must not be empty")
    return args


def _setup(value: Iterable[str | Iterable[str]]) -> tuple[tuple[str, ...], ...]:
    if isinstance(value, str):
        raise invalid(f"setup is a list of commands, e.g. [['mkdir', '/work']], not {value!r}")
    return tuple(_argv(step) for step in value)


def _env(value: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    pairs = tuple((str(k), str(v)) for k, v in dict(value).items())
    for key, _ in pairs:
        if not key or "=" in key:
            raise invalid(f"environment variable name {key!r} must be non-empty and without '='")
    return pairs


def _files(value: Mapping[str, str | bytes]) -> tuple[tuple[str, bytes], ...]:
    out = []
    for path, data in dict(value).items():
        _path(path)
        if posixpath.normpath(path) == "/" or path.endswith("/"):
            raise invalid(f"files: {path!r} must name a file, not a directory")
        out.append((path, data.encode() if isinstance(data, str) else bytes(data)))
    return tuple(out)


def _permissions(value: str | int | None) -> str | int | None:
    """``-rwxr-xr-x`` (compared with ``ls -l``'s string, file type included) or an octal mode."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise invalid(f"permissions must be like '-rwxr-xr-x', '0755' or 0o755, not {value!r}")
    if isinstance(value, int):
        if not 0 <= value <= 0o7777:
            raise invalid(f"permissions {value:#o} is not a mode between 0o0 and 0o7777")
        return value
    if _LS_MODE.fullmatch(value):
        return value
    if _OCTAL_MODE.fullmatch(value):
        return int(value.removeprefix("0o"), 8)
    raise invalid(f"permissions {value!r} must be like '-rwxr-xr-x' or an octal mode such as '0755'")


#: Go's ``os.FileMode.String()``: type letters (none: ``-``), then ``rwxrwxrwx``.
_GO_MODE = re.compile(r"(-|[dalTLDpSugct?]+)[-r][-w][-x][-r][-w][-x][-r][-w][-x]")
EXECUTABLE_BY = {"owner": 0o100, "group": 0o010, "other": 0o001, "any": 0o111}


def _go_permissions(value: str | None) -> str | None:
    if value is not None and (not isinstance(value, str) or not _GO_MODE.fullmatch(value)):
        raise invalid(f"permissions {value!r} must be written as Go prints a mode, e.g. '-rwxr-xr-x'")
    return value


def _executable_by(value: str | None) -> str | None:
    if value is not None and value not in EXECUTABLE_BY:
        raise invalid(f"executable_by {value!r} is not one of {', '.join(EXECUTABLE_BY)}")
    return value


def _optional_id(value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise invalid(f"uid and gid must be non-negative integers, not {value!r}")
    return value


def _timeout(value: float | None) -> float | None:
    if value is not None and (isinstance(value, bool) or not value > 0):
        raise invalid(f"timeout must be a positive number of seconds, not {value!r}")
    return value


def _image_mount(value: str | None) -> str | None:
    if value is None:
        return None
    _path(value)
    clean = posixpath.normpath(value)
    if clean == "/" or clean == HARNESS_DIR or clean.startswith(HARNESS_DIR + "/"):
        raise invalid(f"image_mount {value!r}: choose a directory such as /image")
    return value


@attrs.frozen
class CommandTest:
    """Runs ``command`` and checks its exit code, standard output and standard error.

    By default the command runs in the image under test, as a container of the image would run it
    (its environment, working directory and user; the entrypoint is not used), even in a
    ``scratch`` image without a shell. With ``image_mount="/image"`` it runs instead in a helper
    (the Debian base, or ``helper``) with the image mounted read-only at ``/image``, for tools the
    image does not have (``ldd /image/usr/local/bin/tool``).

    Regular expressions are Python's, searched anywhere in the text, with ``^`` and ``$``
    matching at every line (``re.MULTILINE``). ``exit_code=None`` accepts any exit code.
    ``setup`` commands run first, in the same container, and must exit 0; ``files`` are written
    before them (parent directories are created). ``teardown`` commands run after the command;
    their exit codes are ignored, as container-structure-test ignores them.

    ``multiline=False`` gives Go's regular-expression semantics (container-structure-test's):
    ``^`` and ``$`` match only at the ends of the text. ``on_base=True`` runs the command with the
    pinned Debian base underneath the image's files, the way image-tools' tester runs a spec in a
    test stage that copies the image onto a distribution (so ``which`` and ``ldd`` exist there).
    """

    name: str = attrs.field(converter=_name)
    command: tuple[str, ...] = attrs.field(converter=_argv)
    expected_output: tuple[str, ...] = attrs.field(default=(), converter=_regexes, kw_only=True)
    excluded_output: tuple[str, ...] = attrs.field(default=(), converter=_regexes, kw_only=True)
    expected_error: tuple[str, ...] = attrs.field(default=(), converter=_regexes, kw_only=True)
    excluded_error: tuple[str, ...] = attrs.field(default=(), converter=_regexes, kw_only=True)
    exit_code: int | None = attrs.field(default=0, kw_only=True)
    env: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_env, kw_only=True)
    setup: tuple[tuple[str, ...], ...] = attrs.field(default=(), converter=_setup, kw_only=True)
    teardown: tuple[tuple[str, ...], ...] = attrs.field(default=(), converter=_setup, kw_only=True)
    files: tuple[tuple[str, bytes], ...] = attrs.field(default=(), converter=_files, kw_only=True)
    user: str | None = attrs.field(default=None, kw_only=True)
    dir: str | None = attrs.field(default=None, kw_only=True)
    timeout: float | None = attrs.field(default=None, converter=_timeout, kw_only=True)
    image_mount: str | None = attrs.field(default=None, converter=_image_mount, kw_only=True)
    helper: State | None = attrs.field(default=None, kw_only=True, eq=False)
    multiline: bool = attrs.field(default=True, kw_only=True)
    on_base: bool = attrs.field(default=False, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.on_base and self.image_mount is not None:
            raise invalid("on_base= and image_mount= are two ways to run outside the image: give one")
        if self.exit_code is not None and (
            isinstance(self.exit_code, bool) or not isinstance(self.exit_code, int)
            or not 0 <= self.exit_code <= 255
        ):
            raise invalid(f"exit_code must be between 0 and 255 or None (any), not {self.exit_code!r}")
        if self.helper is not None and self.image_mount is None:
            raise invalid("helper= runs the command outside the image: give image_mount= too")
        if self.dir is not None:
            _path(self.dir)

    @property
    def kind(self) -> str:
        return "command"


@attrs.frozen
class FileExistenceTest:
    """Checks that ``path`` exists (or not), and optionally its permissions and owner.

    ``permissions`` is either ``ls -l``'s string (``-rwxr-xr-x``; the first letter is the file
    type: ``-`` file, ``d`` directory, ``l`` symlink) or an octal mode (``0o755`` or ``"0755"``,
    compared with the permission bits only). The path is looked up in the image as its root, and
    a final symlink is not followed unless ``follow_symlinks``.

    ``go_permissions`` is the mode as Go's ``os.FileMode`` prints it, container-structure-test's
    format: the same as ``ls -l`` for plain files and directories, but ``Lrwxrwxrwx`` for a
    symlink, ``urwxr-xr-x`` for a setuid file, ``dtrwxrwxrwx`` for a sticky directory.
    ``executable_by`` is ``owner``, ``group``, ``other`` or ``any`` (its execute bit is set).
    """

    name: str = attrs.field(converter=_name)
    path: str = attrs.field(converter=_path)
    should_exist: bool = attrs.field(default=True, kw_only=True)
    permissions: str | int | None = attrs.field(default=None, converter=_permissions, kw_only=True)
    uid: int | None = attrs.field(default=None, converter=_optional_id, kw_only=True)
    gid: int | None = attrs.field(default=None, converter=_optional_id, kw_only=True)
    follow_symlinks: bool = attrs.field(default=False, kw_only=True)
    go_permissions: str | None = attrs.field(default=None, converter=_go_permissions, kw_only=True)
    executable_by: str | None = attrs.field(default=None, converter=_executable_by, kw_only=True)

    def __attrs_post_init__(self) -> None:
        expectations = (self.permissions, self.go_permissions, self.executable_by, self.uid, self.gid)
        if not self.should_exist and expectations != (None,) * 5:
            raise invalid(
                f"{self.path}: permissions, executable_by, uid and gid need should_exist=True"
            )

    @property
    def kind(self) -> str:
        return "file"


@attrs.frozen
class FileContentTest:
    """Checks the contents of the file at ``path`` (its first 8 MiB) against regular expressions."""

    name: str = attrs.field(converter=_name)
    path: str = attrs.field(converter=_path)
    expected_contents: tuple[str, ...] = attrs.field(default=(), converter=_regexes, kw_only=True)
    excluded_contents: tuple[str, ...] = attrs.field(default=(), converter=_regexes, kw_only=True)
    multiline: bool = attrs.field(default=True, kw_only=True)

    @property
    def kind(self) -> str:
        return "content"


@attrs.frozen
class Expected:
    """A key that must be in the image config (env or labels), with its value or a pattern."""

    key: str
    value: str
    is_regex: bool = False


def _expected(values: Iterable[Expected | tuple[str, str]]) -> tuple[Expected, ...]:
    items = tuple(v if isinstance(v, Expected) else Expected(*v) for v in values)
    for item in items:
        if not item.key:
            raise invalid("a metadata key must not be empty")
        if item.is_regex:
            _regexes(item.value)
    return items


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    items = tuple(values)
    if isinstance(values, str) or not all(isinstance(v, str) and v for v in items):
        raise invalid(f"expected a list of non-empty strings, not {values!r}")
    return items


def _optional_argv(value: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(str(v) for v in value)


@attrs.frozen
class MetadataTest:
    """Checks the image config the definition declares (no step runs: it is known before the build).

    ``env`` and ``labels`` take ``Expected(key, value, is_regex=False)`` values or ``(key, value)``
    pairs; a regex is searched in the value with Go's semantics. ``entrypoint`` and ``cmd`` are
    compared whole (``[]`` expects none), ``workdir`` and ``user`` when given. Ports and volumes
    are compared with what the config lists (llbgen's definitions declare none today).
    """

    name: str = attrs.field(converter=_name)
    env: tuple[Expected, ...] = attrs.field(default=(), converter=_expected, kw_only=True)
    unbound_env: tuple[str, ...] = attrs.field(default=(), converter=_strings, kw_only=True)
    labels: tuple[Expected, ...] = attrs.field(default=(), converter=_expected, kw_only=True)
    entrypoint: tuple[str, ...] | None = attrs.field(default=None, converter=_optional_argv, kw_only=True)
    cmd: tuple[str, ...] | None = attrs.field(default=None, converter=_optional_argv, kw_only=True)
    workdir: str | None = attrs.field(default=None, kw_only=True)
    user: str | None = attrs.field(default=None, kw_only=True)
    exposed_ports: tuple[str, ...] = attrs.field(default=(), converter=_strings, kw_only=True)
    unexposed_ports: tuple[str, ...] = attrs.field(default=(), converter=_strings, kw_only=True)
    volumes: tuple[str, ...] = attrs.field(default=(), converter=_strings, kw_only=True)
    unmounted_volumes: tuple[str, ...] = attrs.field(default=(), converter=_strings, kw_only=True)

    @property
    def kind(self) -> str:
        return "metadata"


Check = Union[CommandTest, FileExistenceTest, FileContentTest, MetadataTest]
CHECK_TYPES = (CommandTest, FileExistenceTest, FileContentTest, MetadataTest)

"""File actions (mkdir, mkfile, copy, rm, symlink), chained into one file op.

``mkdir(...).copy(...).rm(...)`` builds an immutable chain; ``State.file(chain)`` binds it to a state
and makes one FileOp whose actions run in order, each on the result of the previous one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Union

import attrs

from llbgen.llb import wire
from llbgen.llb.errors import invalid
from llbgen.llb.graph import (
    NO_OUTPUT,
    SCRATCH_INPUT,
    MarshalContext,
    Metadata,
    Output,
    StepOptions,
    Vertex,
    op_bytes,
)
from llbgen.llb.location import Location
from llbgen.llb.paths import clean, join

if TYPE_CHECKING:
    from llbgen.llb.state import State

#: ``owner=`` of an action: ``"user[:group]"`` by name or number, a uid, or a ``(user, group)`` pair.
Owner = Union[str, int, tuple[Union[str, int], Union[str, int]]]


def _in_dir(parent: str, path: str, keep_slash: bool) -> str:
    """A path of the destination state: relative paths are below its working directory."""
    out = clean(path)
    if not out.startswith("/"):
        out = join("/", parent, out)
    if keep_slash:
        if path.endswith("/") and not out.endswith("/"):
            out += "/"
        elif path.endswith("/."):
            out = (out if out == "/" else out + "/") + "."
    return out


def _timestamp(created: datetime | None) -> int:
    """Go's ``time.UnixNano()``, exactly (a float timestamp loses microseconds far from 1970)."""
    if created is None:
        return -1  # unset; 0 would mean the epoch
    if created.tzinfo is None:
        created = created.astimezone()  # a naive time is local time, as datetime.timestamp() says
    since = created - _EPOCH
    return (since.days * 86_400 + since.seconds) * 1_000_000_000 + since.microseconds * 1000


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_INT32 = re.compile(r"^[+-]?[0-9]+$")


def _uid(value: str | int) -> int | None:
    """The number a user or group names for Go's ``llb.WithUser``: "root", or a 32-bit integer."""
    if isinstance(value, int):
        return value
    if value == "root":
        return 0
    if _INT32.match(value) and -(2**31) <= int(value) < 2**31:
        return int(value)
    return None


def _user(value: str | int, base: int) -> bytes:
    """``pb.UserOpt``: a number is byID (oneof: written even if 0), a name refers to /etc/passwd of base."""
    uid = _uid(value)
    if uid is not None:
        return wire.oneof_int_field(2, uid & 0xFFFFFFFF)  # Go's uint32(uid)
    assert isinstance(value, str)
    return wire.message_field(1, wire.str_field(1, value) + wire.int_field(2, base))


def _owner(owner: Owner | None, base: int) -> bytes | None:
    if owner is None:
        return None
    if isinstance(owner, tuple):
        user, group = owner
        parts: list[str | int] = [user, group]
    elif isinstance(owner, int):
        parts = [owner]
    else:
        parts = list(owner.split(":", 1))
    chown = wire.message_field(1, _user(parts[0], base))
    if len(parts) == 2:
        chown += wire.message_field(2, _user(parts[1], base))
    return chown


def _check_owner(owner: Owner | None) -> None:
    ok = (
        owner is None
        or (isinstance(owner, int) and owner >= 0)
        or (isinstance(owner, str) and owner and all(owner.split(":", 1)))
        or (isinstance(owner, tuple) and len(owner) == 2)
    )
    if not ok:
        raise invalid(f"owner {owner!r} must be 'user[:group]', a uid, or a (user, group) pair")


@attrs.frozen
class _Mkdir:
    path: str
    mode: int
    parents: bool
    owner: Owner | None
    created: datetime | None


@attrs.frozen
class _Mkfile:
    path: str
    mode: int
    data: bytes
    owner: Owner | None
    created: datetime | None


@attrs.frozen
class _Rm:
    path: str
    allow_not_found: bool
    allow_wildcard: bool


@attrs.frozen
class _Symlink:
    target: str
    path: str
    owner: Owner | None
    created: datetime | None


@attrs.frozen
class _Copy:
    source: State
    src: str
    dest: str
    owner: Owner | None
    mode: int | str | None
    follow_symlinks: bool
    contents_only: bool
    unpack: bool
    create_dest_path: bool
    allow_wildcard: bool
    allow_empty_wildcard: bool
    created: datetime | None
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    always_replace_existing: bool
    required_paths: tuple[str, ...]


_Action = Union[_Mkdir, _Mkfile, _Rm, _Symlink, _Copy]


@attrs.frozen
class FileAction:
    """An immutable chain of file actions; each method returns a longer chain."""

    actions: tuple[_Action, ...]

    def mkdir(
        self,
        path: str,
        mode: int = 0o755,
        *,
        parents: bool = False,
        owner: Owner | None = None,
        created: datetime | None = None,
    ) -> FileAction:
        _check_owner(owner)
        return FileAction((*self.actions, _Mkdir(path, mode, parents, owner, created)))

    def mkfile(
        self,
        path: str,
        mode: int = 0o644,
        data: bytes | str = b"",
        *,
        owner: Owner | None = None,
        created: datetime | None = None,
    ) -> FileAction:
        _check_owner(owner)
        raw = data.encode() if isinstance(data, str) else bytes(data)
        return FileAction((*self.actions, _Mkfile(path, mode, raw, owner, created)))

    def rm(self, path: str, *, allow_not_found: bool = False, allow_wildcard: bool = False) -> FileAction:
        return FileAction((*self.actions, _Rm(path, allow_not_found, allow_wildcard)))

    def symlink(
        self, target: str, path: str, *, owner: Owner | None = None, created: datetime | None = None
    ) -> FileAction:
        """Creates ``path`` as a symlink pointing at ``target`` (``ln -s target path``)."""
        _check_owner(owner)
        return FileAction((*self.actions, _Symlink(target, path, owner, created)))

    def copy(
        self,
        source: State,
        src: str,
        dest: str,
        *,
        owner: Owner | None = None,
        mode: int | str | None = None,
        follow_symlinks: bool = False,
        contents_only: bool = False,
        unpack: bool = False,
        create_dest_path: bool = False,
        allow_wildcard: bool = False,
        allow_empty_wildcard: bool = False,
        created: datetime | None = None,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        always_replace_existing: bool = False,
        required_paths: Iterable[str] = (),
    ) -> FileAction:
        """Copies ``src`` of ``source`` to ``dest``; options are those of BuildKit's copy action.

        ``contents_only`` copies a directory's contents rather than the directory; ``mode`` is an
        octal int or a chmod string such as ``"u+x"`` (None keeps the source's mode).
        """
        from llbgen.llb.state import State

        if not isinstance(source, State):
            hint = " (use .root or .mount(path) of a run step)" if hasattr(source, "root") else ""
            raise invalid(f"copy needs a State to copy from, not {type(source).__name__}{hint}")
        _check_owner(owner)
        if isinstance(mode, int) and not 0 <= mode <= 0o7777:
            raise invalid(f"copy mode {mode:#o} is not a file mode (0 to 0o7777)")
        action = _Copy(
            source, src, dest, owner, mode, follow_symlinks, contents_only, unpack,
            create_dest_path, allow_wildcard, allow_empty_wildcard, created, tuple(include),
            tuple(exclude), always_replace_existing, tuple(required_paths),
        )  # fmt: skip
        return FileAction((*self.actions, action))


_EMPTY = FileAction(())
mkdir = _EMPTY.mkdir
mkfile = _EMPTY.mkfile
rm = _EMPTY.rm
symlink = _EMPTY.symlink
copy = _EMPTY.copy


@attrs.frozen(eq=False)
class FileOp(Vertex):
    base: Output | None  # the output of the state the chain was applied to; None for scratch
    dir: str  # that state's working directory, for relative paths
    actions: tuple[_Action, ...]
    options: StepOptions
    location: Location | None

    def inputs(self) -> Sequence[Output]:
        # Go visits the chain from its last action back: the base, then each copy's source.
        seen: dict[Output, None] = {}
        if self.base is not None:
            seen[self.base] = None
        for action in reversed(self.actions):
            if isinstance(action, _Copy) and action.source.output is not None:
                seen.setdefault(action.source.output)
        return list(seen)

    def encode(self, ctx: MarshalContext) -> tuple[bytes, Metadata]:
        # Only file.base: Go's FileOp.Marshal asks each action for its caps (copy patterns, mode
        # strings, symlinks...) before it has collected the actions, so v0.32.2 never sends them.
        # The daemon accepts ops without them, and matching Go keeps metadata identical.
        caps = {"file.base"}
        inputs: list[bytes] = []

        def add(output: Output) -> int:
            ref = ctx.input(output)
            if ref not in inputs:
                inputs.append(ref)
            return inputs.index(ref)

        base = SCRATCH_INPUT
        second_inputs = []
        for action in self.actions:
            if self.base is not None:
                base = add(self.base)
            second = SCRATCH_INPUT
            if isinstance(action, _Copy) and action.source.output is not None:
                second = add(action.source.output)
            second_inputs.append(second)

        bodies = []
        last = len(self.actions) - 1
        for i, action in enumerate(self.actions):
            first_input = base if i == 0 else len(inputs) + i - 1
            field, body = self._action_bytes(action, base)
            bodies.append(
                wire.int_field(1, first_input)
                + wire.int_field(2, second_inputs[i])
                + wire.int_field(3, 0 if i == last else NO_OUTPUT)
                + wire.message_field(field, body)
            )
        op = wire.repeated_message_field(2, bodies)
        return op_bytes(ctx, inputs, 4, op, None), Metadata.for_step(caps, self.options)

    def _action_bytes(self, action: _Action, base: int) -> tuple[int, bytes]:
        if isinstance(action, _Copy):
            # Go joins even an absolute source path with "/" (a no-op) and a relative one with
            # the source state's directory.
            src = clean(action.src)
            src = join("/" if src.startswith("/") else action.source.dir, src)
            # Go: -1 when no mode is given; a mode string leaves the number at 0.
            mode = -1 if action.mode is None else 0 if isinstance(action.mode, str) else action.mode
            return 4, (
                wire.str_field(1, src)
                + wire.str_field(2, _in_dir(self.dir, action.dest, keep_slash=True))
                + wire.message_field(3, _owner(action.owner, base))
                + wire.int_field(4, mode)
                + wire.bool_field(5, action.follow_symlinks)
                + wire.bool_field(6, action.contents_only)
                + wire.bool_field(7, action.unpack)
                + wire.bool_field(8, action.create_dest_path)
                + wire.bool_field(9, action.allow_wildcard)
                + wire.bool_field(10, action.allow_empty_wildcard)
                + wire.int_field(11, _timestamp(action.created))
                + wire.repeated_str_field(12, action.include)
                + wire.repeated_str_field(13, action.exclude)
                + wire.bool_field(14, action.always_replace_existing)
                + wire.str_field(15, action.mode if isinstance(action.mode, str) else "")
                + wire.repeated_str_field(16, action.required_paths)
            )
        if isinstance(action, _Mkfile):
            return 5, (
                wire.str_field(1, _in_dir(self.dir, action.path, keep_slash=False))
                + wire.int_field(2, action.mode & 0o777)
                + wire.bytes_field(3, action.data)
                + wire.message_field(4, _owner(action.owner, base))
                + wire.int_field(5, _timestamp(action.created))
            )
        if isinstance(action, _Mkdir):
            return 6, (
                wire.str_field(1, _in_dir(self.dir, action.path, keep_slash=False))
                + wire.int_field(2, action.mode & 0o777)
                + wire.bool_field(3, action.parents)
                + wire.message_field(4, _owner(action.owner, base))
                + wire.int_field(5, _timestamp(action.created))
            )
        if isinstance(action, _Rm):
            return 7, (
                wire.str_field(1, _in_dir(self.dir, action.path, keep_slash=False))
                + wire.bool_field(2, action.allow_not_found)
                + wire.bool_field(3, action.allow_wildcard)
            )
        return 8, (
            wire.str_field(1, action.target)
            + wire.str_field(2, action.path)
            + wire.message_field(3, _owner(action.owner, base))
            + wire.int_field(4, _timestamp(action.created))
        )

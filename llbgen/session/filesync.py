"""File transfer between llbgen and the BuildKit daemon: the session's ``moby.filesync.v1`` services.

Two services, both served by llbgen and called by the daemon:

- :class:`FileSync` (``FileSync.DiffCopy``) sends local directories (``local://NAME`` sources).
- :class:`FileSend` (``FileSend.DiffCopy``) receives exported results: a directory tree for the
  ``local`` exporter (:class:`DirectoryTarget`), a byte stream for ``tar``, ``oci`` and ``docker``
  (:class:`StreamTarget`).

The directory protocol is fsutil's diff-copy, spoken on the wire as ``fsutil.types.Packet``
messages even though the Go service declares ``BytesMessage``:

1. the sender sends one ``STAT`` per entry below the root, depth first, names sorted bytewise
   within each directory, then a ``STAT`` without a stat; an entry's ID is its position;
2. the receiver sends ``REQ{ID}`` for each regular file whose contents it wants; the sender answers
   with ``DATA{ID, chunk}`` packets and an empty ``DATA{ID}``, files in any order;
3. the receiver sends ``FIN`` once it has everything, and the sender answers ``FIN``.
   Either side may send ``ERR`` with a message instead.

``Stat.mode`` is a Go ``os.FileMode`` (type bits at the top, see :func:`go_file_mode`); uid and gid
are sent as 0, like BuildKit's Go client does. Extended attributes are sent and (best effort)
applied, except ``com.apple.*`` ones.

Tar, OCI and docker exports arrive on ``FileSend.DiffCopy`` as plain ``BytesMessage`` chunks until
the daemon half-closes. The daemon says which exporter a ``FileSend`` call is for with the
``buildkit-attachable-exporter-id`` header: the exporter's index in ``SolveRequest.Exporters``
(0 for the first or only one; 0 as well when the header is missing).
"""

from __future__ import annotations

import asyncio
import errno
import os
import queue
import shutil
import stat as stat_module
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import unquote_plus

import grpc

from llbgen.pb import filesync_pb2, fsutil_stat_pb2, fsutil_wire_pb2
from llbgen.session.core import HandlerRegistry
from llbgen.session.patterns import (
    BadPattern,
    MatchInfo,
    PatternMatcher,
    glob_match,
    go_clean,
    normalize_pattern,
    only_prefixes,
    pattern_without_trailing_glob,
)

__all__ = [
    "CHUNK_SIZE",
    "DirectoryTarget",
    "ExportTarget",
    "FileSend",
    "FileSync",
    "FileSyncError",
    "StreamTarget",
    "TransferStatus",
    "WalkEntry",
    "decode_metadata",
    "go_file_mode",
    "posix_mode",
    "resolve_follow_paths",
    "walk",
]

Packet = fsutil_wire_pb2.Packet
Stat = fsutil_stat_pb2.Stat

FILESYNC_SERVICE = "moby.filesync.v1.FileSync"
FILESEND_SERVICE = "moby.filesync.v1.FileSend"
FILESYNC_METHODS = [f"/{FILESYNC_SERVICE}/DiffCopy", f"/{FILESYNC_SERVICE}/TarStream"]
FILESEND_METHODS = [f"/{FILESEND_SERVICE}/DiffCopy"]

KEY_DIR_NAME = "dir-name"
KEY_INCLUDE_PATTERNS = "include-patterns"
KEY_EXCLUDE_PATTERNS = "exclude-patterns"
KEY_FOLLOW_PATHS = "followpaths"
KEY_EXPORTER_ID = "buildkit-attachable-exporter-id"
KEY_EXPORTER_META_PREFIX = "exporter-md-"
KEY_MULTI_PLATFORM_TRANSFER = "buildkit-exporter-multi-platform"

#: Size of the DATA chunks llbgen sends. fsutil sends 32 KiB; any size up to the daemon's 16 MiB
#: message limit is accepted, and with grpcio's per-message cost 256 KiB moves big files ~2x faster.
CHUNK_SIZE = 256 * 1024

# Go os.FileMode bits.
MODE_DIR = 1 << 31
MODE_SYMLINK = 1 << 27
MODE_DEVICE = 1 << 26
MODE_NAMED_PIPE = 1 << 25
MODE_SOCKET = 1 << 24
MODE_SETUID = 1 << 23
MODE_SETGID = 1 << 22
MODE_CHAR_DEVICE = 1 << 21
MODE_STICKY = 1 << 20
MODE_IRREGULAR = 1 << 19
MODE_TYPE = (
    MODE_DIR | MODE_SYMLINK | MODE_NAMED_PIPE | MODE_SOCKET | MODE_DEVICE | MODE_CHAR_DEVICE | MODE_IRREGULAR
)
MODE_PERM = 0o777


class FileSyncError(Exception):
    """A transfer cannot go on; the message says which file and why."""


# -- modes --------------------------------------------------------------------------------------


def go_file_mode(st_mode: int) -> int:
    """Converts a POSIX ``st_mode`` to Go's ``os.FileMode`` (what ``Stat.mode`` carries)."""
    mode = st_mode & MODE_PERM
    fmt = stat_module.S_IFMT(st_mode)
    if fmt == stat_module.S_IFDIR:
        mode |= MODE_DIR
    elif fmt == stat_module.S_IFLNK:
        mode |= MODE_SYMLINK
    elif fmt == stat_module.S_IFBLK:
        mode |= MODE_DEVICE
    elif fmt == stat_module.S_IFCHR:
        mode |= MODE_DEVICE | MODE_CHAR_DEVICE
    elif fmt == stat_module.S_IFIFO:
        mode |= MODE_NAMED_PIPE
    elif fmt == stat_module.S_IFSOCK:
        mode |= MODE_SOCKET
    if st_mode & stat_module.S_ISUID:
        mode |= MODE_SETUID
    if st_mode & stat_module.S_ISGID:
        mode |= MODE_SETGID
    if st_mode & stat_module.S_ISVTX:
        mode |= MODE_STICKY
    return mode


def posix_mode(go_mode: int) -> int:
    """The ``chmod`` bits of a Go ``os.FileMode``: permissions plus setuid, setgid and sticky."""
    mode = go_mode & MODE_PERM
    if go_mode & MODE_SETUID:
        mode |= stat_module.S_ISUID
    if go_mode & MODE_SETGID:
        mode |= stat_module.S_ISGID
    if go_mode & MODE_STICKY:
        mode |= stat_module.S_ISVTX
    return mode


def _can_request_data(go_mode: int) -> bool:
    # Must agree between sender and receiver: only entries without type bits carry contents.
    return go_mode & MODE_TYPE == 0


# -- request metadata ---------------------------------------------------------------------------


def _parse_bool(value: str) -> bool:
    return value in ("1", "t", "T", "true", "TRUE", "True")


def decode_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> dict[str, list[str]]:
    """Groups gRPC request metadata by (lowercase) key, URL-unquoting the values of a key ``K``
    when the header ``K-encoded`` is true, as BuildKit encodes non-ASCII values."""
    raw: dict[str, list[str]] = {}
    for key, value in metadata:
        if isinstance(value, bytes):
            continue  # binary headers carry nothing of ours
        raw.setdefault(key.lower(), []).append(value)
    decoded: dict[str, list[str]] = {}
    for key, values in raw.items():
        flag = raw.get(key + "-encoded")
        if flag and _parse_bool(flag[0]):
            values = [unquote_plus(v) for v in values]
        decoded[key] = values
    return decoded


# -- walking a directory ------------------------------------------------------------------------


class WalkEntry(NamedTuple):
    """One entry to send: its stat, and where to read its contents (``None`` when it has none to
    send, ``""`` for a socket, which is sent as an empty file as Go's client does)."""

    stat: fsutil_stat_pb2.Stat
    source: str | None


def _join(*parts: str) -> str:
    """Go's ``filepath.Join`` for slash paths: joins the non-empty parts and cleans."""
    kept = [p for p in parts if p]
    return go_clean("/".join(kept)) if kept else ""


def _dedupe_paths(paths: Sequence[str]) -> list[str] | None:
    """fsutil's dedupePaths: drops paths below the previous one; ``None`` if the root is listed."""
    out: list[str] = []
    last = ""
    for path in paths:
        if path == ".":
            return None
        if path.startswith(last + "/"):
            continue
        out.append(path)
        last = path
    return out


def _has_wildcards(name: str) -> bool:
    i = 0
    while i < len(name):
        if name[i] == "\\":
            i += 1
        elif name[i] in "*?[":
            return True
        i += 1
    return False


def resolve_follow_paths(root: str | os.PathLike[str], paths: Iterable[str]) -> list[str] | None:
    """Resolves ``followpaths`` into extra include paths, as fsutil does.

    Each path is walked component by component; a symlink on the way is replaced by its target
    and both the link and the target are kept. Targets are taken relative to ``root`` (an
    absolute target ``/x`` means ``ROOT/x``, ``..`` stops at the root), so nothing outside the
    root is ever reached. Returns sorted, de-duplicated relative paths, or ``None`` when the root
    itself is selected (no filtering).
    """
    base = os.fspath(root)
    resolved: set[str] = set()

    def lstat(rel: str) -> os.stat_result | None:
        if rel in (".", "/", ""):
            return None
        try:
            return os.lstat(os.path.join(base, rel))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read_symlink(rel: str, allow_wildcard: bool) -> list[str] | None:
        name = rel.rpartition("/")[2]
        if allow_wildcard and _has_wildcards(name):
            parent = rel.rpartition("/")[0] or "."
            try:
                names = sorted(os.listdir(os.path.join(base, parent)), key=os.fsencode)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                raise FileSyncError(f"followpaths: cannot read directory {parent}: {exc.strerror}") from None
            found: list[str] = []
            for child in names:
                try:
                    matched = glob_match(name, child)
                except BadPattern:
                    raise FileSyncError(f"followpaths: bad pattern {rel!r}") from None
                if matched:
                    found.extend(read_symlink(_join(parent, child), False) or [])
            return found or None
        st = lstat(rel)
        if st is None or not stat_module.S_ISLNK(st.st_mode):
            return None
        link = go_clean(os.readlink(os.path.join(base, rel)))
        if link.startswith("/"):
            return [link]
        parent = rel.rpartition("/")[0] or "."
        return [go_clean("/" + _join(parent, link))]

    def append(path: str, depth: int) -> None:
        if depth > 255:
            raise FileSyncError(f"followpaths: too many levels of symbolic links at {path}")
        rest = _join(".", path)
        current = "."
        while True:
            first, _, rest = rest.partition("/")
            current = _join(current, first)
            targets = read_symlink(current, True)
            if (rest == "" or targets is not None) and current in resolved:
                return
            if targets is not None:
                resolved.add(current)
                for target in targets:
                    append(_join(target, rest), depth + 1)
                return
            if rest == "":
                resolved.add(current)
                return

    for path in paths:
        append(path, 0)
    return _dedupe_paths(sorted(resolved, key=lambda p: p.encode("utf-8", "surrogateescape")))


class _PathFilter:
    """fsutil's include/exclude filter: which entries are sent, and which directories need not be
    walked at all."""

    def __init__(self, includes: Sequence[str] | None, excludes: Sequence[str]) -> None:
        try:
            self.include = PatternMatcher(includes) if includes else None
            self.exclude = PatternMatcher(excludes) if excludes else None
        except BadPattern as exc:
            raise FileSyncError(f"invalid include/exclude patterns: {exc}") from None
        self.include_prefixes_only = self.include is None or only_prefixes(
            self.include.patterns, exclusions=False
        )
        self.exclude_prefixes_only = self.exclude is None or only_prefixes(
            self.exclude.patterns, exclusions=True
        )

    @classmethod
    def create(
        cls, root: str, includes: Sequence[str], excludes: Sequence[str], follow_paths: Sequence[str]
    ) -> _PathFilter | None:
        include_list: list[str] | None = [normalize_pattern(p) for p in includes]
        exclude_list = [normalize_pattern(p) for p in excludes]
        if follow_paths:
            targets = resolve_follow_paths(root, follow_paths)
            if targets is not None:
                include_list = _dedupe_paths([*(include_list or []), *targets])
        if not include_list and not exclude_list:
            return None
        return cls(include_list, exclude_list)

    def _could_contain(self, matcher: PatternMatcher, rel: str, exclusions: bool) -> bool:
        prefix = rel + "/"
        return any(
            (pattern_without_trailing_glob(p) + "/").startswith(prefix)
            for p in matcher.patterns
            if p.exclusion == exclusions
        )


class _Visited:
    __slots__ = ("exclude_info", "include_info", "prefix", "rel", "sent", "stat")

    def __init__(self, rel: str, stat: os.stat_result) -> None:
        self.rel = rel
        self.prefix = rel + "/"
        self.stat = stat
        self.include_info: MatchInfo = None
        self.exclude_info: MatchInfo = None
        self.sent = False


def _major(dev: int) -> int:
    return (dev >> 8) & 0xFFF


def _minor(dev: int) -> int:
    return (dev & 0xFF) | ((dev >> 12) & 0xFFF00)


def _sort_key(name: str) -> bytes:
    return os.fsencode(name)


class _StatMaker:
    def __init__(self, root: str, xattrs: bool) -> None:
        self.root = root
        self.xattrs = xattrs
        self.inodes: dict[tuple[int, int], str] = {}

    def make(self, rel: str, st: os.stat_result) -> WalkEntry:
        path = os.path.join(self.root, rel)
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            raise FileSyncError(f"cannot send {rel!r}: the name is not valid UTF-8") from None
        mode = go_file_mode(st.st_mode) & ~MODE_SOCKET  # as fsutil: tar has no sockets
        out = Stat(path=rel, mode=mode, modTime=st.st_mtime_ns)
        source: str | None = None
        fmt = stat_module.S_IFMT(st.st_mode)
        if fmt != stat_module.S_IFDIR:
            out.size = st.st_size
            if st.st_rdev:
                out.devmajor = _major(st.st_rdev)
                out.devminor = _minor(st.st_rdev)
            if fmt == stat_module.S_IFLNK:
                try:
                    link = os.readlink(path)
                except OSError as exc:
                    raise FileSyncError(f"cannot read symlink {rel}: {exc.strerror}") from None
                try:
                    out.linkname = link
                except (UnicodeEncodeError, ValueError):
                    raise FileSyncError(f"cannot send symlink {rel}: its target is not valid UTF-8") from None
            else:
                first = None
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    first = self.inodes.get(key)
                    if first is None:
                        self.inodes[key] = rel
                    else:
                        out.linkname = first
                if fmt == stat_module.S_IFREG:
                    source = path
                elif fmt == stat_module.S_IFSOCK:
                    source = ""
        if self.xattrs:
            self._add_xattrs(rel, path, out)
        return WalkEntry(out, source)

    def _add_xattrs(self, rel: str, path: str, out: fsutil_stat_pb2.Stat) -> None:
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOENT):
                return
            raise FileSyncError(f"cannot list extended attributes of {rel}: {exc.strerror}") from None
        for name in names:
            if name.startswith("com.apple."):
                continue
            try:
                out.xattrs[name] = os.getxattr(path, name, follow_symlinks=False)
            except OSError:
                continue


def walk(
    root: str | os.PathLike[str],
    *,
    include_patterns: Sequence[str] = (),
    exclude_patterns: Sequence[str] = (),
    follow_paths: Sequence[str] = (),
    xattrs: bool = True,
) -> Iterator[WalkEntry]:
    """The entries of ``root`` that a ``FileSync`` transfer sends, in protocol order.

    Depth first, names sorted bytewise within each directory; ``root`` itself is not included.
    Symlinks are never followed. Filtering follows fsutil: an entry is sent when the include
    patterns (if any) select it and the exclude patterns do not; a directory that is not selected
    itself is still sent, just before the first entry below it that is. Raises
    :class:`FileSyncError` for an unreadable directory that is not filtered out.
    """
    base = os.path.realpath(os.fspath(root))
    if not os.path.isdir(base):
        raise FileSyncError(f"{os.fspath(root)} is not a directory")
    flt = _PathFilter.create(base, include_patterns, exclude_patterns, follow_paths)
    maker = _StatMaker(base, xattrs)
    parents: list[_Visited] = []

    def list_dir(rel: str, skipped: bool) -> list[str]:
        try:
            names = os.listdir(os.path.join(base, rel) if rel else base)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except PermissionError:
            if skipped:
                return []
            raise FileSyncError(f"cannot read directory {rel or '.'} in {base}: permission denied") from None
        except OSError as exc:
            raise FileSyncError(f"cannot read directory {rel or '.'} in {base}: {exc.strerror}") from None
        names.sort(key=_sort_key)
        return names

    # Each frame: (directory prefix, names, next index).
    stack: list[tuple[str, list[str], int]] = [("", list_dir("", False), 0)]
    while stack:
        prefix, names, index = stack[-1]
        if index >= len(names):
            stack.pop()
            continue
        stack[-1] = (prefix, names, index + 1)
        rel = prefix + names[index]
        try:
            st = os.lstat(os.path.join(base, rel))
        except (FileNotFoundError, NotADirectoryError):
            continue  # vanished since the directory was read
        except OSError as exc:
            raise FileSyncError(f"cannot stat {rel}: {exc.strerror}") from None
        is_dir = stat_module.S_ISDIR(st.st_mode)
        skip = False
        visited: _Visited | None = None
        if flt is not None:
            while parents and not rel.startswith(parents[-1].prefix):
                parents.pop()
            if is_dir:
                visited = _Visited(rel, st)
            if flt.include is not None:
                m, info = flt.include.matches_using_parent_results(
                    rel, parents[-1].include_info if parents else None
                )
                if visited is not None:
                    visited.include_info = info
                if not m:
                    if (
                        is_dir
                        and flt.include_prefixes_only
                        and not flt._could_contain(flt.include, rel, False)
                    ):
                        continue
                    skip = True
            if flt.exclude is not None:
                m, info = flt.exclude.matches_using_parent_results(
                    rel, parents[-1].exclude_info if parents else None
                )
                if visited is not None:
                    visited.exclude_info = info
                if m:
                    if (
                        is_dir
                        and flt.exclude_prefixes_only
                        and (not flt.exclude.exclusions or not flt._could_contain(flt.exclude, rel, True))
                    ):
                        continue
                    skip = True
            if visited is not None:
                parents.append(visited)
        if not skip:
            for parent in parents:
                if not parent.sent and parent is not visited:
                    parent.sent = True
                    yield maker.make(parent.rel, parent.stat)
            if visited is not None:
                visited.sent = True
            yield maker.make(rel, st)
        if is_dir:
            stack.append((rel + "/", list_dir(rel, skip), 0))


# -- transfer bookkeeping -----------------------------------------------------------------------


class TransferStatus:
    """What happened to the transfers of one directory or export target (thread-safe).

    ``streams`` counts transfers started, ``completed_streams`` those that ended cleanly; a
    multi-platform local export makes one transfer per platform into the same directory.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.streams = 0
        self.completed_streams = 0
        self.entries = 0  # STAT packets sent or received
        self.files = 0  # regular files whose contents were transferred (and hard links made)
        self.bytes = 0  # file contents, or stream bytes for tar/oci/docker
        self.errors: list[str] = []
        self.metadata: dict[str, str] = {}  # exporter-md-* headers (oci/docker exports)

    def __repr__(self) -> str:
        return (
            f"TransferStatus(streams={self.streams}, completed={self.completed_streams}, "
            f"entries={self.entries}, files={self.files}, bytes={self.bytes}, errors={self.errors!r})"
        )

    @property
    def completed(self) -> bool:
        """At least one transfer, all of them finished, none failed."""
        with self._lock:
            return self.streams > 0 and self.completed_streams == self.streams and not self.errors

    @property
    def active(self) -> int:
        with self._lock:
            return self.streams - self.completed_streams - len(self.errors)

    def _begin(self) -> None:
        with self._lock:
            self.streams += 1

    def _add(self, entries: int = 0, files: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self.entries += entries
            self.files += files
            self.bytes += nbytes

    def _complete(self) -> None:
        with self._lock:
            self.completed_streams += 1

    def _fail(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)


_END = object()


class _Outbox:
    """Messages waiting to be sent on a response stream, filled by another thread."""

    def __init__(self, maxsize: int = 0) -> None:
        self.queue: queue.Queue[object] = queue.Queue(maxsize)
        self.closed = threading.Event()

    def put(self, item: object) -> bool:
        while not self.closed.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def drain(self) -> Iterator[object]:
        while True:
            try:
                item = self.queue.get(timeout=0.2)
            except queue.Empty:
                if self.closed.is_set():
                    return
                continue
            if item is _END:
                return
            yield item


# -- FileSync: sending local directories --------------------------------------------------------


class FileSync:
    """Serves ``moby.filesync.v1.FileSync``: the daemon pulls local directories by name.

    ``dirs`` maps the names used in ``local://NAME`` sources to directories. The daemon passes
    the name and the source's include/exclude patterns and follow paths as request metadata; the
    patterns are applied here. ``status[name]`` tells what was sent.
    """

    def __init__(
        self,
        dirs: Mapping[str, str | os.PathLike[str]],
        *,
        chunk_size: int = CHUNK_SIZE,
        xattrs: bool = True,
    ) -> None:
        self._dirs = {name: Path(path) for name, path in dirs.items()}
        self._chunk_size = chunk_size
        self._xattrs = xattrs
        self.status: dict[str, TransferStatus] = {name: TransferStatus() for name in self._dirs}

    def register(self, server: HandlerRegistry) -> list[str]:
        handlers = {
            "DiffCopy": grpc.stream_stream_rpc_method_handler(
                self._diff_copy,
                request_deserializer=Packet.FromString,
                response_serializer=Packet.SerializeToString,
            ),
            "TarStream": grpc.stream_stream_rpc_method_handler(
                self._tar_stream,
                request_deserializer=Packet.FromString,
                response_serializer=Packet.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(FILESYNC_SERVICE, handlers),))
        return list(FILESYNC_METHODS)

    def _tar_stream(
        self, requests: Iterator[fsutil_wire_pb2.Packet], context: grpc.ServicerContext
    ) -> Iterator[fsutil_wire_pb2.Packet]:
        # BuildKit negotiates "diffcopy", the only protocol it implements; TarStream exists in the
        # service definition only.
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the tarstream file transfer protocol is not supported")

    async def _diff_copy(
        self, requests: AsyncIterator[fsutil_wire_pb2.Packet], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        md = decode_metadata(context.invocation_metadata() or ())
        names = md.get(KEY_DIR_NAME) or [""]
        name = names[0]
        root = self._dirs.get(name)
        if root is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no access allowed to dir {name!r}: llbgen was not given a local directory of that name",
            )
            return
        status = self.status[name]
        status._begin()
        try:
            entries = walk(
                root,
                include_patterns=md.get(KEY_INCLUDE_PATTERNS, []),
                exclude_patterns=md.get(KEY_EXCLUDE_PATTERNS, []),
                follow_paths=md.get(KEY_FOLLOW_PATHS, []),
                xattrs=self._xattrs,
            )
            first = next(entries, None)  # surfaces bad patterns and a missing root right away
        except FileSyncError as exc:
            status._fail(str(exc))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"local {name!r}: {exc}")
            return
        chained = entries if first is None else _prepend(first, entries)
        await _Sender(name, chained, status, self._chunk_size).run(requests, context)


def _prepend(first: WalkEntry, rest: Iterator[WalkEntry]) -> Iterator[WalkEntry]:
    yield first
    yield from rest


class _Sender:
    """One DiffCopy transfer from our side, on the session's event loop.

    A task takes the receiver's REQ/FIN/ERR packets; the transfer itself walks the tree and sends
    STATs, and serves each requested file as soon as it is asked for, in between. Everything is on
    one thread: a transfer is three messages per file, and a hand-off between threads for each
    would cost more than the message.
    """

    def __init__(
        self, name: str, entries: Iterator[WalkEntry], status: TransferStatus, chunk_size: int
    ) -> None:
        self._name = name
        self._entries = entries
        self._status = status
        self._chunk_size = chunk_size
        self._inbox: asyncio.Queue[int | _Event] = asyncio.Queue()
        self._files: dict[int, tuple[str, str]] = {}

    async def run(
        self, requests: AsyncIterator[fsutil_wire_pb2.Packet], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        reader = asyncio.get_running_loop().create_task(self._read(requests))
        # A cancelled call cancels this task: the outcome stays "cancelled".
        outcome: str | None = "transfer cancelled"
        code = grpc.StatusCode.CANCELLED
        try:
            await self._send(context)
            outcome = None
        except _Stop as stop:
            outcome, code = stop.message, stop.code
            if stop.send_err:
                await context.write(Packet(type=Packet.PACKET_ERR, data=f"local {self._name!r}: {outcome}".encode()))
        finally:
            reader.cancel()
            if outcome is None:
                self._status._complete()
            else:
                self._status._fail(f"local {self._name!r}: {outcome}")
        if outcome is not None:
            context.set_code(code)
            context.set_details(f"local {self._name!r}: {outcome}")

    async def _send(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        index = 0
        walking = True
        while True:
            # Serve what has been asked for; wait for more only once every STAT is out.
            while not walking or not self._inbox.empty():
                item = self._inbox.get_nowait() if walking else await self._inbox.get()
                if isinstance(item, int):
                    found = self._files.pop(item, None)
                    if found is None:
                        raise _Stop(f"invalid file id {item}", code=grpc.StatusCode.UNKNOWN)
                    await self._send_file(context, item, *found)
                    continue
                if item.kind == "fin":
                    await context.write(Packet(type=Packet.PACKET_FIN))
                    return
                raise _Stop(item.message, code=grpc.StatusCode.UNKNOWN, send_err=False)
            try:
                entry = next(self._entries, None)
            except FileSyncError as exc:
                raise _Stop(str(exc), code=grpc.StatusCode.UNKNOWN) from None
            if entry is None:
                walking = False
                await context.write(Packet(type=Packet.PACKET_STAT))
                continue
            if entry.source is not None:
                self._files[index] = (entry.stat.path, entry.source)
            index += 1
            self._status._add(entries=1)
            await context.write(Packet(type=Packet.PACKET_STAT, stat=entry.stat))

    async def _send_file(
        self, context: grpc.aio.ServicerContext[Any, Any], file_id: int, rel: str, source: str
    ) -> None:
        if source == "":  # a socket: sent as an empty file
            await context.write(Packet(type=Packet.PACKET_DATA, ID=file_id))
            return
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise _Stop(f"cannot read {rel}: {exc.strerror}", code=grpc.StatusCode.UNKNOWN) from None
        total = 0
        try:
            if not stat_module.S_ISREG(os.fstat(fd).st_mode):
                raise _Stop(
                    f"cannot read {rel}: it is no longer a regular file", code=grpc.StatusCode.UNKNOWN
                )
            while True:
                try:
                    chunk = os.read(fd, self._chunk_size)
                except OSError as exc:
                    raise _Stop(f"cannot read {rel}: {exc.strerror}", code=grpc.StatusCode.UNKNOWN) from None
                if not chunk:
                    break
                total += len(chunk)
                await context.write(Packet(type=Packet.PACKET_DATA, ID=file_id, data=chunk))
        finally:
            os.close(fd)
        self._status._add(files=1, nbytes=total)
        await context.write(Packet(type=Packet.PACKET_DATA, ID=file_id))

    async def _read(self, requests: AsyncIterator[fsutil_wire_pb2.Packet]) -> None:
        try:
            async for packet in requests:
                if packet.type == Packet.PACKET_REQ:
                    self._inbox.put_nowait(packet.ID)
                elif packet.type == Packet.PACKET_FIN:
                    self._inbox.put_nowait(_Event("fin"))
                    return
                elif packet.type == Packet.PACKET_ERR:
                    message = packet.data.decode(errors="replace")
                    self._inbox.put_nowait(_Event("err", f"error from receiver: {message}"))
                    return
            # A cancelled call cancels the transfer itself; this is the receiver half-closing.
            self._inbox.put_nowait(_Event("err", "the receiver closed the stream before the transfer finished"))
        except grpc.RpcError:
            self._inbox.put_nowait(_Event("err", "transfer cancelled"))


def _was_cancelled(context: grpc.ServicerContext, settle: float = 0.1) -> bool:
    """Whether a call whose request stream just ended was cancelled rather than half-closed.

    grpcio ends the request iterator the same way in both cases, and learns about a cancellation
    a moment later; a half-closed call stays active until we answer, so wait a little to tell.
    """
    deadline = time.monotonic() + settle
    while context.is_active():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


class _Event(NamedTuple):
    kind: str  # "fin" or "err"
    message: str = ""


class _Stop(Exception):
    def __init__(
        self, message: str, *, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN, send_err: bool = True
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.send_err = send_err


# -- FileSend: receiving exports ----------------------------------------------------------------


class DirectoryTarget:
    """Where a ``local`` export goes: the files are written below ``path`` (created if needed).

    Existing files are replaced and others are kept, like ``buildctl``'s default. With
    ``delete=True`` (the exporter needs the ``mode=delete`` attribute too) entries of ``path``
    that the export does not contain are removed. A multi-platform export arrives as one transfer
    per platform, into ``linux_amd64/``, ``linux_arm64/``... subdirectories.
    """

    def __init__(self, path: str | os.PathLike[str], *, delete: bool = False) -> None:
        self.path = Path(path)
        self.delete = delete
        self.status = TransferStatus()

    def __repr__(self) -> str:
        return f"DirectoryTarget({str(self.path)!r})"


class StreamTarget:
    """Where a ``tar``, ``oci`` or ``docker`` export goes: ``open()`` is called when the daemon
    starts sending and the bytes are written to the stream it returns. The stream is closed at the
    end, unless it is standard output (or ``close=False``), which is only flushed."""

    def __init__(self, open: Callable[[], BinaryIO], *, close: bool | None = None) -> None:
        self.open = open
        self.close = close
        self.status = TransferStatus()

    def __repr__(self) -> str:
        return f"StreamTarget({self.open!r})"


ExportTarget = DirectoryTarget | StreamTarget


class FileSend:
    """Serves ``moby.filesync.v1.FileSend``: the daemon pushes exported results.

    ``targets`` maps exporter ids (the index of the exporter in ``SolveRequest.Exporters``) to
    where its output goes.
    """

    def __init__(self, targets: Mapping[int, ExportTarget]) -> None:
        self.targets = dict(targets)

    def register(self, server: HandlerRegistry) -> list[str]:
        # Raw bytes both ways: the messages are fsutil packets or BytesMessage depending on the
        # target, which is only known from the call's metadata.
        handlers = {"DiffCopy": grpc.stream_stream_rpc_method_handler(self._diff_copy)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(FILESEND_SERVICE, handlers),))
        return list(FILESEND_METHODS)

    def _diff_copy(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        md = decode_metadata(context.invocation_metadata())
        exporter_id = 0
        ids = md.get(KEY_EXPORTER_ID)
        if ids:
            try:
                exporter_id = int(ids[0], 10)
            except ValueError:
                exporter_id = 0
        target = self.targets.get(exporter_id)
        if target is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"exporter {exporter_id} not found: llbgen has no output for it"
            )
        if isinstance(target, DirectoryTarget):
            if target.delete and "1" not in md.get(KEY_MULTI_PLATFORM_TRANSFER, []):
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "local export with delete mode needs the exporter attribute mode=delete",
                )
            return _Receiver(target).run(requests, context)
        return _write_stream(target, md, requests, context)


def _is_stdout(stream: BinaryIO) -> bool:
    if stream is getattr(sys.stdout, "buffer", None):
        return True
    try:
        return stream.fileno() == 1
    except (OSError, ValueError, AttributeError):
        return False


def _write_stream(
    target: StreamTarget,
    md: Mapping[str, list[str]],
    requests: Iterator[bytes],
    context: grpc.ServicerContext,
) -> Iterator[bytes]:
    status = target.status
    status._begin()
    with status._lock:
        for key, values in md.items():
            if key.startswith(KEY_EXPORTER_META_PREFIX):
                status.metadata[key[len(KEY_EXPORTER_META_PREFIX) :]] = ",".join(values)
    try:
        stream = target.open()
    except OSError as exc:
        status._fail(f"cannot open the export output: {exc}")
        context.abort(grpc.StatusCode.UNKNOWN, f"cannot open the export output: {exc}")
    close = target.close if target.close is not None else not _is_stdout(stream)
    error: str | None = None
    try:
        for raw in requests:
            data = filesync_pb2.BytesMessage.FromString(raw).data
            view = memoryview(data)
            while view:
                written = stream.write(view)
                if written is None:  # a non-blocking raw stream that is full: retry
                    continue
                view = view[written:]
            status._add(nbytes=len(data))
        # The end of the stream is the daemon's half-close after the last chunk, unless the
        # call was cancelled.
        if _was_cancelled(context):
            error = "the export was cancelled before it finished"
    except grpc.RpcError:
        error = "the export was cancelled before it finished"
    except OSError as exc:
        error = f"writing the export output failed: {exc}"
    finally:
        try:
            if close:
                stream.close()
            else:
                stream.flush()
        except OSError as exc:
            error = error or f"writing the export output failed: {exc}"
    if error is not None:
        status._fail(error)
        context.abort(grpc.StatusCode.UNKNOWN, error)
    status._complete()
    return iter(())


class _TransferError(Exception):
    pass


class _Pending:
    """A regular file whose contents were requested."""

    __slots__ = ("created", "fd", "path", "size", "stat")

    def __init__(self, path: str, stat: fsutil_stat_pb2.Stat) -> None:
        self.path = path
        self.stat = stat
        self.fd: int | None = None
        self.created = False  # the file exists (a hard link to it came first)
        self.size = 0

    def open(self) -> int:
        if self.fd is None:
            flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            if self.created:
                self.fd = os.open(self.path, flags)
            else:
                self.fd = _create_file(self.path)
                self.created = True
        return self.fd


def _create_file(path: str) -> int:
    """Creates an empty file at ``path``, replacing whatever is there; returns a write fd."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except FileExistsError:
        _remove(path)
        return os.open(path, flags, 0o600)


def _remove(path: str) -> None:
    """Removes whatever is at ``path`` (a directory with its contents; symlinks not followed)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat_module.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _set_xattrs(path: str | int, st: fsutil_stat_pb2.Stat) -> None:
    if not st.xattrs:
        return
    for key, value in st.xattrs.items():
        try:
            if isinstance(path, int):
                os.setxattr(path, key, value)
            else:
                os.setxattr(path, key, value, follow_symlinks=False)
        except OSError:
            pass  # best effort, as BuildKit's own client does


class _Receiver:
    """One diff-copy transfer into a :class:`DirectoryTarget`, as the receiving side: a reader
    thread writes what arrives and queues our REQ/FIN packets for the response stream."""

    def __init__(self, target: DirectoryTarget) -> None:
        self._target = target
        self._status = target.status
        self._root = os.path.abspath(target.path)
        self._out = _Outbox()
        self._pending: dict[int, _Pending] = {}
        self._next_id = 0
        self._stats_done = False
        self._fin_sent = False
        self._dirs: list[tuple[str, fsutil_stat_pb2.Stat]] = []
        self._parents: list[list[str]] = [["", ""]]  # [directory, last name seen in it]
        self._files: set[str] = set()  # regular files received, for hard links
        self._pending_paths: dict[str, _Pending] = {}
        self._received: set[str] = set()
        self._failure: str | None = None
        self._lock = threading.Lock()
        self._done = False

    def run(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._status._begin()
        context.add_callback(self._out.closed.set)
        try:
            os.makedirs(self._root, 0o700, exist_ok=True)
        except OSError as exc:
            message = f"cannot create the output directory {self._root}: {exc.strerror}"
            self._status._fail(message)
            context.abort(grpc.StatusCode.UNKNOWN, message)
        return self._respond(requests, context)

    def _respond(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        reader = threading.Thread(
            target=self._read, args=(requests, context), name="filesend-recv", daemon=True
        )
        reader.start()
        try:
            for item in self._out.drain():
                assert isinstance(item, bytes)
                yield item
        finally:
            self._out.closed.set()
            if not self._fin_sent:
                self._end("transfer cancelled")
        if self._failure is not None:
            context.set_code(grpc.StatusCode.UNKNOWN)
            context.set_details(self._failure)

    def _end(self, error: str | None) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        if error is None:
            self._status._complete()
        else:
            self._failure = f"export to {self._root}: {error}"
            self._status._fail(self._failure)

    def _send(self, packet: fsutil_wire_pb2.Packet) -> None:
        self._out.put(packet.SerializeToString())

    def _read(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> None:
        try:
            try:
                for raw in requests:
                    packet = Packet.FromString(raw)
                    kind = packet.type
                    if kind == Packet.PACKET_DATA:
                        self._on_data(packet.ID, packet.data)
                    elif kind == Packet.PACKET_STAT:
                        if packet.HasField("stat"):
                            self._on_stat(packet.stat)
                        else:
                            self._stats_done = True
                    elif kind == Packet.PACKET_FIN:
                        break  # the sender's answer to our FIN
                    elif kind == Packet.PACKET_ERR:
                        raise _TransferError(f"error from sender: {packet.data.decode(errors='replace')}")
                    else:
                        raise _TransferError(f"unexpected packet type {kind} from the sender")
                    if self._stats_done and not self._pending and not self._fin_sent:
                        self._finalize()
                        self._fin_sent = True
                        self._end(None)
                        self._send(Packet(type=Packet.PACKET_FIN))
                if not self._fin_sent:
                    if _was_cancelled(context):
                        raise _TransferError("the transfer was cancelled")
                    raise _TransferError("the sender closed the stream before the transfer finished")
            except grpc.RpcError:
                # The daemon cancels the stream once it has our FIN: that is the normal end.
                if not self._fin_sent:
                    raise _TransferError("the transfer was cancelled") from None
        except _TransferError as exc:
            self._end(str(exc))
            self._send(Packet(type=Packet.PACKET_ERR, data=str(exc).encode()))
        except OSError as exc:
            message = f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc)
            self._end(message)
            self._send(Packet(type=Packet.PACKET_ERR, data=message.encode()))
        except Exception as exc:  # noqa: BLE001 - reported to the daemon rather than lost in a thread
            self._end(repr(exc))
            self._send(Packet(type=Packet.PACKET_ERR, data=repr(exc).encode()))
        finally:
            for pending in self._pending.values():
                if pending.fd is not None:
                    os.close(pending.fd)
                    pending.fd = None
            self._out.put(_END)

    # -- packets --

    def _check_path(self, rel: str, is_dir: bool) -> None:
        if not rel or "\x00" in rel or rel.startswith("/") or go_clean(rel) != rel or rel == ".":
            raise _TransferError(f"refusing to write {rel!r}: not a clean relative path")
        if rel == ".." or rel.startswith("../"):
            raise _TransferError(f"refusing to write {rel!r}: outside the output directory")
        parent, _, name = rel.rpartition("/")
        while self._parents and self._parents[-1][0] != parent:
            self._parents.pop()
        if not self._parents:
            raise _TransferError(f"refusing to write {rel!r}: its directory was not sent before it")
        last = self._parents[-1]
        if last[1] and _sort_key(name) <= _sort_key(last[1]):
            raise _TransferError(f"entries out of order: {rel!r} after {_join(parent, last[1])!r}")
        last[1] = name
        if is_dir:
            self._parents.append([rel, ""])

    def _on_stat(self, st: fsutil_stat_pb2.Stat) -> None:
        file_id = self._next_id
        self._next_id += 1
        rel = st.path
        mode = st.mode
        is_dir = bool(mode & MODE_DIR)
        self._check_path(rel, is_dir)
        self._received.add(rel)
        self._status._add(entries=1)
        path = os.path.join(self._root, rel)
        if is_dir:
            self._make_dir(path, st)
            return
        if mode & MODE_SYMLINK:
            self._replace(path, lambda: os.symlink(st.linkname, path))
            _set_xattrs(path, st)
            os.utime(path, ns=(st.modTime, st.modTime), follow_symlinks=False)
            return
        if mode & (MODE_DEVICE | MODE_NAMED_PIPE):
            if mode & MODE_CHAR_DEVICE:
                kind = stat_module.S_IFCHR
            elif mode & MODE_NAMED_PIPE:
                kind = stat_module.S_IFIFO
            else:
                kind = stat_module.S_IFBLK
            device = os.makedev(st.devmajor, st.devminor)
            self._replace(path, lambda: os.mknod(path, kind | 0o600, device))
            self._finish_metadata(path, st)
            return
        if not _can_request_data(mode):
            raise _TransferError(f"refusing to write {rel!r}: unsupported file type (mode {mode:#o})")
        if st.linkname:
            target = st.linkname
            if target not in self._files:
                raise _TransferError(f"invalid hard link {rel!r} to {target!r}, which was not sent before it")
            source = os.path.join(self._root, target)
            first = self._pending_paths.get(target)
            if first is not None and not first.created:
                os.close(_create_file(first.path))  # its contents are still to come
                first.created = True
            self._replace(path, lambda: os.link(source, path, follow_symlinks=False))
            self._status._add(files=1)
            return
        # The file is created when its contents arrive: one open per file.
        self._files.add(rel)
        pending = _Pending(path, st)
        self._pending[file_id] = pending
        self._pending_paths[rel] = pending
        self._send(Packet(type=Packet.PACKET_REQ, ID=file_id))

    def _replace(self, path: str, create: Callable[[], None]) -> None:
        try:
            create()
        except FileExistsError:
            _remove(path)
            create()

    def _make_dir(self, path: str, st: fsutil_stat_pb2.Stat) -> None:
        # Writable by us during the transfer; the final mode and mtime are set at the end.
        mode = posix_mode(st.mode) | stat_module.S_IRWXU
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            if not stat_module.S_ISDIR(os.lstat(path).st_mode):
                os.unlink(path)
                os.mkdir(path, mode)
        os.chmod(path, mode)
        _set_xattrs(path, st)
        self._dirs.append((path, st))

    def _finish_metadata(self, path: str, st: fsutil_stat_pb2.Stat) -> None:
        _set_xattrs(path, st)
        os.chmod(path, posix_mode(st.mode))
        os.utime(path, ns=(st.modTime, st.modTime), follow_symlinks=False)

    def _on_data(self, file_id: int, data: bytes) -> None:
        pending = self._pending.get(file_id)
        if pending is None:
            raise _TransferError(f"invalid file request {file_id}")
        fd = pending.open()
        if data:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            pending.size += len(data)
            return
        del self._pending[file_id]
        self._pending_paths.pop(pending.stat.path, None)
        pending.fd = None
        try:
            st = pending.stat
            _set_xattrs(fd, st)
            os.chmod(fd, posix_mode(st.mode))
            os.utime(fd, ns=(st.modTime, st.modTime))
        finally:
            os.close(fd)
        self._status._add(files=1, nbytes=pending.size)

    def _finalize(self) -> None:
        if self._target.delete:
            self._delete_extra("")
        for path, st in reversed(self._dirs):
            os.chmod(path, posix_mode(st.mode))
            os.utime(path, ns=(st.modTime, st.modTime), follow_symlinks=False)

    def _delete_extra(self, rel: str) -> None:
        directory = os.path.join(self._root, rel) if rel else self._root
        for name in os.listdir(directory):
            child = f"{rel}/{name}" if rel else name
            path = os.path.join(directory, name)
            if child not in self._received:
                _remove(path)
            elif stat_module.S_ISDIR(os.lstat(path).st_mode):
                self._delete_extra(child)

"""Which entries of a local directory a ``FileSync`` transfer sends, in the protocol's order, and
the ``Stat`` of each: fsutil's walker, its include/exclude filter and its ``followpaths``.

Kept apart from the transfer itself so that what is sent can be tested (and reasoned about)
without a daemon or a stream.
"""

from __future__ import annotations

import errno
import os
import stat as stat_module
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from llbgen.pb import fsutil_stat_pb2
from llbgen.session.filesync.wire import MODE_SOCKET, Stat, go_file_mode
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


class FileSyncError(Exception):
    """A transfer cannot go on; the message says which file and why."""


class WalkEntry(NamedTuple):
    """One entry to send: its stat, and where to read its contents (``None`` when it has none to
    send, ``""`` for a socket, which is sent as an empty file as Go's client does)."""

    stat: fsutil_stat_pb2.Stat
    source: str | None


def join(*parts: str) -> str:
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
                    found.extend(read_symlink(join(parent, child), False) or [])
            return found or None
        st = lstat(rel)
        if st is None or not stat_module.S_ISLNK(st.st_mode):
            return None
        link = go_clean(os.readlink(os.path.join(base, rel)))
        if link.startswith("/"):
            return [link]
        parent = rel.rpartition("/")[0] or "."
        return [go_clean("/" + join(parent, link))]

    def append(path: str, depth: int) -> None:
        if depth > 255:
            raise FileSyncError(f"followpaths: too many levels of symbolic links at {path}")
        rest = join(".", path)
        current = "."
        while True:
            first, _, rest = rest.partition("/")
            current = join(current, first)
            targets = read_symlink(current, True)
            if (rest == "" or targets is not None) and current in resolved:
                return
            if targets is not None:
                resolved.add(current)
                for target in targets:
                    append(join(target, rest), depth + 1)
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


def sort_key(name: str) -> bytes:
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
        names.sort(key=sort_key)
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

"""The vocabulary of fsutil's diff-copy protocol as BuildKit speaks it on the session.

What both directions of a transfer (:mod:`.sender`, :mod:`.receiver`) must agree on, kept apart
from either: the packet and stat messages, Go's ``os.FileMode`` bits that ``Stat.mode`` carries,
the service and header names, and how the daemon encodes header values.
"""

from __future__ import annotations

import stat as stat_module
from collections.abc import Iterable
from urllib.parse import unquote_plus

from llbgen.pb import fsutil_stat_pb2, fsutil_wire_pb2

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


def can_request_data(go_mode: int) -> bool:
    # Must agree between sender and receiver: only entries without type bits carry contents.
    return go_mode & MODE_TYPE == 0


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

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

The package, one job per module: :mod:`.wire` (packets, modes, headers), :mod:`.walk` (what is
sent), :mod:`.sender` (FileSync), :mod:`.filesend` with :mod:`.receiver` and :mod:`.targets`
(FileSend and where exports go), :mod:`.status` (what happened, for the caller).
"""

from llbgen.session.filesync.filesend import FileSend
from llbgen.session.filesync.sender import CHUNK_SIZE, FileSync
from llbgen.session.filesync.status import TransferStatus
from llbgen.session.filesync.targets import DirectoryTarget, ExportTarget, StreamTarget
from llbgen.session.filesync.walk import FileSyncError, WalkEntry, resolve_follow_paths, walk
from llbgen.session.filesync.wire import (
    MODE_CHAR_DEVICE,
    MODE_DEVICE,
    MODE_DIR,
    MODE_NAMED_PIPE,
    MODE_SETGID,
    MODE_SETUID,
    MODE_STICKY,
    MODE_SYMLINK,
    decode_metadata,
    go_file_mode,
    posix_mode,
)

__all__ = [
    "CHUNK_SIZE",
    "MODE_CHAR_DEVICE",
    "MODE_DEVICE",
    "MODE_DIR",
    "MODE_NAMED_PIPE",
    "MODE_SETGID",
    "MODE_SETUID",
    "MODE_STICKY",
    "MODE_SYMLINK",
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

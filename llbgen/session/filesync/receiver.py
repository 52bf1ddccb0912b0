"""The receiving side of diff-copy: a ``local`` export written below a :class:`DirectoryTarget`.

The daemon sends the tree's STATs; we create what they describe, ask for the contents of each
regular file, and write what arrives. Every path is checked before anything is written, so a
transfer cannot reach outside the target directory.
"""

from __future__ import annotations

import os
import queue
import shutil
import stat as stat_module
import threading
from collections.abc import Callable, Iterator

import grpc

from llbgen.pb import fsutil_stat_pb2, fsutil_wire_pb2
from llbgen.session.filesync.status import was_cancelled
from llbgen.session.filesync.targets import DirectoryTarget
from llbgen.session.filesync.walk import join, sort_key
from llbgen.session.filesync.wire import (
    MODE_CHAR_DEVICE,
    MODE_DEVICE,
    MODE_DIR,
    MODE_NAMED_PIPE,
    MODE_SYMLINK,
    Packet,
    can_request_data,
    posix_mode,
)
from llbgen.session.patterns import go_clean


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


class Receiver:
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
                    if was_cancelled(context):
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
        if last[1] and sort_key(name) <= sort_key(last[1]):
            raise _TransferError(f"entries out of order: {rel!r} after {join(parent, last[1])!r}")
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
        if not can_request_data(mode):
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

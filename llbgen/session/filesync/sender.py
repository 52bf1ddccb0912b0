"""``FileSync``: the daemon pulls a local directory (``local://NAME``), and we send it.

The sending side of diff-copy: the walk's STATs go out while the receiver's requests come in,
and each requested file is sent as soon as it is asked for.
"""

from __future__ import annotations

import asyncio
import os
import stat as stat_module
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from llbgen.pb import fsutil_wire_pb2
from llbgen.session.core import DirectRegistry, HandlerRegistry
from llbgen.session.filesync.status import TransferStatus
from llbgen.session.filesync.walk import FileSyncError, WalkEntry, walk
from llbgen.session.filesync.wire import (
    FILESYNC_METHODS,
    FILESYNC_SERVICE,
    KEY_DIR_NAME,
    KEY_EXCLUDE_PATTERNS,
    KEY_FOLLOW_PATHS,
    KEY_INCLUDE_PATTERNS,
    Packet,
    decode_metadata,
)

#: Size of the DATA chunks llbgen sends. fsutil sends 32 KiB; any size up to the daemon's 16 MiB
#: message limit is accepted, and with grpcio's per-message cost 256 KiB moves big files ~2x faster.
CHUNK_SIZE = 256 * 1024


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
        if isinstance(server, DirectRegistry):
            # Three small messages a file: served on the session's connection itself.
            server.add_direct_handler(FILESYNC_METHODS[0], handlers["DiffCopy"])
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

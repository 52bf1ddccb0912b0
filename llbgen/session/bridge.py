"""The session's HTTP/2 connection, spoken here rather than only relayed to a gRPC server.

The daemon's end of ``Control.Session`` is an HTTP/2 client. Relaying its bytes to a grpc.aio
server on a unix socket puts a second gRPC stack, a socket and a poller thread between a file
and the daemon: a file transfer is three small messages per file, and most of an upload's time
went there (see README, "Performance"). So the connection ends here, with ``h2``:

- the streams of *direct* methods (the file upload, ``FileSync.DiffCopy``) are served on this
  connection by their grpc.aio handler with a small stand-in for its context
  (:class:`DirectContext`); the messages they write are framed straight into the session's
  byte stream, many to an HTTP/2 frame;
- every other stream (auth, secrets, ssh, content, exports, health) is relayed, headers, data
  and trailers, to the session's gRPC server on its unix socket, unchanged.

Flow control is end to end: data of a relayed stream is acknowledged to its sender only once it
was passed on, and a direct handler's writes wait while the daemon's window is spent.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import quote

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

#: A direct method's handler: grpc.aio's ``stream_stream`` behaviour with its (de)serializers.
DirectHandler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

#: Bytes waiting for the session stream beyond which direct handlers wait before writing more.
_HIGH_WATER = 4 << 20
#: Bytes of direct messages queued between two turns of the event loop.
_SLICE = 256 << 10
#: Receive windows offered to the daemon and to the local server: large, so that neither waits
#: for our WINDOW_UPDATEs on a fast transfer.
_WINDOW = 16 << 20
_GRPC_HEADER = struct.Struct(">BI")
_END = object()


class _Aborted(Exception):
    """Raised by :meth:`DirectContext.abort`, as grpc.aio's abort raises, to end the handler."""


class DirectContext:
    """What a grpc.aio stream handler uses of its ``ServicerContext``, for a direct stream."""

    def __init__(self, bridge: Bridge, stream_id: int, metadata: tuple[tuple[str, str | bytes], ...], serialize: Callable[[Any], bytes]) -> None:
        self._bridge = bridge
        self._stream_id = stream_id
        self._metadata = metadata
        self._serialize = serialize
        self.code = grpc.StatusCode.OK
        self.details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    async def write(self, message: Any) -> None:
        data = self._serialize(message)
        await self._bridge.send_message(self._stream_id, data)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.code, self.details = code, details
        raise _Aborted(details)


class _Outgoing:
    """What waits to be sent on one side of a stream, for that side's window."""

    __slots__ = ("ack", "items", "size")

    def __init__(self) -> None:
        # bytes or memoryview (data), a tuple ("headers", list), a list of headers (trailers,
        # which end the stream), or _END.
        self.items: deque[Any] = deque()
        #: Per item, how much to acknowledge to the other side once it has been sent.
        self.ack: deque[int] = deque()
        self.size = 0  # bytes of data


class _Stream:
    __slots__ = ("down_id", "incoming", "messages", "task", "to_down", "to_up", "up_id")

    def __init__(self, up_id: int) -> None:
        self.up_id = up_id
        self.down_id: int | None = None  # relayed streams: the id on the local server's connection
        self.to_up = _Outgoing()
        self.to_down = _Outgoing()
        self.task: asyncio.Task[None] | None = None
        self.incoming = bytearray()  # direct streams: request bytes not yet a whole message
        self.messages: asyncio.Queue[Any] | None = None


class _Local(asyncio.Protocol):
    """The connection to the local gRPC server: bytes go to the bridge's client side of it."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def data_received(self, data: bytes) -> None:
        self.bridge.from_local(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.bridge.local_lost()


class Bridge:
    """One session connection: ``receive`` takes the daemon's bytes, ``outgoing`` holds ours.

    ``outgoing`` is anything with ``data_received(bytes)`` (the pump's buffer) and a ``size``.
    """

    def __init__(self, direct: Mapping[str, DirectHandler], server_path: Path, outgoing: Any) -> None:
        self._direct = {path.encode(): handler for path, handler in direct.items()}
        self._server_path = server_path
        self._out = outgoing
        self._up = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self._down = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self._local: asyncio.Transport | None = None
        self._streams: dict[int, _Stream] = {}  # by up id
        self._by_down: dict[int, _Stream] = {}
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = False
        self._unsent = 0  # bytes of direct messages queued since the last flush
        self._flush_scheduled = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_unix_connection(lambda: _Local(self), str(self._server_path))
        assert isinstance(transport, asyncio.Transport)
        self._local = transport
        settings: dict[h2.settings.SettingCodes | int, int] = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW}
        for conn in (self._up, self._down):
            conn.initiate_connection()
            conn.update_settings(settings)
            conn.increment_flow_control_window(_WINDOW - 65535)
        self._flush()

    # -- bytes in ---------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Bytes from the daemon."""
        self._feed(self._up, data, self._on_up)

    def from_local(self, data: bytes) -> None:
        self._feed(self._down, data, self._on_down)

    def _feed(self, conn: h2.connection.H2Connection, data: bytes, handle: Callable[[h2.events.Event], None]) -> None:
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()  # the GOAWAY h2 queued
            self.close()
            return
        for event in events:
            handle(event)
        self._flush()

    def local_lost(self) -> None:
        for stream in list(self._by_down.values()):
            self._queue(stream.to_up, [(b"grpc-status", b"14"), (b"grpc-message", b"session server closed")])
        self._by_down.clear()
        self._flush()

    def _on_up(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event.stream_id, event.headers or [])
        elif isinstance(event, h2.events.DataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is None:
                self._up.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif stream.messages is not None:
                self._up.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                self._direct_data(stream, event.data or b"")
            else:
                self._queue(stream.to_down, event.data or b"", event.flow_controlled_length)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                if stream.messages is not None:
                    stream.messages.put_nowait(_END)
                else:
                    self._queue(stream.to_down, _END)
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                self._reset(stream, event.error_code or 0)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close()

    def _on_down(self, event: h2.events.Event) -> None:
        stream_id = getattr(event, "stream_id", None)
        stream = self._by_down.get(stream_id) if stream_id else None
        if isinstance(event, h2.events.ResponseReceived):
            if stream is not None and event.stream_ended is not None:  # a trailers-only answer
                self._queue(stream.to_up, list(event.headers or []))
                self._by_down.pop(event.stream_id, None)
            elif stream is not None:
                self._queue(stream.to_up, ("headers", list(event.headers or [])))
        elif isinstance(event, h2.events.DataReceived):
            if stream is None:
                self._down.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                self._queue(stream.to_up, event.data or b"", event.flow_controlled_length)
        elif isinstance(event, h2.events.TrailersReceived):
            if stream is not None:
                self._queue(stream.to_up, list(event.headers or []))
                self._by_down.pop(event.stream_id, None)
        elif isinstance(event, h2.events.StreamEnded):
            if stream is not None:
                self._queue(stream.to_up, _END)
                self._by_down.pop(event.stream_id, None)
        elif isinstance(event, h2.events.StreamReset):
            if stream is not None:
                self._by_down.pop(event.stream_id, None)
                self._streams.pop(stream.up_id, None)
                self._try(lambda: self._up.reset_stream(stream.up_id, event.error_code or 0))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.local_lost()

    def _request(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        stream = _Stream(stream_id)
        self._streams[stream_id] = stream
        path = next((v for k, v in headers if k == b":path"), b"")
        handler = self._direct.get(path)
        if handler is not None:
            stream.messages = asyncio.Queue()
            stream.task = asyncio.get_running_loop().create_task(self._serve(stream, handler, headers))
            return
        if self._local is None or self._local.is_closing():
            self._try(lambda: self._up.reset_stream(stream_id, 7))  # REFUSED_STREAM
            self._streams.pop(stream_id, None)
            return
        stream.down_id = self._down.get_next_available_stream_id()
        self._by_down[stream.down_id] = stream
        self._down.send_headers(stream.down_id, headers)

    def _reset(self, stream: _Stream, code: int) -> None:
        if stream.task is not None:
            stream.task.cancel()
        if stream.down_id is not None and self._by_down.pop(stream.down_id, None) is not None:
            down_id = stream.down_id
            self._try(lambda: self._down.reset_stream(down_id, code))

    # -- direct streams -----------------------------------------------------------------------

    def _direct_data(self, stream: _Stream, data: bytes) -> None:
        buffer = stream.incoming
        buffer += data
        assert stream.messages is not None
        while len(buffer) >= 5:
            compressed, length = _GRPC_HEADER.unpack_from(buffer)
            if len(buffer) < 5 + length:
                break
            if compressed:
                stream.messages.put_nowait(ValueError("compressed messages are not supported"))
            else:
                stream.messages.put_nowait(bytes(buffer[5 : 5 + length]))
            del buffer[: 5 + length]

    async def _serve(self, stream: _Stream, handler: DirectHandler, headers: list[tuple[bytes, bytes]]) -> None:
        metadata = tuple(_metadata(headers))
        context = DirectContext(self, stream.up_id, metadata, handler.response_serializer or (lambda m: m))
        self._queue(stream.to_up, ("headers", [(b":status", b"200"), (b"content-type", b"application/grpc")]))
        self._flush()
        try:
            behaviour: Any = handler.stream_stream  # an asyncio handler, given our stand-in context
            await behaviour(self._requests(stream, handler.request_deserializer), context)
        except _Aborted:
            pass
        except asyncio.CancelledError:
            return  # the daemon reset the stream
        except Exception as exc:  # noqa: BLE001 - a failed handler ends its call, as grpc's server does
            context.code, context.details = grpc.StatusCode.UNKNOWN, f"unexpected error: {exc!r}"
        if self._streams.get(stream.up_id) is stream:
            trailers = [(b"grpc-status", str(context.code.value[0]).encode())]
            if context.details:
                trailers.append((b"grpc-message", quote(context.details, safe=" !#$&'()*+,-./:;=?@[]^_`{|}~").encode()))
            self._queue(stream.to_up, trailers)
            self._flush()

    async def _requests(self, stream: _Stream, deserialize: Callable[[bytes], Any] | None) -> AsyncIterator[Any]:
        assert stream.messages is not None
        while True:
            item = await stream.messages.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield deserialize(item) if deserialize is not None else item

    async def send_message(self, stream_id: int, data: bytes) -> None:
        """Queues one gRPC message of a direct stream. Messages gather into frames until a
        slice's worth is waiting; then they go out, and the handler waits while the daemon's
        window or the session stream cannot take more."""
        stream = self._streams.get(stream_id)
        if stream is None:
            raise asyncio.CancelledError()
        self._queue(stream.to_up, _GRPC_HEADER.pack(0, len(data)))
        self._queue(stream.to_up, data)
        self._unsent += 5 + len(data)
        if self._unsent < _SLICE:
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._scheduled_flush)
            return
        self._flush()
        await asyncio.sleep(0)  # let the daemon's requests in
        while not self._writable.is_set():
            await self._writable.wait()
            if self._streams.get(stream_id) is not stream:
                raise asyncio.CancelledError()

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def drained(self) -> None:
        """The session stream took bytes: handlers waiting for room may go on."""
        if not self._writable.is_set():
            self._flush()

    # -- sending --------------------------------------------------------------------------------

    def _queue(self, out: _Outgoing, item: Any, ack: int = 0) -> None:
        if isinstance(item, bytes):
            out.size += len(item)
        out.items.append(item)
        out.ack.append(ack)

    def _flush(self) -> None:
        """Sends what the windows allow, on both connections, and hands the bytes on."""
        self._unsent = 0
        blocked = False
        for stream in list(self._streams.values()):
            if stream.to_up.items:
                done = self._drain(self._up, stream.up_id, stream.to_up, self._down, stream.down_id)
                if done:
                    self._streams.pop(stream.up_id, None)
                elif stream.messages is not None and stream.to_up.size > _HIGH_WATER:
                    blocked = True
            if stream.to_down.items and stream.down_id is not None:
                self._drain(self._down, stream.down_id, stream.to_down, self._up, stream.up_id)
        down = self._down.data_to_send()
        if down and self._local is not None and not self._local.is_closing():
            self._local.write(down)
        up = self._up.data_to_send()
        if up:
            self._out.data_received(up)
        if blocked or self._out.size >= _HIGH_WATER:
            self._writable.clear()
        else:
            self._writable.set()

    def _drain(
        self, conn: h2.connection.H2Connection, stream_id: int, out: _Outgoing,
        other: h2.connection.H2Connection, other_id: int | None,
    ) -> bool:  # fmt: skip
        """Sends ``out`` on ``conn`` as far as its window allows; True once the stream is over."""
        items, acks = out.items, out.ack
        try:
            while items:
                item = items[0]
                if isinstance(item, (bytes, memoryview)):
                    window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
                    if window <= 0:
                        return False
                    if len(item) > window:
                        view = memoryview(item)
                        conn.send_data(stream_id, bytes(view[:window]))
                        items[0] = view[window:]
                        out.size -= window
                        continue
                    # Small messages of a direct stream (no acknowledgement) share a frame.
                    parts = [items.popleft()]
                    ack = acks.popleft()
                    size = len(item)
                    while (
                        not ack and items and isinstance(items[0], (bytes, memoryview))
                        and not acks[0] and size + len(items[0]) <= window
                    ):  # fmt: skip
                        size += len(items[0])
                        parts.append(items.popleft())
                        acks.popleft()
                    conn.send_data(stream_id, parts[0] if len(parts) == 1 and isinstance(item, bytes) else b"".join(parts))
                    out.size -= size
                    if ack and other_id is not None:
                        self._try(lambda: other.acknowledge_received_data(ack, other_id))
                    continue
                if isinstance(item, tuple):  # response headers
                    conn.send_headers(stream_id, item[1])
                elif item is _END:
                    conn.end_stream(stream_id)
                    return self._over(out)
                else:  # trailers
                    conn.send_headers(stream_id, item, end_stream=True)
                    return self._over(out)
                items.popleft()
                acks.popleft()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return self._over(out)
        return False

    @staticmethod
    def _over(out: _Outgoing) -> bool:
        out.items.clear()
        out.ack.clear()
        out.size = 0
        return True

    @staticmethod
    def _try(action: Callable[[], object]) -> None:
        try:
            action()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            pass

    def close(self) -> None:
        """Ends every stream: the session is over."""
        if self._closed:
            return
        self._closed = True
        for stream in list(self._streams.values()):
            if stream.task is not None:
                stream.task.cancel()
        self._streams.clear()
        self._by_down.clear()
        self._writable.set()
        if self._local is not None:
            self._local.close()


def _metadata(headers: Iterable[tuple[bytes, bytes]]) -> Iterable[tuple[str, str | bytes]]:
    """Request headers as grpc's ``invocation_metadata()`` gives them."""
    for key, value in headers:
        if key.startswith(b":"):
            continue
        name = key.decode("ascii", "replace")
        if name.endswith("-bin"):
            yield name, base64.b64decode(value + b"=" * (-len(value) % 4))
        else:
            yield name, value.decode("utf-8", "replace")


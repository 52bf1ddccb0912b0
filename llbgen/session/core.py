"""A BuildKit session: a gRPC server of ours that the daemon reaches through ``Control.Session``.

``Control.Session`` is a bidirectional stream of byte chunks that carries one HTTP/2 connection on
which the daemon is the gRPC client and we are the server. grpcio cannot serve on a byte stream,
but it can serve on a unix socket, so the session runs a server on a private socket; the
connection itself ends in :mod:`llbgen.session.bridge`, which serves the upload's stream itself
and relays the others to that server.

Server, pump and the stream run on one asyncio event loop in a thread of its own: a file
transfer is three small messages per file, and grpcio's asyncio API costs about half as much per
message as its threaded one, with no hand-off between threads for each message.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from llbgen.pb import control_pb2, control_pb2_grpc
from llbgen.session.threaded import AdaptingHandler, GenericHandler, MethodHandler, adapt

if TYPE_CHECKING:
    from llbgen.session.bridge import Bridge, DirectHandler

_COALESCE = 1 << 20
#: How long the pump waits for more bytes after a small read, to send them as one message...
_LINGER = 0.001
_SMALL = 64 << 10
#: ...when it sent the last message less than this long ago: in a transfer, not in a quick
#: exchange of requests and answers, where waiting would only add to every round trip.
_BURST = 0.002
_HEALTH_METHOD = "/grpc.health.v1.Health/Check"
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 16 << 20),
    ("grpc.max_receive_message_length", 16 << 20),
    # The daemon's error trailers carry Go stack traces; with the 8 KiB default a failed solve
    # would surface as a bare RST_STREAM instead of its message.
    ("grpc.max_metadata_size", 1 << 20),
]

T = TypeVar("T")


class HandlerRegistry(Protocol):
    """Where services add their handlers: a ``grpc.Server``, or the session's server."""

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[GenericHandler]) -> None: ...

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, MethodHandler]
    ) -> None: ...


class Service(Protocol):
    """Something the daemon may call during a build (file sync, auth, secrets...)."""

    def register(self, server: HandlerRegistry) -> list[str]:
        """Adds handlers to ``server``; returns the full method names, for the session headers."""
        ...


@runtime_checkable
class DirectRegistry(Protocol):
    """A registry that can also serve a method on the session's connection itself (see
    :mod:`llbgen.session.bridge`): for asyncio stream handlers whose messages are many and small."""

    def add_direct_handler(self, method: str, handler: DirectHandler) -> None: ...


class _Registry:
    """Adds handlers to an asyncio server, running the synchronous ones on threads."""

    def __init__(self, server: grpc.aio.Server, pool: futures.Executor, direct: dict[str, DirectHandler]) -> None:
        self._server = server
        self._pool = pool
        self._direct = direct

    def add_direct_handler(self, method: str, handler: DirectHandler) -> None:
        self._direct[method] = handler

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[GenericHandler]) -> None:
        self._server.add_generic_rpc_handlers([AdaptingHandler(h, self._pool) for h in generic_rpc_handlers])

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, MethodHandler]
    ) -> None:
        adapted = {name: adapt(handler, self._pool) for name, handler in method_handlers.items()}
        self._server.add_registered_method_handlers(service_name, adapted)  # type: ignore[attr-defined]


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """The event loop sessions run on: one per process, in a daemon thread, started on first use.

    One loop for the life of the process rather than one per session: starting a loop and its
    thread is a tenth of a fully cached build.
    """
    global _loop
    with _loop_lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="llbgen-session", daemon=True).start()
            _loop = loop
        return _loop


def _forget_loop() -> None:
    """In a forked child: the loop's thread was not copied, so the loop is not running there."""
    global _loop, _loop_lock
    _loop, _loop_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_loop)


async def _new_server(path: Path) -> grpc.aio.Server:
    """A server with its health service, listening on ``path`` once started."""
    server = grpc.aio.server(options=GRPC_OPTIONS)
    health = HealthServicer()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_insecure_port(f"unix:{path}")
    return server


_SOCKET = "session.sock"
#: sun_path's size on Linux, the terminating NUL included.
_MAX_SOCKET_PATH = 108


def _new_directory() -> Path:
    """A private directory for a session's socket; in /tmp if $TMPDIR is too long for one."""
    directory = Path(tempfile.mkdtemp(prefix="llbgen-session-"))
    if len(os.fsencode(directory / _SOCKET)) < _MAX_SOCKET_PATH:
        return directory
    directory.rmdir()
    return Path(tempfile.mkdtemp(prefix="llbgen-session-", dir="/tmp"))


class ServiceServer:
    """``services`` served on the unix socket ``path`` by a grpc.aio server on :func:`background_loop`."""

    def __init__(self, services: Sequence[Service], path: Path) -> None:
        self.path = path
        self.loop = background_loop()
        # Each synchronous bidi stream (export, ssh forwarding) holds a thread for its whole life.
        self._pool = futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="llbgen-session")
        self.methods = [_HEALTH_METHOD]
        #: Methods the session's connection serves itself (the server has them too).
        self.direct: dict[str, DirectHandler] = {}
        try:
            self._server = self.run(self._start(services))
        except BaseException:
            self._pool.shutdown(wait=False)
            raise

    async def _start(self, services: Sequence[Service]) -> grpc.aio.Server:
        server = await _new_server(self.path)
        registry = _Registry(server, self._pool, self.direct)
        for service in services:
            self.methods.extend(service.register(registry))
        await server.start()
        return server

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs ``coroutine`` on the server's loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    async def stop(self) -> None:
        """Stops serving; on the loop. The thread pool is left to :meth:`close`."""
        await self._server.stop(grace=None)

    def close(self) -> None:
        try:
            self.run(self.stop())
        finally:
            self.close_pool()

    def close_pool(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Outbound:
    """Bytes for the daemon, gathered until the pump takes them; ``drained`` is told when it did."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.ready = asyncio.Event()
        self.eof = False
        self.drained: Callable[[], None] | None = None
        self._last_take = float("-inf")

    @property
    def size(self) -> int:
        return len(self.buffer)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.ready.set()

    def close(self) -> None:
        self.eof = True
        self.ready.set()

    async def take(self) -> bytes:
        """Up to ``_COALESCE`` bytes; in a transfer, after a moment's wait for more to arrive."""
        while not self.buffer:
            if self.eof:
                return b""
            self.ready.clear()
            await self.ready.wait()
        loop = asyncio.get_running_loop()
        if len(self.buffer) < _SMALL and not self.eof and loop.time() - self._last_take < _BURST:
            await asyncio.sleep(_LINGER)
        self._last_take = loop.time()
        data = bytes(self.buffer[:_COALESCE])
        del self.buffer[:_COALESCE]
        if self.drained is not None:
            self.drained()
        return data


class Session:
    """Serves ``services`` to the daemon for the duration of one or more builds.

    Use as a context manager around the build, attached no later than the solve that names it
    is sent: the daemon waits only a few seconds for a session named in a solve request.
    """

    def __init__(self, services: Sequence[Service], *, name: str = "llbgen", shared_key: str = "") -> None:
        self.id = secrets.token_hex(13)
        self._name = name
        self._shared_key = shared_key or self.id
        self._dir = _new_directory()
        try:
            self._server = ServiceServer(services, self._dir / _SOCKET)
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self.methods = self._server.methods
        self._call: Any = None
        self._pump: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    def metadata(self) -> list[tuple[str, str]]:
        md = [
            ("x-docker-expose-session-uuid", self.id),
            ("x-docker-expose-session-name", self._name),
            ("x-docker-expose-session-sharedkey", self._shared_key),
        ]
        md.extend(("x-docker-expose-session-grpc-method", m) for m in self.methods)
        return md

    def attach(self, channel: grpc.aio.Channel) -> futures.Future[None]:
        """Starts opening the session stream on ``channel`` (an asyncio channel on the session's
        loop, :func:`background_loop`) and the pump; the future is done when they run.

        The daemon waits for a session named in a solve request, so the solve need not wait for
        this. The channel stays the caller's to close.
        """
        return asyncio.run_coroutine_threadsafe(self._attach(channel), self._server.loop)

    async def _attach(self, channel: grpc.aio.Channel) -> None:
        # Imported here, not at the top: a command that starts no session does not load h2 (a build
        # loads it while it waits for the daemon's first answer, llbgen.client.run).
        from llbgen.session.bridge import Bridge

        loop = asyncio.get_running_loop()
        outbound = _Outbound()
        bridge = Bridge(self._server.direct, self._server.path, outbound)
        await bridge.start()
        outbound.drained = bridge.drained
        stub = control_pb2_grpc.ControlStub(channel)  # type: ignore[no-untyped-call]

        async def outgoing() -> AsyncIterator[control_pb2.BytesMessage]:
            while data := await outbound.take():
                yield control_pb2.BytesMessage(data=data)

        call = stub.Session(outgoing(), metadata=self.metadata())
        self._call = call
        self._pump = loop.create_task(self._incoming(call, bridge, outbound))

    async def _incoming(self, call: Any, bridge: Bridge, outbound: _Outbound) -> None:
        try:
            async for message in call:
                bridge.receive(message.data)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = exc
        except OSError as exc:
            self.error = exc
        except asyncio.CancelledError:
            pass
        finally:
            bridge.close()
            outbound.close()

    async def _detach_and_stop(self) -> None:
        # The cancellation ends the stream for the daemon; the pump then ends on its own, with
        # nothing left that needs to wait for it.
        if self._call is not None:
            self._call.cancel()
        if self._pump is not None and not self._pump.done():
            _ending.add(self._pump)  # the loop holds tasks weakly
            self._pump.add_done_callback(_ending.discard)
        await self._server.stop()

    def close(self) -> None:
        """Ends the session: the stream is cancelled and the server stopped on the loop, which
        this does not wait for (nothing of the session is used after this, and a command would
        otherwise spend a tenth of a cached build's time on it)."""
        try:
            asyncio.run_coroutine_threadsafe(self._detach_and_stop(), self._server.loop)
        finally:
            self._server.close_pool()
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Pumps of closed sessions that have not ended yet.
_ending: set[asyncio.Task[None]] = set()

"""Connecting to a BuildKit daemon: addresses, TLS, ``docker-container://``, and the first probe.

Addresses are those of buildctl's ``--addr`` / ``BUILDKIT_HOST``: ``unix:///path``, ``tcp://host:port``
(with TLS when certificates are given) and ``docker-container://NAME`` (through
``docker exec -i NAME buildctl dial-stdio``, one exec per connection).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import attrs
import grpc

from llbgen.llb.errors import LLBGenError, UsageError
from llbgen.llb.platform import Platform
from llbgen.pb import control_pb2, control_pb2_grpc, gateway_pb2_grpc
from llbgen.session.core import GRPC_OPTIONS, background_loop

PROBE_TIMEOUT = 10.0
#: How often a wait wakes up to let Ctrl-C through.
POLL_INTERVAL = 0.2

T = TypeVar("T")


class ConnectionError(LLBGenError):
    """The daemon cannot be reached or used; the message says why and what to do."""


@attrs.frozen
class TLSConfig:
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    @property
    def enabled(self) -> bool:
        return any((self.ca, self.cert, self.key, self.server_name))

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None, what: str) -> bytes | None:
            if path is None:
                return None
            try:
                return path.read_bytes()
            except OSError as exc:
                raise UsageError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca, "CA certificate"),
            private_key=read(self.key, "key"),
            certificate_chain=read(self.cert, "certificate"),
        )


@attrs.frozen
class DaemonInfo:
    version: str
    platforms: tuple[Platform, ...]


def distinct_platforms(workers: Iterable[Any]) -> list[Platform]:
    """The platforms of BuildKit workers (``ListWorkers`` records, ``Ping`` workers), in order, once each."""
    platforms: list[Platform] = []
    for worker in workers:
        for p in worker.platforms:
            platform = Platform(p.OS, p.Architecture, p.Variant).normalized()
            if platform not in platforms:
                platforms.append(platform)
    return platforms


def _grpc_target(address: str) -> str:
    """gRPC's name for a ``unix://`` or ``tcp://`` address."""
    url = urlsplit(address)
    if url.scheme == "unix":
        return f"unix:{url.path or url.netloc}"
    if not url.hostname or not url.port:
        raise UsageError(f"invalid address {address!r}: expected tcp://HOST:PORT")
    return f"{url.hostname}:{url.port}"


class Connection:
    """A gRPC channel to one daemon, with the stubs llbgen uses.

    An asyncio channel, on the loop the session also runs on (:func:`background_loop`): one
    connection carries the probe, the solve, the status stream and the session, and a call
    costs no hand-off between threads inside grpcio. Synchronous code starts calls with
    :meth:`submit` and :meth:`call`.
    """

    def __init__(self, address: str, tls: TLSConfig = TLSConfig()) -> None:
        self.address = address
        self._bridge: _StdioBridge | None = None
        url = urlsplit(address)
        options: list[tuple[str, Any]] = list(GRPC_OPTIONS)
        credentials: grpc.ChannelCredentials | None = None
        if url.scheme in ("unix", "tcp"):
            target = _grpc_target(address)
            if tls.enabled:
                if tls.server_name:
                    options.append(("grpc.ssl_target_name_override", tls.server_name))
                credentials = tls.credentials()
        elif url.scheme == "docker-container":
            name = url.netloc or url.path.lstrip("/")
            self._bridge = _StdioBridge(["docker", *_docker_flags(url.query), "exec", "-i", name, "buildctl", "dial-stdio"])
            target = f"unix:{self._bridge.path}"
        else:
            raise UsageError(
                f"unsupported address {address!r}: use unix:///PATH, tcp://HOST:PORT or docker-container://NAME"
            )
        self.loop = background_loop()

        async def open_channel() -> grpc.aio.Channel:  # an asyncio channel belongs to its loop
            if credentials is None:
                return grpc.aio.insecure_channel(target, options=options)
            return grpc.aio.secure_channel(target, credentials, options=options)

        self.channel = self.call(open_channel)
        self.control = control_pb2_grpc.ControlStub(self.channel)  # type: ignore[no-untyped-call]
        self.bridge = gateway_pb2_grpc.LLBBridgeStub(self.channel)  # type: ignore[no-untyped-call]

    def submit(self, call: Callable[[], Awaitable[T]]) -> futures.Future[T]:
        """Starts ``call()`` (an RPC on :attr:`control` or :attr:`bridge`, say) on the channel's loop.

        Cancelling the returned future cancels the call.
        """

        async def run() -> T:
            return await call()

        return asyncio.run_coroutine_threadsafe(run(), self.loop)

    def call(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` run on the channel's loop, waited for; Ctrl-C interrupts the wait and cancels it."""
        return wait(self.submit(call))

    def probe(self, timeout: float = PROBE_TIMEOUT) -> DaemonInfo:
        """Asks the daemon who it is and what it builds for; a clear error within ``timeout``."""
        return self.start_probe(timeout)()

    def start_probe(self, timeout: float = PROBE_TIMEOUT) -> Callable[[], DaemonInfo]:
        """Sends :meth:`probe`'s questions now; the function returned waits for the answer.

        For callers with work of their own to do while the daemon answers.
        """

        async def ask() -> tuple[Any, Any]:
            # Both at once: one round trip to wait for, not two.
            return await asyncio.gather(
                self.control.Info(control_pb2.InfoRequest(), timeout=timeout),
                self.control.ListWorkers(control_pb2.ListWorkersRequest(), timeout=timeout),
            )

        asked = self.submit(ask)

        def answer() -> DaemonInfo:
            try:
                info, workers = wait(asked)
            except grpc.RpcError as exc:
                raise self.explain(exc) from None
            return DaemonInfo(info.buildkitVersion.version, tuple(distinct_platforms(workers.record)))

        return answer

    def explain(self, exc: grpc.RpcError) -> ConnectionError:
        code, details = exc.code(), exc.details() or ""
        lowered = details.lower()
        if "ssl" in lowered or "tls" in lowered or "handshake" in lowered or "certificate" in lowered:
            return ConnectionError(f"TLS connection to BuildKit at {self.address} failed: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ConnectionError(
                f"BuildKit at {self.address} did not answer within {PROBE_TIMEOUT:.0f}s; "
                "check the address and that the daemon is healthy"
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            if self._bridge is not None and self._bridge.last_error:
                details = self._bridge.last_error
            return ConnectionError(
                f"cannot reach BuildKit at {self.address}: {details.splitlines()[0] if details else code.name}. "
                "Is buildkitd running there? (scripts/stack-up starts one; without --addr/BUILDKIT_HOST "
                "llbgen starts its own)"
            )
        return ConnectionError(f"BuildKit at {self.address} refused the request: {code.name}: {details}")

    def close(self) -> None:
        """Closes the channel, on the loop, without waiting for it (see ``Session.close``)."""
        try:
            self.submit(lambda: self.channel.close(None))
        finally:
            if self._bridge is not None:
                self._bridge.close()


class BlockingStub:
    """A synchronous view of an asyncio stub's unary methods, run on the connection's loop.

    For code shared with callers that hold a synchronous stub (``solve_and_return``, which the
    ``# syntax=`` frontend also runs).
    """

    def __init__(self, connection: Connection, stub: Any) -> None:
        self._connection = connection
        self._stub = stub

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)
        return lambda *args, **kwargs: self._connection.call(lambda: method(*args, **kwargs))


def wait(future: futures.Future[T], timeout: float | None = None) -> T:
    """``future.result()``, polled so that Ctrl-C reaches the main thread; cancels it on Ctrl-C.

    Raises ``TimeoutError`` after ``timeout`` seconds.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            try:
                return future.result(timeout=POLL_INTERVAL)
            except futures.TimeoutError:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError from None
    except KeyboardInterrupt:
        future.cancel()
        raise


def _docker_flags(query: str) -> list[str]:
    """``?context=NAME`` (buildctl's) or ``?host=URL`` of a ``docker-container://`` address, as docker options."""
    flags = []
    for key, value in parse_qsl(query):
        if key == "context":
            flags += ["--context", value]
        elif key == "host":
            flags += ["-H", value]
    return flags


class _StdioBridge:
    """A unix socket whose every connection is piped to a new ``buildctl dial-stdio`` process."""

    def __init__(self, argv: list[str]) -> None:
        if shutil.which(argv[0]) is None:
            raise UsageError(f"docker-container:// addresses need the {argv[0]!r} command on PATH")
        self._argv = argv
        self._dir = Path(tempfile.mkdtemp(prefix="llbgen-dial-"))
        self.path = self._dir / "dial.sock"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen()
        self.last_error = ""
        threading.Thread(target=self._accept, daemon=True, name="dial-stdio").start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        proc = subprocess.Popen(
            self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr

        def upstream() -> None:
            try:
                while data := conn.recv(65536):
                    stdin.write(data)
                    stdin.flush()
            except OSError:
                pass
            finally:
                try:
                    stdin.close()
                except OSError:
                    pass

        threading.Thread(target=upstream, daemon=True).start()
        try:
            while data := os.read(stdout.fileno(), 65536):
                conn.sendall(data)
        except OSError:
            pass
        finally:
            # shutdown first: close() alone leaves the socket open while the upstream thread is
            # blocked reading it, and gRPC would never see the daemon go away.
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
            proc.wait()
            if proc.returncode:
                self.last_error = stderr.read().decode(errors="replace").strip()

    def close(self) -> None:
        self._listener.close()
        shutil.rmtree(self._dir, ignore_errors=True)

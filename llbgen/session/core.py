"""A BuildKit session: a gRPC server of ours that the daemon reaches through ``Control.Session``.

``Control.Session`` is a bidirectional stream of byte chunks that carries one HTTP/2 connection on
which the daemon is the gRPC client and we are the server. grpcio cannot serve on a byte stream,
but it can serve on a unix socket, so the session runs a ``grpc.server`` on a private socket and
pumps bytes between that socket and the stream.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from llbgen.pb import control_pb2, control_pb2_grpc

_CHUNK = 32 * 1024
_COALESCE = 1 << 20
_HEALTH_METHOD = "/grpc.health.v1.Health/Check"
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 16 << 20),
    ("grpc.max_receive_message_length", 16 << 20),
    # The daemon's error trailers carry Go stack traces; with the 8 KiB default a failed solve
    # would surface as a bare RST_STREAM instead of its message.
    ("grpc.max_metadata_size", 1 << 20),
]


class Service(Protocol):
    """Something the daemon may call during a build (file sync, auth, secrets...)."""

    def register(self, server: grpc.Server) -> list[str]:
        """Adds handlers to ``server``; returns the full method names, for the session headers."""
        ...


class Session:
    """Serves ``services`` to the daemon for the duration of one or more builds.

    Use as a context manager around the build: the daemon waits only a few seconds for a session
    named in a solve request, so ``attach`` happens before ``Solve``.
    """

    def __init__(self, services: Sequence[Service], *, name: str = "llbgen", shared_key: str = "") -> None:
        self.id = secrets.token_hex(13)
        self._name = name
        self._shared_key = shared_key or self.id
        self._dir = Path(tempfile.mkdtemp(prefix="llbgen-session-"))
        self._socket_path = self._dir / "session.sock"
        # Each bidi stream (file transfer, ssh forwarding) holds a thread for its whole life.
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=GRPC_OPTIONS)
        health_servicer = health.HealthServicer()
        health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self._server)
        self.methods = [_HEALTH_METHOD]
        for service in services:
            self.methods.extend(service.register(self._server))
        self._server.add_insecure_port(f"unix:{self._socket_path}")
        self._server.start()
        self._conn: socket.socket | None = None
        self._call: Any = None  # the Session stream call: an iterator that can be cancelled
        self._pump: threading.Thread | None = None
        self.error: BaseException | None = None

    def metadata(self) -> list[tuple[str, str]]:
        md = [
            ("x-docker-expose-session-uuid", self.id),
            ("x-docker-expose-session-name", self._name),
            ("x-docker-expose-session-sharedkey", self._shared_key),
        ]
        md.extend(("x-docker-expose-session-grpc-method", m) for m in self.methods)
        return md

    def attach(self, channel: grpc.Channel) -> None:
        """Opens the session stream on ``channel`` and starts pumping bytes both ways."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(self._socket_path))
        self._conn = conn
        stub = control_pb2_grpc.ControlStub(channel)  # type: ignore[no-untyped-call]
        call = stub.Session(self._outgoing(conn), metadata=self.metadata())
        self._call = call
        self._pump = threading.Thread(target=self._incoming, args=(call, conn), name="session-pump", daemon=True)
        self._pump.start()

    def _outgoing(self, conn: socket.socket) -> Iterator[control_pb2.BytesMessage]:
        while True:
            try:
                data = conn.recv(_CHUNK)
                if not data:
                    return
                # Send what has already arrived as one message: fewer, larger messages are what
                # makes file transfers fast, since each gRPC message has a fixed cost.
                chunks = [data]
                size = len(data)
                while size < _COALESCE:
                    try:
                        more = conn.recv(_COALESCE - size, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                    if not more:
                        break
                    chunks.append(more)
                    size += len(more)
            except OSError:
                return
            yield control_pb2.BytesMessage(data=b"".join(chunks) if len(chunks) > 1 else data)

    def _incoming(self, call: Iterator[control_pb2.BytesMessage], conn: socket.socket) -> None:
        try:
            for message in call:
                conn.sendall(message.data)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = exc
        except OSError as exc:
            self.error = exc
        finally:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._conn is not None:
            try:
                self._conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._conn.close()
        if self._pump is not None:
            self._pump.join(timeout=5)
        self._server.stop(grace=None)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

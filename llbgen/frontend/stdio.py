"""The gateway connection: one HTTP/2 stream on stdin/stdout, on which the frontend is the client.

BuildKit starts a frontend with its stdin and stdout joined to a gRPC server (the ``LLBBridge``
forwarder). grpcio cannot dial a pair of file descriptors, but it can dial a unix socket, so the
frontend listens on a private abstract socket, points a channel at it and pumps bytes between the
one connection it accepts and the two descriptors.

Nothing but the protocol may reach the daemon's end of stdout: the descriptors are moved out of
the way first (fd 1 then writes to stderr, fd 0 reads /dev/null), so a stray ``print`` in an
image definition goes to the build log instead of corrupting the stream.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import threading

import grpc

from llbgen.pb import gateway_pb2_grpc
from llbgen.session.core import GRPC_OPTIONS

_CHUNK = 1 << 16


class StdioChannel:
    """A gRPC channel to the daemon through this process's stdin and stdout."""

    def __init__(self, stdin_fd: int = 0, stdout_fd: int = 1) -> None:
        self._in = os.dup(stdin_fd)
        self._out = os.dup(stdout_fd)
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, stdin_fd)
        os.close(devnull)
        os.dup2(2, stdout_fd)

        name = f"llbgen-frontend-{os.getpid()}-{secrets.token_hex(8)}"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind("\0" + name)
        self._listener.listen(1)
        self._conn: socket.socket | None = None
        self._closed = threading.Event()
        threading.Thread(target=self._serve, name="stdio-accept", daemon=True).start()
        self.channel = grpc.insecure_channel(f"unix-abstract:{name}", options=GRPC_OPTIONS)
        self.bridge = gateway_pb2_grpc.LLBBridgeStub(self.channel)  # type: ignore[no-untyped-call]

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        finally:
            # One connection only: a reconnect could not be joined to the same stdio stream, so
            # it fails at once instead of waiting for a peer that will never answer.
            self._listener.close()
        self._conn = conn
        threading.Thread(target=self._downstream, args=(conn,), name="stdio-in", daemon=True).start()
        self._upstream(conn)

    def _downstream(self, conn: socket.socket) -> None:
        """Daemon → channel: stdin into the socket."""
        try:
            while data := os.read(self._in, _CHUNK):
                conn.sendall(data)
        except OSError:
            pass
        finally:
            try:
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _upstream(self, conn: socket.socket) -> None:
        """Channel → daemon: the socket onto stdout."""
        try:
            while data := conn.recv(_CHUNK):
                view = memoryview(data)
                while view:
                    view = view[os.write(self._out, view) :]
        except OSError:
            pass
        finally:
            self._closed.set()

    def close(self) -> None:
        self.channel.close()
        if self._conn is not None:
            try:
                self._conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        # Whatever was sent reaches stdout before the process exits (the descriptors close then).
        self._closed.wait(timeout=2)
        try:
            self._listener.close()
        except OSError:
            pass

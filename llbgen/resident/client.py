"""The ``python -m llbgen`` side: hand the command to a resident process if one runs this code.

Wire format on the unix socket, client to server: a 4-byte big-endian length sent together with
the client's descriptors 0, 1 and 2 (SCM_RIGHTS), then that many bytes of JSON (argv, cwd, env,
umask); afterwards single bytes ``I`` (SIGINT) or ``T`` (SIGTERM) relay signals. Server to
client: the command's exit status, a 4-byte big-endian signed integer. Standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from types import FrameType

from llbgen.resident import enabled, socket_path

HEADER = struct.Struct("!I")
STATUS = struct.Struct("!i")
SIGNALS: dict[int, bytes] = {signal.SIGINT: b"I", signal.SIGTERM: b"T"}


def forward(argv: Sequence[str]) -> int | None:
    """The exit status of ``argv`` run by the resident process, or None to run it here."""
    if not enabled() or argv[:1] == ["resident"]:
        return None
    try:
        path = socket_path()
        cwd = os.getcwd()  # fails in a deleted directory: the command says so in-process
        for fd in (0, 1, 2):
            os.fstat(fd)  # a closed standard descriptor cannot be passed on
    except OSError:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    umask = os.umask(0)
    os.umask(umask)
    request = json.dumps(
        {"argv": list(argv), "cwd": cwd, "env": dict(os.environ), "umask": umask}
    ).encode()
    with sock:
        try:
            socket.send_fds(sock, [HEADER.pack(len(request))], [0, 1, 2])
            sock.sendall(request)
        except OSError:
            return None  # nothing ran yet: run it here

        def relay(signum: int, frame: FrameType | None) -> None:
            try:
                sock.send(SIGNALS[signum])
            except OSError:
                pass

        for signum in SIGNALS:
            signal.signal(signum, relay)
        status = _read_exactly(sock, STATUS.size)
    if len(status) < STATUS.size:
        print(f"llbgen: error: the resident llbgen process ({path}) ended without an exit status; "
              "its log is next to the socket, `llbgen resident stop` stops it", file=sys.stderr)  # fmt: skip
        return 1
    code: int = STATUS.unpack(status)[0]
    return code


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data

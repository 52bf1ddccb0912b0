"""The ``python -m llbgen`` side: hand the command to a resident process if one runs this code.

Wire format on the unix socket, client to server: a 4-byte big-endian length sent together with
the client's descriptors 0, 1 and 2 (SCM_RIGHTS), then that many bytes of the request (argv, cwd,
env, umask) in :mod:`marshal`'s format; afterwards single bytes ``I`` (SIGINT) or ``T`` (SIGTERM)
relay signals. Server to client: the command's exit status, a 4-byte big-endian signed integer.

Both ends run the same interpreter (its version is part of the socket's name), which is what makes
marshal a safe format here; the server accepts only connections of its own user. This side uses
the C modules under :mod:`socket` and :mod:`signal` and no :mod:`json`: the Python wrappers
import :mod:`enum` and :mod:`re`, which would more than double the time this hand-over takes.
"""

from __future__ import annotations

import _socket
import marshal
import os
import sys

from llbgen.resident import enabled, socket_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal  # the same functions, with type stubs
    from collections.abc import Sequence
    from types import FrameType
else:
    import _signal

HEADER_SIZE = 4
STATUS_SIZE = 4
SIGNALS: dict[int, bytes] = {_signal.SIGINT: b"I", _signal.SIGTERM: b"T"}
_STANDARD_FDS = (0, 1, 2)


def encode_request(argv: Sequence[str], cwd: str, env: dict[str, str], umask: int) -> bytes:
    return marshal.dumps({"argv": list(argv), "cwd": cwd, "env": env, "umask": umask})


def forward(argv: Sequence[str]) -> int | None:
    """The exit status of ``argv`` run by the resident process, or None to run it here."""
    if not enabled() or argv[:1] == ["resident"]:
        return None
    try:
        path = socket_path()
        cwd = os.getcwd()  # fails in a deleted directory: the command says so in-process
        for fd in _STANDARD_FDS:
            os.fstat(fd)  # a closed standard descriptor cannot be passed on
    except OSError:
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    umask = os.umask(0)
    os.umask(umask)
    request = encode_request(argv, cwd, dict(os.environ), umask)
    fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in _STANDARD_FDS)  # an array of C ints
    try:
        sock.sendmsg(
            [len(request).to_bytes(HEADER_SIZE, "big")], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)]
        )
        sock.sendall(request)
    except OSError:
        sock.close()
        return None  # nothing ran yet: run it here

    def relay(signum: int, frame: FrameType | None) -> None:
        try:
            sock.send(SIGNALS[signum])
        except OSError:
            pass

    for signum in SIGNALS:
        _signal.signal(signum, relay)
    status = _read_exactly(sock, STATUS_SIZE)
    sock.close()
    if len(status) < STATUS_SIZE:
        print(f"llbgen: error: the resident llbgen process ({path}) ended without an exit status; "
              "its log is next to the socket, `llbgen resident stop` stops it", file=sys.stderr)  # fmt: skip
        return 1
    return int.from_bytes(status, "big", signed=True)


def _read_exactly(sock: _socket.socket, size: int) -> bytes:
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

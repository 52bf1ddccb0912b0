"""The resident process: imports llbgen once, then forks a child for each command it is handed.

The parent never creates a gRPC channel, a thread or an event loop, so each child starts from a
clean, single-threaded copy and gets ready while it waits for a command (the "spare": gRPC, the
session loop, the next session's server, a connection to the daemon; see :func:`_warm_up`). A
child takes over the client's descriptors, working directory, environment and umask, runs
``llbgen.cli.main`` and sends back the exit status. Started by ``llbgen resident start``; it exits when llbgen's code changes (see
:func:`llbgen.resident.fingerprint`) or on ``llbgen resident stop``.
"""

from __future__ import annotations

import gc
import importlib
import marshal
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from llbgen.client.connection import preconnect
from llbgen.client.daemon import EmbeddedDaemon
from llbgen.resident import fingerprint, socket_path
from llbgen.resident.client import HEADER_SIZE, SIGNALS, STATUS_SIZE
from llbgen.session.core import background_loop, discard_prepared_session, prepare_session

#: What a command may need, imported before the first fork (the TTY progress view included).
PRELOAD = (
    "llbgen",
    "llbgen.cli",
    "llbgen.client.run",
    "llbgen.client.daemon",
    "llbgen.session.auth",
    "llbgen.session.content",
    "llbgen.session.core",
    "llbgen.session.filesync",
    "llbgen.session.secrets",
    "llbgen.session.sshforward",
    "llbgen.progress.plain",
    "llbgen.progress.rawjson",
    "llbgen.progress.tty",
    "llbgen.structure",
    "grpc.aio",
    "grpc._channel",  # imported by grpc on the first channel
    "grpc.experimental",
    "concurrent.futures.thread",
    "rich.console",
    "rich.live",
)
#: What the resident process keeps of the environment it is started from: each command brings its
#: own, and credentials in the starting shell's environment have no business living on in it.
_KEPT_ENV = (
    "PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "XDG_RUNTIME_DIR", "XDG_DATA_HOME",
    "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "BUILDKIT_HOST",
)  # fmt: skip
#: How often an idle resident process checks whether llbgen's code changed.
_CHECK_INTERVAL = 10.0
_START_TIMEOUT = 20.0


def serve(path: Path, code: str) -> None:
    """Serves commands on ``path`` until llbgen's code no longer matches ``code``.

    A spare child is always forked and waiting: it is the one that accepts the next connection,
    so forking and :func:`_warm_up` happen between commands rather than in one. The parent only
    forks the next spare when one reports (on a pipe) that it took a connection.
    """
    for name in PRELOAD:
        importlib.import_module(name)
    importlib.import_module("llbgen.cli").parser()
    # What is here now lives as long as the process: out of the collector's sight, the children's
    # collections do not touch (and so copy) the pages of all the modules above.
    gc.freeze()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.unlink(missing_ok=True)
    old = os.umask(0o077)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    listener.listen(64)
    _pid_file(path).write_text(f"{os.getpid()}\n")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Spares watch the read end: end of file means the parent is gone and they should go too.
    lifeline, parent_end = os.pipe()
    _log(f"serving {path} (llbgen {code}, pid {os.getpid()})")
    spare = None
    try:
        # The code is checked before each spare is made (after a command, off its time) and
        # while one waits.
        while fingerprint() == code:
            taken_r, taken_w = os.pipe()
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            spare = os.fork()
            if spare == 0:
                os.close(taken_r)
                os.close(parent_end)
                _spare(listener, lifeline, taken_w)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            os.close(taken_w)
            with open(taken_r, "rb", buffering=0) as taken:
                took = _watch(taken, code)
            if took is None:
                break
            if not took:  # do not fork in a tight loop
                _log(f"spare {spare} ended before it took a command")
                time.sleep(1.0)
            spare = None
        _log("llbgen's code changed: exiting")
        log_file(path).unlink(missing_ok=True)
    finally:
        path.unlink(missing_ok=True)  # first: no new connections for the spare to take
        if spare:
            _kill(spare)
        listener.close()
        _pid_file(path).unlink(missing_ok=True)


def _watch(taken: BinaryIO, code: str) -> bool | None:
    """True once the spare took a command, False if it ended first, None if llbgen's code
    changed while it waited."""
    while not select.select([taken], [], [], _CHECK_INTERVAL)[0]:
        if fingerprint() != code:
            return None
    return bool(taken.read(1))


def _spare(listener: socket.socket, lifeline: int, taken: int) -> NoReturn:
    """Gets ready for a command, waits for one (or for the parent to go) and runs it."""

    def leave(*_: object) -> NoReturn:
        discard_prepared_session()
        os._exit(0)

    try:
        signal.signal(signal.SIGTERM, leave)
        _warm_up()
        # Blocked since before the fork (see serve): a stop that came during the warm-up is
        # handled now, when there is a prepared session to remove, not half of one.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        ready = select.select([listener.fileno(), lifeline], [], [])[0]
        if listener.fileno() not in ready:
            leave()
        conn, _ = listener.accept()
        os.write(taken, b"x")
        os.close(taken)
        os.close(lifeline)
        listener.close()
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    _child(conn)


def _warm_up() -> None:
    """What commands need before their input says anything: gRPC's core, the session loop, a
    session's server (not started), and a connection to the daemon that a command started where
    the resident process was would use (``$BUILDKIT_HOST``, else llbgen's own daemon if it runs).

    gRPC's core reads its own environment variables (``GRPC_TRACE`` and the like) when it starts:
    here, before a command's environment arrives. ``LLBGEN_RESIDENT=off`` runs a command with its
    own.
    """
    # Each step only saves a command time: one that fails is logged and left to the command.
    background_loop()
    try:
        prepare_session()  # the first asyncio gRPC object, made on the loop, starts gRPC's core
    except Exception as exc:
        _log(f"no session server made ahead: {exc}")
    address = os.environ.get("BUILDKIT_HOST")
    if not address:
        daemon = EmbeddedDaemon.default()
        address = daemon.address if daemon.pid() is not None else None
    if address:
        try:
            preconnect(address)
        except Exception as exc:
            _log(f"not connecting ahead to {address}: {exc}")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def _child(conn: socket.socket) -> NoReturn:
    """Runs one command and exits; nothing raised here may reach the parent's loop."""
    code = 1
    try:
        code = _run(conn)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            # The client goes away once it has the status; that must not interrupt us any more.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            if code >= 0:
                conn.sendall(code.to_bytes(STATUS_SIZE, "big", signed=True))
        except BaseException:
            pass
        finally:
            discard_prepared_session()  # if the command made no session
            os._exit(max(code, 0) & 0xFF)


def _run(conn: socket.socket) -> int:
    """The command's exit status; -1 for a connection that was only a probe."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    request = _receive(conn)
    if request is None:  # `llbgen resident status` or start's wait: nothing to run
        return -1
    threading.Thread(target=_relay_signals, args=(conn,), name="resident-signals", daemon=True).start()
    from llbgen.cli import main

    try:
        return main(request["argv"])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM, as it would end the command in-process, after removing the prepared session."""
    discard_prepared_session()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _receive(conn: socket.socket) -> dict[str, Any] | None:
    """Takes over the client's descriptors, directory, environment and umask; returns the request."""
    uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
    if uid != os.getuid():
        raise PermissionError(f"a client of uid {uid} connected")
    header, fds, _, _ = socket.recv_fds(conn, HEADER_SIZE, 3)
    if not header:
        return None
    if len(header) != HEADER_SIZE or len(fds) != 3:
        raise ValueError("malformed request")
    size = int.from_bytes(header, "big")
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ValueError("truncated request")
        data += chunk
    request: dict[str, Any] = marshal.loads(data)
    # Only the command's name: its arguments may carry build args a user considers secret.
    _log(f"pid {os.getpid()}: llbgen {(request['argv'] or ['(no command)'])[0]}")
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False, buffering=1 if os.isatty(1) else -1)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)  # noqa: SIM115
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # as llbgen.cli sets it in-process
    tempfile.tempdir = None  # chosen again, from the command's TMPDIR
    os.umask(request["umask"])
    sys.argv = ["llbgen", *request["argv"]]
    return request


def _relay_signals(conn: socket.socket) -> None:
    """Raises the signals the client relays; a client that went away counts as Ctrl-C."""
    names = {value: signum for signum, value in SIGNALS.items()}
    main = threading.main_thread().ident
    assert main is not None
    while True:
        try:
            data = conn.recv(1)
        except OSError:
            data = b""
        # To the main thread itself, so that a blocking call there is interrupted.
        if not data:
            signal.pthread_kill(main, signal.SIGINT)
            return
        if data in names:
            signal.pthread_kill(main, names[data])


def _pid_file(path: Path) -> Path:
    return path.with_suffix(".pid")


def log_file(path: Path) -> Path:
    return path.with_suffix(".log")


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _answering(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def start() -> Path:
    """Starts a resident process for the current code unless one runs; returns its socket."""
    code = fingerprint()
    path = Path(socket_path(code))
    if _answering(path):
        return path
    with open(log_file(path), "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "llbgen.resident.server", str(path), code],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            env={**{k: v for k, v in os.environ.items() if k in _KEPT_ENV}, "GRPC_VERBOSITY": "NONE"},
        )  # fmt: skip
    deadline = time.monotonic() + _START_TIMEOUT
    while not _answering(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the resident llbgen did not start; see {log_file(path)}")
        time.sleep(0.05)
    return path


def stop() -> bool:
    """Stops the resident process of the current code; False if none was running."""
    path = Path(socket_path())
    try:
        pid = int(_pid_file(path).read_text())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 5
    while _answering(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def status() -> tuple[bool, Path]:
    path = Path(socket_path())
    return _answering(path), path


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    serve(Path(sys.argv[1]), sys.argv[2])

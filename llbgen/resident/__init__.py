"""The resident llbgen: a process that has imported llbgen once and forks to run each command.

Starting CPython and importing grpcio, protobuf and the graph library takes longer than a fully
cached build does on the daemon. ``llbgen resident start`` leaves a process with all of that
imported, listening on a private unix socket; ``python -m llbgen ...`` then hands its command
over (arguments, working directory, environment, umask and the terminal's file descriptors
themselves), and a fork of the resident process runs it exactly as the command would have run,
printing to the same terminal and exiting with the same status. Ctrl-C is relayed.

This module is imported by every ``python -m llbgen``: standard library only.
"""

from __future__ import annotations

import os
import stat
import sys
import zlib

#: Set to 0/off/no to always run in-process.
ENV_SWITCH = "LLBGEN_RESIDENT"
# Paths as strings: pathlib alone would add a tenth to the launcher's start-up.
_PACKAGE = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def fingerprint(package: str = _PACKAGE) -> str:
    """Identifies the code a resident process runs: the interpreter and llbgen's files.

    A resident process started before a change to llbgen would run the old code; with the
    fingerprint in the socket's name, commands after the change do not find it. A checksum, not
    a cryptographic hash: it tells versions of one user's own files apart, and importing
    :mod:`hashlib` would cost every command more time than walking the package does.
    """
    parts = [sys.executable, sys.version, package]
    for root, dirs, files in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".py", ".so")):
                st = os.stat(os.path.join(root, name))
                parts.append(f"{root}/{name}\0{st.st_mtime_ns}\0{st.st_size}")
    data = "\0".join(parts).encode()
    return f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}"


def runtime_dir() -> str:
    """A directory only this user can enter (``$XDG_RUNTIME_DIR/llbgen``, else /tmp/llbgen-UID)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = os.path.join(base, "llbgen") if base else f"/tmp/llbgen-{os.getuid()}"
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{path} must be a directory of user {os.getuid()} with mode 0700")
    return path


def socket_path(code: str | None = None) -> str:
    return os.path.join(runtime_dir(), f"resident-{code or fingerprint()}.sock")


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "").lower() not in ("0", "off", "no", "false")

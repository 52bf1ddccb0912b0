"""Reading the image definition from the client: the ``dockerfile`` local, through the bridge.

The frontend solves ``local://dockerfile`` (or the ``dockerfile`` frontend input, when the
request carries one), then walks the result with ``ReadDir`` and copies each file with
``ReadFile`` into a directory of its own, where llbgen loads the definition as usual.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from llbgen.llb.definition import marshal
from llbgen.llb.errors import UsageError
from llbgen.llb.sources import local
from llbgen.pb import gateway_pb2, ops_pb2

LOCAL_NAME = "dockerfile"
#: Never needed to load a definition, and only slow to transfer.
EXCLUDES = ("**/__pycache__", "**/*.pyc", "**/.git")

# Go os.FileMode type bits, as fsutil sends them.
_MODE_DIR = 1 << 31
_MODE_SYMLINK = 1 << 27
_MODE_TYPE = _MODE_DIR | _MODE_SYMLINK | (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19)
#: ReadFile answers in one message; larger files are read in ranges of this size.
_READ_CHUNK = 4 << 20


def local_definition(
    session_id: str, include: Sequence[str], filename: str, name: str = LOCAL_NAME
) -> ops_pb2.Definition:
    """``local://dockerfile`` as the dockerfile frontend reads it: from the client's session."""
    state = local(
        name,
        include=include,
        exclude=EXCLUDES,
        shared_key_hint=name,
        session_id=session_id,
        step_name=f"[internal] load build definition from {filename}",
    )
    return marshal(state).to_pb()


def solve_ref(bridge: Any, definition: ops_pb2.Definition) -> str:
    response = bridge.Solve(gateway_pb2.SolveRequest(Definition=definition, allowResultReturn=True))
    kind = response.result.WhichOneof("result")
    if kind == "ref":
        return str(response.result.ref.id)
    if kind == "refDeprecated":
        return str(response.result.refDeprecated)
    return str(response.ref)


def copy_tree(bridge: Any, ref: str, dest: Path) -> list[str]:
    """Copies the files of ``ref`` into ``dest``; returns their paths, relative and sorted."""
    copied: list[str] = []
    pending = [""]
    while pending:
        directory = pending.pop()
        listing = bridge.ReadDir(gateway_pb2.ReadDirRequest(Ref=ref, DirPath=directory or "/"))
        for entry in listing.entries:
            rel = str(PurePosixPath(directory, entry.path)) if directory else entry.path
            target = dest / rel
            if entry.mode & _MODE_DIR:
                target.mkdir(parents=True, exist_ok=True)
                pending.append(rel)
            elif entry.mode & _MODE_SYMLINK:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(entry.linkname, target)
                copied.append(rel)
            elif not entry.mode & _MODE_TYPE:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(_read(bridge, ref, rel, entry.size))
                target.chmod(entry.mode & 0o777)
                copied.append(rel)
    return sorted(copied)


def _read(bridge: Any, ref: str, path: str, size: int) -> bytes:
    if size <= _READ_CHUNK:
        return bytes(bridge.ReadFile(gateway_pb2.ReadFileRequest(Ref=ref, FilePath=path)).Data)
    parts: list[bytes] = []
    offset = 0
    while offset < size:
        request = gateway_pb2.ReadFileRequest(
            Ref=ref, FilePath=path, Range=gateway_pb2.FileRange(Offset=offset, Length=_READ_CHUNK)
        )
        data = bytes(bridge.ReadFile(request).Data)
        if not data:
            break
        parts.append(data)
        offset += len(data)
    return b"".join(parts)


def missing_file_error(filename: str, present: Sequence[str], from_input: bool) -> UsageError:
    where = "the dockerfile frontend input" if from_input else "the dockerfile directory (--local dockerfile=DIR)"
    shown = ", ".join(present[:10]) + (", ..." if len(present) > 10 else "")
    return UsageError(
        f"cannot find the image definition {filename!r} in {where}"
        + (f"; it holds: {shown}" if present else "; it is empty")
        + ". Name the file with --opt filename=PATH (default image.py)"
    )

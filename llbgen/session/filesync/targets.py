"""Where the daemon's exports go: the caller says, per exporter, a directory or a byte stream."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from llbgen.session.filesync.status import TransferStatus


class DirectoryTarget:
    """Where a ``local`` export goes: the files are written below ``path`` (created if needed).

    Existing files are replaced and others are kept, like ``buildctl``'s default. With
    ``delete=True`` (the exporter needs the ``mode=delete`` attribute too) entries of ``path``
    that the export does not contain are removed. A multi-platform export arrives as one transfer
    per platform, into ``linux_amd64/``, ``linux_arm64/``... subdirectories.
    """

    def __init__(self, path: str | os.PathLike[str], *, delete: bool = False) -> None:
        self.path = Path(path)
        self.delete = delete
        self.status = TransferStatus()

    def __repr__(self) -> str:
        return f"DirectoryTarget({str(self.path)!r})"


class StreamTarget:
    """Where a ``tar``, ``oci`` or ``docker`` export goes: ``open()`` is called when the daemon
    starts sending and the bytes are written to the stream it returns. The stream is closed at the
    end, unless it is standard output (or ``close=False``), which is only flushed."""

    def __init__(self, open: Callable[[], BinaryIO], *, close: bool | None = None) -> None:
        self.open = open
        self.close = close
        self.status = TransferStatus()

    def __repr__(self) -> str:
        return f"StreamTarget({self.open!r})"


ExportTarget = DirectoryTarget | StreamTarget

"""What happened to a transfer, for the caller of the build: counts and errors, filled in by the
session's threads while the build runs, and how a transfer's request stream ended."""

from __future__ import annotations

import threading
import time

import grpc


class TransferStatus:
    """What happened to the transfers of one directory or export target (thread-safe).

    ``streams`` counts transfers started, ``completed_streams`` those that ended cleanly; a
    multi-platform local export makes one transfer per platform into the same directory.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.streams = 0
        self.completed_streams = 0
        self.entries = 0  # STAT packets sent or received
        self.files = 0  # regular files whose contents were transferred (and hard links made)
        self.bytes = 0  # file contents, or stream bytes for tar/oci/docker
        self.errors: list[str] = []
        self.metadata: dict[str, str] = {}  # exporter-md-* headers (oci/docker exports)

    def __repr__(self) -> str:
        return (
            f"TransferStatus(streams={self.streams}, completed={self.completed_streams}, "
            f"entries={self.entries}, files={self.files}, bytes={self.bytes}, errors={self.errors!r})"
        )

    @property
    def completed(self) -> bool:
        """At least one transfer, all of them finished, none failed."""
        with self._lock:
            return self.streams > 0 and self.completed_streams == self.streams and not self.errors

    def _begin(self) -> None:
        with self._lock:
            self.streams += 1

    def _add(self, entries: int = 0, files: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self.entries += entries
            self.files += files
            self.bytes += nbytes

    def _complete(self) -> None:
        with self._lock:
            self.completed_streams += 1

    def _fail(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)



def was_cancelled(context: grpc.ServicerContext, settle: float = 0.1) -> bool:
    """Whether a call whose request stream just ended was cancelled rather than half-closed.

    grpcio ends the request iterator the same way in both cases, and learns about a cancellation
    a moment later; a half-closed call stays active until we answer, so wait a little to tell.
    """
    deadline = time.monotonic() + settle
    while context.is_active():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True

"""A containerd-style content store over a directory in OCI image-layout form.

Blobs are immutable and read-only once committed; a write in progress ("ingest", keyed by its
ref) lives in ``ingest/<sha256(ref)>/`` with its ``data`` and its ``ref``, ``startedat``,
``updatedat`` and ``total``, so an interrupted write can be resumed from its offset; one writer
per ref at a time; a commit checks the size and digest and moves the data into ``blobs/`` in one
step. Labels are kept in memory for the lifetime of the store object: an OCI layout has no place
for them, and the Go client keeps none.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import attrs
import grpc

from llbgen.pb import content_pb2
from llbgen.session.content.errors import ContentError, invalid, not_found
from llbgen.session.content.filters import compile_filters
from llbgen.session.content.times import format_time, parse_time, timestamp

#: Size of the ``Read`` response messages (the daemon's receive limit is 16 MiB).
READ_CHUNK = 1 << 20

_ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}


def parse_digest(text: str) -> tuple[str, str]:
    """``sha256:<hex>`` → ``("sha256", hex)``; INVALID_ARGUMENT unless it is a well-formed digest
    of an algorithm the store can verify (sha256, sha384, sha512)."""
    algorithm, sep, encoded = text.partition(":")
    if not sep:
        raise invalid(f"invalid digest {text!r}: expected ALGORITHM:HEX")
    length = _ALGORITHMS.get(algorithm)
    if length is None:
        raise invalid(f"invalid digest {text!r}: unsupported algorithm {algorithm!r}")
    if len(encoded) != length or not re.fullmatch(r"[0-9a-f]+", encoded):
        raise invalid(f"invalid digest {text!r}: expected {length} lowercase hex digits")
    return algorithm, encoded



@attrs.frozen
class StoreInfo:
    digest: str
    size: int
    created_ns: int
    updated_ns: int
    labels: Mapping[str, str] = attrs.field(factory=dict)

    def to_pb(self) -> content_pb2.Info:
        return content_pb2.Info(
            digest=self.digest,
            size=self.size,
            created_at=timestamp(self.created_ns),
            updated_at=timestamp(self.updated_ns),
            labels=dict(self.labels),
        )


@attrs.frozen
class StoreStatus:
    ref: str
    offset: int
    total: int
    started_ns: int
    updated_ns: int

    def to_pb(self) -> content_pb2.Status:
        return content_pb2.Status(
            ref=self.ref,
            offset=self.offset,
            total=self.total,
            started_at=timestamp(self.started_ns),
            updated_at=timestamp(self.updated_ns),
        )


def _hasher(algorithm: str) -> Any:
    return hashlib.new(algorithm)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OCIStore:
    """A content store over one directory in OCI image-layout form."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self._lock = threading.Lock()
        self._writing: set[str] = set()  # refs with an open writer
        self._labels: dict[str, dict[str, str]] = {}

    # paths

    def blob_path(self, digest: str) -> Path:
        algorithm, encoded = parse_digest(digest)
        return self.root / "blobs" / algorithm / encoded

    def _ingest_dir(self, ref: str) -> Path:
        return self.root / "ingest" / hashlib.sha256(ref.encode()).hexdigest()

    # committed blobs

    def info(self, digest: str) -> StoreInfo:
        path = self.blob_path(digest)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise not_found(f"content {digest}: not found") from None
        with self._lock:
            labels = dict(self._labels.get(digest, {}))
        return StoreInfo(digest, st.st_size, st.st_mtime_ns, st.st_atime_ns, labels)

    def exists(self, digest: str) -> bool:
        try:
            self.info(digest)
        except ContentError:
            return False
        return True

    def update(self, digest: str, labels: Mapping[str, str], paths: Sequence[str]) -> StoreInfo:
        """Changes a blob's labels: ``paths`` ``labels`` (all) or ``labels.KEY`` (one; an empty value
        removes it); no paths means all."""
        info = self.info(digest)
        replace_all = not paths
        changes: dict[str, str] = {}
        for path in paths:
            if path == "labels":
                replace_all = True
            elif path.startswith("labels."):
                key = path[len("labels.") :]
                changes[key] = labels.get(key, "")
            else:
                raise invalid(f"cannot update {path!r} of content {digest}: only labels are mutable")
        with self._lock:
            current = self._labels.get(digest, {})
            if replace_all:
                current = {k: v for k, v in labels.items() if v}
            else:
                current = dict(current)
            for key, value in changes.items():
                if value:
                    current[key] = value
                else:
                    current.pop(key, None)
            self._labels[digest] = current
        now = time.time_ns()
        with contextlib.suppress(OSError):
            os.utime(self.blob_path(digest), ns=(now, info.created_ns))
        return attrs.evolve(info, updated_ns=now, labels=dict(current))

    def walk(self, filters: Sequence[str] = ()) -> Iterator[StoreInfo]:
        matches = compile_filters(filters)
        blobs = self.root / "blobs"
        try:
            algorithms = sorted(os.listdir(blobs))
        except (FileNotFoundError, NotADirectoryError):
            return
        for algorithm in algorithms:
            if algorithm not in _ALGORITHMS or not (blobs / algorithm).is_dir():
                continue
            for encoded in sorted(os.listdir(blobs / algorithm)):
                digest = f"{algorithm}:{encoded}"
                try:
                    info = self.info(digest)
                except ContentError:
                    continue  # not a blob (a stray file, or deleted meanwhile)

                def field(path: Sequence[str], info: StoreInfo = info) -> str | None:
                    if not path:
                        return None
                    if path[0] == "digest":
                        return info.digest
                    if path[0] == "labels":
                        return info.labels.get(".".join(path[1:]))
                    return None

                if matches(field):
                    yield info

    def delete(self, digest: str) -> None:
        path = self.blob_path(digest)
        try:
            path.unlink()
        except FileNotFoundError:
            raise not_found(f"content {digest}: not found") from None
        with self._lock:
            self._labels.pop(digest, None)

    def open_blob(self, digest: str) -> BinaryIO:
        path = self.blob_path(digest)
        try:
            return open(path, "rb")
        except (FileNotFoundError, NotADirectoryError):
            raise not_found(f"content {digest}: not found") from None

    def read(self, digest: str, offset: int = 0, size: int = 0) -> Iterator[tuple[int, bytes]]:
        """``(offset, chunk)`` pairs of ``size`` bytes (all to the end when ``size <= 0``) from
        ``offset``; OUT_OF_RANGE past the end, as containerd's service answers."""
        with self.open_blob(digest) as f:
            total = os.fstat(f.fileno()).st_size
            offset = max(offset, 0)
            if offset > total:
                raise ContentError(grpc.StatusCode.OUT_OF_RANGE, f"read past object length {total} bytes")
            if size <= 0 or offset + size > total:
                size = total - offset
            f.seek(offset)
            while size > 0:
                chunk = f.read(min(size, READ_CHUNK))
                if not chunk:
                    raise ContentError(grpc.StatusCode.DATA_LOSS, f"content {digest} is shorter than it was")
                yield offset, chunk
                offset += len(chunk)
                size -= len(chunk)

    # ingests

    def status(self, ref: str) -> StoreStatus:
        return self._status(self._ingest_dir(ref), ref)

    def _status(self, directory: Path, ref: str | None = None) -> StoreStatus:
        try:
            st = (directory / "data").stat()
            stored_ref = (directory / "ref").read_text()
        except (FileNotFoundError, NotADirectoryError):
            raise not_found(f"ingest {ref if ref is not None else directory.name}: not found") from None
        if ref is not None and stored_ref != ref:
            raise not_found(f"ingest {ref}: not found (its directory holds {stored_ref!r})")
        try:
            started = parse_time((directory / "startedat").read_text())
            updated = parse_time((directory / "updatedat").read_text())
        except (OSError, ValueError) as exc:
            raise ContentError(grpc.StatusCode.UNKNOWN, f"ingest {stored_ref}: {exc}") from None
        try:
            total = int((directory / "total").read_text())
        except (OSError, ValueError):
            total = 0
        return StoreStatus(stored_ref, st.st_size, total, started, max(updated, st.st_mtime_ns))

    def list_statuses(self, filters: Sequence[str] = ()) -> list[StoreStatus]:
        matches = compile_filters(filters)
        try:
            names = sorted(os.listdir(self.root / "ingest"))
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for name in names:
            try:
                status = self._status(self.root / "ingest" / name)
            except ContentError:
                continue  # committed or aborted meanwhile, or not an ingest
            def field(path: Sequence[str], status: StoreStatus = status) -> str | None:
                return status.ref if list(path) == ["ref"] else None

            if matches(field):
                out.append(status)
        return out

    def abort(self, ref: str) -> None:
        directory = self._ingest_dir(ref)
        if not directory.is_dir():
            raise not_found(f"ingest ref {ref!r}: not found")
        shutil.rmtree(directory, ignore_errors=True)

    def writer(self, ref: str, total: int = 0, expected: str = "") -> Writer:
        """Starts or resumes the ingest ``ref``: ALREADY_EXISTS if ``expected`` is stored,
        UNAVAILABLE while another writer holds the ref."""
        if not ref:
            raise invalid("a write needs a ref")
        algorithm = "sha256"
        if expected:
            algorithm, _ = parse_digest(expected)
            if self.exists(expected):
                raise ContentError(grpc.StatusCode.ALREADY_EXISTS, f"content {expected}: already exists")
        with self._lock:
            if ref in self._writing:
                raise ContentError(grpc.StatusCode.UNAVAILABLE, f"ref {ref} is locked by another writer")
            self._writing.add(ref)
        try:
            return Writer(self, ref, total, algorithm)
        except BaseException:
            self._release(ref)
            raise

    def _release(self, ref: str) -> None:
        with self._lock:
            self._writing.discard(ref)

    def _set_labels(self, digest: str, labels: Mapping[str, str]) -> None:
        with self._lock:
            self._labels[digest] = {k: v for k, v in labels.items() if v}


class Writer:
    """One ingest, open for writing: data is appended at ``offset``, hashed as it arrives, and
    ``commit`` stores it as a blob. Obtained from :meth:`OCIStore.writer`; ``close`` (without a
    commit) keeps the ingest for a later resume."""

    def __init__(self, store: OCIStore, ref: str, total: int, algorithm: str) -> None:
        self.store = store
        self.ref = ref
        self.directory = store._ingest_dir(ref)
        self.algorithm = algorithm
        self._hash = _hasher(algorithm)
        self.total = total
        self.offset = 0
        self.started_ns = self.updated_ns = 0
        self._closed = False
        (store.root / "ingest").mkdir(parents=True, exist_ok=True)
        resumed = self._resume(total) if self.directory.is_dir() else False
        if not resumed:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory.mkdir()
            now = time.time_ns()
            (self.directory / "ref").write_text(ref)
            (self.directory / "startedat").write_text(format_time(now))
            (self.directory / "updatedat").write_text(format_time(now))
            if total > 0:
                (self.directory / "total").write_text(str(total))
            self.started_ns = self.updated_ns = now
            self._file: BinaryIO = open(self.directory / "data", "wb")
        else:
            self._file = open(self.directory / "data", "r+b")
            self._file.seek(self.offset)

    def _resume(self, total: int) -> bool:
        """Picks up an earlier ingest of the same ref: its data is hashed again to go on from its
        end. An ingest that does not fit (another ref, another total, damaged) starts over."""
        try:
            status = self.store._status(self.directory, self.ref)
        except ContentError:
            return False
        if total > 0 and status.total > 0 and total != status.total:
            return False
        with open(self.directory / "data", "rb") as f:
            while chunk := f.read(READ_CHUNK):
                self._hash.update(chunk)
        self.offset = status.offset
        self.total = status.total or total
        self.started_ns, self.updated_ns = status.started_ns, status.updated_ns
        return True

    def digest(self) -> str:
        return f"{self.algorithm}:{self._hash.hexdigest()}"

    def status(self) -> StoreStatus:
        return StoreStatus(self.ref, self.offset, self.total, self.started_ns, self.updated_ns)

    def truncate(self) -> None:
        """Starts the data over (a write at offset 0 after some data)."""
        self._file.seek(0)
        self._file.truncate()
        self._hash = _hasher(self.algorithm)
        self.offset = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.offset += len(data)
        self.updated_ns = time.time_ns()

    def commit(self, size: int, expected: str, labels: Mapping[str, str] | None = None) -> str:
        """Checks ``size`` (if > 0) and ``expected`` (if set) and moves the data to its blob path in
        one step. FAILED_PRECONDITION on a mismatch, ALREADY_EXISTS if the blob is already there
        (the ingest is dropped either way). Returns the digest."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            actual_size = os.fstat(self._file.fileno()).st_size
            self._file.close()
            data = self.directory / "data"
            if not data.exists():
                raise not_found(f"ingest ref {self.ref!r} was aborted")
            if size > 0 and size != actual_size:
                raise ContentError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"unexpected commit size {actual_size}, expected {size}",
                )
            digest = self.digest()
            if expected:
                algorithm, _ = parse_digest(expected)
                if algorithm != self.algorithm:  # opened without knowing the algorithm: hash again
                    hasher = _hasher(algorithm)
                    with open(data, "rb") as f:
                        while chunk := f.read(READ_CHUNK):
                            hasher.update(chunk)
                    digest = f"{algorithm}:{hasher.hexdigest()}"
                if digest != expected:
                    raise ContentError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"unexpected commit digest {digest}, expected {expected}",
                    )
            target = self.store.blob_path(digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            mode = os.stat(data).st_mode & 0o777 & ~0o333
            os.chmod(data, mode)
            try:
                # A hard link fails if the blob exists, where a rename would replace it.
                os.link(data, target)
            except FileExistsError:
                raise ContentError(grpc.StatusCode.ALREADY_EXISTS, f"content {digest}: already exists") from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                if target.exists():
                    raise ContentError(grpc.StatusCode.ALREADY_EXISTS, f"content {digest}: already exists") from None
                os.rename(data, target)
            _fsync_dir(target.parent)
            now = time.time_ns()
            with contextlib.suppress(OSError):
                os.utime(target, ns=(now, now))
            if labels:
                self.store._set_labels(digest, labels)
            self.offset = actual_size
            return digest
        finally:
            self._closed = True
            shutil.rmtree(self.directory, ignore_errors=True)
            self.store._release(self.ref)

    def close(self) -> None:
        """Ends this writer without committing; the ingest stays for a resume."""
        if self._closed:
            return
        self._closed = True
        try:
            self._file.flush()
            self._file.close()
            if self.directory.is_dir():
                (self.directory / "updatedat").write_text(format_time(self.updated_ns))
        except OSError:
            pass
        finally:
            self.store._release(self.ref)

"""Local cache directories for the daemon: the session's ``containerd.services.content.v1.Content``.

``--cache-to type=local,dest=DIR`` and ``--cache-from type=local,src=DIR`` keep BuildKit's cache in
a directory on the client, in OCI image-layout form (``oci-layout``, ``index.json``,
``blobs/<alg>/<hex>``). The daemon never touches the directory itself: the client serves it as a
containerd content store over the session, and the daemon writes the cache blobs into it (export)
or reads them from it (import) through that service. The request header
``buildkit-attachable-store-id`` says which directory: ``local:`` followed by the ``dest``/``src``
attribute exactly as it was sent in the cache options. A request without the header is
INVALID_ARGUMENT, an unknown id NOT_FOUND.

What the daemon calls (BuildKit v0.32.2, containerd's content proxy as the client):

- export: ``Write`` streams, one per blob (layers, the cache config, the cache manifest): a STAT
  with the ref, expected digest and size, then WRITE messages at increasing offsets, then COMMIT.
  A blob that is already there answers ALREADY_EXISTS, which the daemon takes as done. The
  exporter response then carries the manifest's descriptor as ``cache.manifest``, and the client
  records it in ``index.json`` under a tag (``latest`` unless ``tag=`` says otherwise).
- import: ``Info`` and ``Read`` of the manifest whose digest the client resolved from
  ``index.json`` before the solve (``digest`` attribute), then of the config and layers it names.
  A directory without a usable cache (missing, no ``index.json``, no such tag, manifest blob
  absent) is left out of the request with a warning, as buildctl does; unlike buildctl, a missing
  ``src`` directory is not created.

The store follows containerd's local store in its semantics: blobs are immutable and stored
read-only; a write in progress ("ingest", keyed by its ref) lives in ``ingest/<sha256(ref)>/`` with
its ``data`` and its ``ref``, ``startedat``, ``updatedat`` and ``total``, so an interrupted write
can be resumed from its offset; one writer per ref at a time (a second one is UNAVAILABLE, which
the daemon retries); a commit checks the size and digest and moves the data into ``blobs/`` in one
step. Labels (only settable through ``Update`` and ``COMMIT``) are kept in memory for the
lifetime of the store object: an OCI layout has no place for them, and the Go client keeps none.

``index.json`` is read and written under an exclusive ``flock`` of ``index.json.lock`` (shared for
reading), as BuildKit's client does, so llbgen and buildctl can share a directory.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import attrs
import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from llbgen.pb import content_pb2, content_pb2_grpc
from llbgen.session.core import HandlerRegistry

__all__ = [
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_REF_NAME",
    "CONTENT_METHODS",
    "ContentError",
    "ContentStores",
    "LocalCacheError",
    "LocalCaches",
    "OCIStore",
    "StoreInfo",
    "StoreStatus",
    "STORE_ID_HEADER",
    "find_in_index",
    "parse_digest",
    "parse_go_bool",
    "put_in_index",
    "read_index",
    "referenced_blobs",
    "remove_unreferenced",
]

CONTENT_SERVICE = "containerd.services.content.v1.Content"
CONTENT_METHODS = [
    f"/{CONTENT_SERVICE}/{name}"
    for name in ("Info", "Update", "List", "Delete", "Read", "Status", "ListStatuses", "Write", "Abort")
]
STORE_ID_HEADER = "buildkit-attachable-store-id"

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
LAYOUT_VERSION = "1.0.0"

#: Size of the ``Read`` response messages (the daemon's receive limit is 16 MiB).
READ_CHUNK = 1 << 20

_ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}


class ContentError(Exception):
    """A request the store refuses; ``code`` is the gRPC status the service answers with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _not_found(message: str) -> ContentError:
    return ContentError(grpc.StatusCode.NOT_FOUND, message)


def _invalid(message: str) -> ContentError:
    return ContentError(grpc.StatusCode.INVALID_ARGUMENT, message)


def parse_digest(text: str) -> tuple[str, str]:
    """``sha256:<hex>`` → ``("sha256", hex)``; INVALID_ARGUMENT unless it is a well-formed digest
    of an algorithm the store can verify (sha256, sha384, sha512)."""
    algorithm, sep, encoded = text.partition(":")
    if not sep:
        raise _invalid(f"invalid digest {text!r}: expected ALGORITHM:HEX")
    length = _ALGORITHMS.get(algorithm)
    if length is None:
        raise _invalid(f"invalid digest {text!r}: unsupported algorithm {algorithm!r}")
    if len(encoded) != length or not re.fullmatch(r"[0-9a-f]+", encoded):
        raise _invalid(f"invalid digest {text!r}: expected {length} lowercase hex digits")
    return algorithm, encoded


def parse_go_bool(text: str) -> bool | None:
    """Go's ``strconv.ParseBool`` (how BuildKit reads ``reset=``); ``None`` if it is not a bool."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


# -- time ---------------------------------------------------------------------------------------

_TIME_RE = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d\d):(\d\d))"
)


def _format_time(ns: int) -> str:
    """RFC 3339 with nanoseconds in UTC, as Go's ``time.MarshalText`` writes it."""
    seconds, rest = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if rest:
        text += "." + f"{rest:09d}".rstrip("0")
    return text + "Z"


def _parse_time(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time (Go's ``time.UnmarshalText``)."""
    match = _TIME_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if match.group(9):
        offset = int(match.group(10)) * 3600 + int(match.group(11)) * 60
        seconds -= offset if match.group(9) == "+" else -offset
    fraction = int((match.group(7) or "0").ljust(9, "0"))
    return seconds * 1_000_000_000 + fraction


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(ns)
    return ts


# -- filters ------------------------------------------------------------------------------------


@attrs.frozen
class _Selector:
    path: tuple[str, ...]
    operator: str  # "" (present), "==", "!=", "~="
    value: str
    pattern: re.Pattern[str] | None = None

    def match(self, field: Callable[[Sequence[str]], str | None]) -> bool:
        value = field(self.path)
        if self.operator == "":
            return value is not None
        if self.operator == "==":
            return value is not None and value == self.value
        if self.operator == "!=":
            return value != self.value
        assert self.pattern is not None
        return self.pattern.search(value or "") is not None


_QUOTES = {'"', "/", "|"}
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


class _FilterParser:
    """containerd's filter syntax: ``selector ("," selector)*``, a selector being
    ``fieldpath [("==" | "!=" | "~=") value]``; fields and values may be quoted with ``"``, ``/``
    or ``|`` (the last two are handy for regular expressions)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, what: str) -> ContentError:
        return _invalid(f"invalid filter {self.text!r} at position {self.pos}: {what}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def quoted(self) -> str:
        quote = self.text[self.pos]
        self.pos += 1
        out: list[str] = []
        while True:
            ch = self.peek()
            if not ch:
                raise self.error("quoted literal not terminated")
            self.pos += 1
            if ch == quote:
                return "".join(out)
            if ch == "\\":
                nxt = self.peek()
                if not nxt:
                    raise self.error("quoted literal not terminated")
                self.pos += 1
                if nxt == quote:
                    out.append(nxt)
                elif quote == '"' and nxt in _ESCAPES:
                    out.append(_ESCAPES[nxt])
                else:
                    out.append("\\" + nxt)  # a regular expression's own escape
            else:
                out.append(ch)

    def field(self) -> str:
        if self.peek() in _QUOTES and self.peek():
            return self.quoted()
        match = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(self.text, self.pos)
        if match is None:
            raise self.error("expected a field name")
        self.pos = match.end()
        return match.group()

    def parse(self) -> list[_Selector]:
        selectors = []
        while True:
            self.skip_space()
            path = [self.field()]
            while self.peek() == ".":
                self.pos += 1
                path.append(self.field())
            self.skip_space()
            operator, value, pattern = "", "", None
            if self.text.startswith(("==", "!=", "~="), self.pos):
                operator = self.text[self.pos : self.pos + 2]
                self.pos += 2
                self.skip_space()
                if self.peek() in _QUOTES and self.peek():
                    value = self.quoted()
                else:
                    match = re.compile(r"[^\s,]+").match(self.text, self.pos)
                    if match is None:
                        raise self.error("expected a value")
                    self.pos = match.end()
                    value = match.group()
                if operator == "~=":
                    try:
                        pattern = re.compile(value)
                    except re.error as exc:
                        raise self.error(f"bad regular expression {value!r}: {exc}") from None
            selectors.append(_Selector(tuple(path), operator, value, pattern))
            self.skip_space()
            if not self.peek():
                return selectors
            if self.peek() != ",":
                raise self.error(f"unexpected {self.peek()!r}")
            self.pos += 1


def _compile_filters(filters: Iterable[str]) -> Callable[[Callable[[Sequence[str]], str | None]], bool]:
    """Any of the filters matches (each one: all of its selectors); no filters match everything."""
    texts = list(filters)
    if not texts or "" in texts:  # an empty filter string matches everything
        return lambda field: True
    parsed = [_FilterParser(text).parse() for text in texts]

    def matches(field: Callable[[Sequence[str]], str | None]) -> bool:
        return any(all(s.match(field) for s in selectors) for selectors in parsed)

    return matches


# -- the store ----------------------------------------------------------------------------------


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
            created_at=_timestamp(self.created_ns),
            updated_at=_timestamp(self.updated_ns),
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
            started_at=_timestamp(self.started_ns),
            updated_at=_timestamp(self.updated_ns),
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
            raise _not_found(f"content {digest}: not found") from None
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
                raise _invalid(f"cannot update {path!r} of content {digest}: only labels are mutable")
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
        matches = _compile_filters(filters)
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
            raise _not_found(f"content {digest}: not found") from None
        with self._lock:
            self._labels.pop(digest, None)

    def open_blob(self, digest: str) -> BinaryIO:
        path = self.blob_path(digest)
        try:
            return open(path, "rb")
        except (FileNotFoundError, NotADirectoryError):
            raise _not_found(f"content {digest}: not found") from None

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
            raise _not_found(f"ingest {ref if ref is not None else directory.name}: not found") from None
        if ref is not None and stored_ref != ref:
            raise _not_found(f"ingest {ref}: not found (its directory holds {stored_ref!r})")
        try:
            started = _parse_time((directory / "startedat").read_text())
            updated = _parse_time((directory / "updatedat").read_text())
        except (OSError, ValueError) as exc:
            raise ContentError(grpc.StatusCode.UNKNOWN, f"ingest {stored_ref}: {exc}") from None
        try:
            total = int((directory / "total").read_text())
        except (OSError, ValueError):
            total = 0
        return StoreStatus(stored_ref, st.st_size, total, started, max(updated, st.st_mtime_ns))

    def list_statuses(self, filters: Sequence[str] = ()) -> list[StoreStatus]:
        matches = _compile_filters(filters)
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
            raise _not_found(f"ingest ref {ref!r}: not found")
        shutil.rmtree(directory, ignore_errors=True)

    def writer(self, ref: str, total: int = 0, expected: str = "") -> Writer:
        """Starts or resumes the ingest ``ref``: ALREADY_EXISTS if ``expected`` is stored,
        UNAVAILABLE while another writer holds the ref."""
        if not ref:
            raise _invalid("a write needs a ref")
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
            (self.directory / "startedat").write_text(_format_time(now))
            (self.directory / "updatedat").write_text(_format_time(now))
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
                raise _not_found(f"ingest ref {self.ref!r} was aborted")
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
                (self.directory / "updatedat").write_text(_format_time(self.updated_ns))
        except OSError:
            pass
        finally:
            self.store._release(self.ref)


# -- index.json ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _index_lock(directory: Path, exclusive: bool, timeout: float = 10.0) -> Iterator[None]:
    """``flock`` of ``index.json.lock``, removed afterwards, as BuildKit's ``ociindex`` does. A
    reader in a directory it cannot write to goes on without the lock."""
    lock_path = directory / "index.json.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if not exclusive and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            yield
            return
        raise
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OSError(errno.EWOULDBLOCK, f"could not lock {lock_path}: in use") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _load_index(directory: Path) -> dict[str, Any]:
    path = directory / "index.json"
    text = path.read_bytes()
    try:
        index = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(index, dict) or not isinstance(index.get("manifests", []), list):
        raise ValueError(f"{path} is not an OCI image index")
    return index


def read_index(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The directory's ``index.json``. Raises OSError (missing, unreadable) or ValueError."""
    root = Path(directory)
    with _index_lock(root, exclusive=False):
        return _load_index(root)


def find_in_index(index: Mapping[str, Any], tag: str) -> dict[str, Any] | None:
    """The descriptor named ``tag``: by ``io.containerd.image.name`` first, then by
    ``org.opencontainers.image.ref.name``, as BuildKit's client looks it up."""
    manifests = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
    for key in (ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME):
        for manifest in manifests:
            annotations = manifest.get("annotations") or {}
            if annotations.get(key) == tag:
                return manifest
    return None


def put_in_index(directory: str | os.PathLike[str], descriptor: Mapping[str, Any], tag: str) -> None:
    """Records ``descriptor`` in ``index.json`` under ``tag`` (annotation
    ``org.opencontainers.image.ref.name``), replacing the entry that had that tag and keeping every
    other one; writes ``oci-layout`` too. The new index replaces the old one atomically."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    with _index_lock(root, exclusive=True):
        (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": LAYOUT_VERSION}, separators=(",", ":")))
        try:
            index = _load_index(root)
        except FileNotFoundError:
            index = {}
        index.setdefault("schemaVersion", 2)
        if not index.get("mediaType"):
            index["mediaType"] = MEDIA_TYPE_INDEX
        entry = dict(descriptor)
        entry["annotations"] = {**(descriptor.get("annotations") or {}), ANNOTATION_REF_NAME: tag}
        kept = []
        for manifest in index.get("manifests") or []:
            annotations = (manifest.get("annotations") or {}) if isinstance(manifest, dict) else {}
            if annotations.get(ANNOTATION_REF_NAME) == tag and not annotations.get(ANNOTATION_IMAGE_NAME):
                continue
            kept.append(manifest)
        kept.append(entry)
        index["manifests"] = kept
        # Go's order for the fields it knows, the others after them.
        ordered: dict[str, Any] = {k: index[k] for k in ("schemaVersion", "mediaType", "artifactType", "manifests") if k in index}
        ordered.update((k, v) for k, v in index.items() if k not in ordered)
        temporary = root / f".index.json.{os.getpid()}.{threading.get_ident()}"
        temporary.write_text(json.dumps(ordered, separators=(",", ":")))
        os.replace(temporary, root / "index.json")


_MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}
_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}


def referenced_blobs(store: OCIStore, index: Mapping[str, Any]) -> set[str]:
    """Digests reachable from the index: its manifests and, through them, configs, layers and
    the manifests of nested indexes. A referenced blob that is missing is skipped."""
    seen: set[str] = set()
    pending = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
    while pending:
        descriptor = pending.pop()
        digest = descriptor.get("digest")
        if not isinstance(digest, str) or digest in seen:
            continue
        seen.add(digest)
        media_type = descriptor.get("mediaType")
        if media_type not in _MANIFEST_TYPES | _INDEX_TYPES:
            continue
        try:
            with store.open_blob(digest) as f:
                document = json.load(f)
        except (ContentError, OSError, ValueError):
            continue
        if not isinstance(document, dict):
            continue
        children: list[Any] = []
        if media_type in _MANIFEST_TYPES:
            children = [document.get("config"), *(document.get("layers") or [])]
        else:
            children = list(document.get("manifests") or [])
        pending.extend(c for c in children if isinstance(c, dict))
    return seen


def remove_unreferenced(store: OCIStore) -> list[str]:
    """Deletes the blobs that nothing in ``index.json`` reaches (``reset=true``); returns them."""
    with _index_lock(store.root, exclusive=False):
        index = _load_index(store.root)
    keep = referenced_blobs(store, index)
    removed = []
    for info in list(store.walk()):
        if info.digest not in keep:
            with contextlib.suppress(ContentError, OSError):
                store.delete(info.digest)
                removed.append(info.digest)
    return removed


# -- the session service ------------------------------------------------------------------------


class ContentStores:
    """The session's content service over ``stores`` (store id → store, ids ``local:<DIR>``)."""

    def __init__(self, stores: Mapping[str, OCIStore]) -> None:
        self.stores = dict(stores)

    def register(self, server: HandlerRegistry) -> list[str]:
        content_pb2_grpc.add_ContentServicer_to_server(_ContentServicer(self), server)  # type: ignore[no-untyped-call]
        return list(CONTENT_METHODS)

    def choose(self, metadata: Iterable[tuple[str, str | bytes]]) -> OCIStore:
        for key, value in metadata:
            if key.lower() == STORE_ID_HEADER and isinstance(value, str):
                store = self.stores.get(value)
                if store is None:
                    raise _not_found(f"unknown content store {value}")
                return store
        raise _invalid(f"request lacks metadata {STORE_ID_HEADER!r}")


def _abort(context: grpc.ServicerContext, exc: ContentError) -> NoReturn:
    context.abort(exc.code, exc.message)
    raise AssertionError("unreachable")  # context.abort raises


def _os_error(exc: OSError) -> ContentError:
    return ContentError(grpc.StatusCode.UNKNOWN, f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))


class _ContentServicer(content_pb2_grpc.ContentServicer):
    def __init__(self, service: ContentStores) -> None:
        self._service = service

    def _store(self, context: grpc.ServicerContext) -> OCIStore:
        try:
            return self._service.choose(context.invocation_metadata())
        except ContentError as exc:
            _abort(context, exc)

    def Info(self, request: content_pb2.InfoRequest, context: grpc.ServicerContext) -> content_pb2.InfoResponse:
        store = self._store(context)
        try:
            return content_pb2.InfoResponse(info=store.info(request.digest).to_pb())
        except ContentError as exc:
            _abort(context, exc)
        except OSError as exc:
            _abort(context, _os_error(exc))

    def Update(self, request: content_pb2.UpdateRequest, context: grpc.ServicerContext) -> content_pb2.UpdateResponse:
        store = self._store(context)
        try:
            info = store.update(request.info.digest, dict(request.info.labels), list(request.update_mask.paths))
            return content_pb2.UpdateResponse(info=info.to_pb())
        except ContentError as exc:
            _abort(context, exc)
        except OSError as exc:
            _abort(context, _os_error(exc))

    def List(
        self, request: content_pb2.ListContentRequest, context: grpc.ServicerContext
    ) -> Iterator[content_pb2.ListContentResponse]:
        store = self._store(context)
        try:
            block: list[content_pb2.Info] = []
            for info in store.walk(list(request.filters)):
                block.append(info.to_pb())
                if len(block) >= 100:
                    yield content_pb2.ListContentResponse(info=block)
                    block = []
            if block:
                yield content_pb2.ListContentResponse(info=block)
        except ContentError as exc:
            _abort(context, exc)
        except OSError as exc:
            _abort(context, _os_error(exc))

    def Delete(self, request: content_pb2.DeleteContentRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        store = self._store(context)
        try:
            store.delete(request.digest)
        except ContentError as exc:
            _abort(context, exc)
        except OSError as exc:
            _abort(context, _os_error(exc))
        return empty_pb2.Empty()

    def Read(
        self, request: content_pb2.ReadContentRequest, context: grpc.ServicerContext
    ) -> Iterator[content_pb2.ReadContentResponse]:
        store = self._store(context)
        try:
            for offset, data in store.read(request.digest, request.offset, request.size):
                yield content_pb2.ReadContentResponse(offset=offset, data=data)
        except ContentError as exc:
            _abort(context, exc)
        except OSError as exc:
            _abort(context, _os_error(exc))

    def Status(self, request: content_pb2.StatusRequest, context: grpc.ServicerContext) -> content_pb2.StatusResponse:
        store = self._store(context)
        try:
            return content_pb2.StatusResponse(status=store.status(request.ref).to_pb())
        except ContentError as exc:
            _abort(context, exc)
        except OSError as exc:
            _abort(context, _os_error(exc))

    def ListStatuses(
        self, request: content_pb2.ListStatusesRequest, context: grpc.ServicerContext
    ) -> content_pb2.ListStatusesResponse:
        store = self._store(context)
        try:
            statuses = store.list_statuses(list(request.filters))
        except ContentError as exc:
            _abort(context, exc)
        except OSError as exc:
            _abort(context, _os_error(exc))
        return content_pb2.ListStatusesResponse(statuses=[s.to_pb() for s in statuses])

    def Abort(self, request: content_pb2.AbortRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        store = self._store(context)
        try:
            store.abort(request.ref)
        except ContentError as exc:
            _abort(context, exc)
        except OSError as exc:
            _abort(context, _os_error(exc))
        return empty_pb2.Empty()

    def Write(
        self, request_iterator: Iterator[content_pb2.WriteContentRequest], context: grpc.ServicerContext
    ) -> Iterator[content_pb2.WriteContentResponse]:
        store = self._store(context)
        try:
            yield from _write(store, request_iterator)
        except ContentError as exc:
            _abort(context, exc)
        except OSError as exc:
            _abort(context, _os_error(exc))


def _write(
    store: OCIStore, requests: Iterator[content_pb2.WriteContentRequest]
) -> Iterator[content_pb2.WriteContentResponse]:
    """One ``Write`` stream: the first message names the ref (and may give the expected total and
    digest); every message is answered; COMMIT ends the stream."""
    request = next(requests, None)
    if request is None:
        return
    if not request.ref:
        raise _invalid("first message must have a reference")
    total = request.total
    expected = request.expected
    writer = store.writer(request.ref, total, expected)
    try:
        while True:
            action = request.action
            if request.expected:
                expected = request.expected
                if store.exists(expected):
                    writer.close()
                    with contextlib.suppress(ContentError):
                        store.abort(writer.ref)
                    raise ContentError(
                        grpc.StatusCode.ALREADY_EXISTS, f"blob with expected digest {expected} exists"
                    )
            if request.total > 0:
                total = request.total
            response = content_pb2.WriteContentResponse(action=action)
            if action == content_pb2.STAT:
                status = writer.status()
                response.offset = status.offset
                response.total = total or status.total
                response.digest = writer.digest()
                response.started_at.CopyFrom(_timestamp(status.started_ns))
                response.updated_at.CopyFrom(_timestamp(status.updated_ns))
            elif action in (content_pb2.WRITE, content_pb2.COMMIT):
                if request.offset > 0 and request.offset != writer.offset:
                    raise ContentError(
                        grpc.StatusCode.OUT_OF_RANGE,
                        f"write @{request.offset} must occur at current offset {writer.offset}",
                    )
                if request.offset == 0 and writer.offset > 0:
                    writer.truncate()
                if request.data:
                    writer.write(request.data)
                if action == content_pb2.COMMIT:
                    digest = writer.commit(total, expected, dict(request.labels))
                    status = writer.status()
                    response.digest = digest
                    response.total = total
                    response.started_at.CopyFrom(_timestamp(status.started_ns))
                    response.updated_at.CopyFrom(_timestamp(status.updated_ns))
                else:
                    response.digest = writer.digest()
                response.offset = writer.offset
            else:
                raise _invalid(f"unknown write action {action}")
            yield response
            if action == content_pb2.COMMIT:
                return
            request = next(requests, None)
            if request is None:
                return
    finally:
        writer.close()


# -- the client's side of local cache directories -----------------------------------------------


class LocalCacheError(Exception):
    """A local cache directory cannot be used or updated; the message says which and why."""


@attrs.frozen
class _Export:
    dest: str
    store: OCIStore
    tag: str
    reset: bool


class LocalCaches:
    """The local cache directories of one build, handled as BuildKit's client does.

    Before the solve: :meth:`add_export` for each ``--cache-to type=local`` (creates the directory),
    then :meth:`add_import` for each ``--cache-from type=local`` (resolves ``tag``, default
    ``latest``, to the ``digest`` attribute through ``index.json``; a directory without a usable
    cache is skipped with a warning, not an error). :meth:`service` serves the directories during
    the build. After a successful solve, :meth:`finish` records the exported cache manifest in each
    export directory's ``index.json`` (and, with ``reset=true``, deletes the blobs that nothing
    references any more).
    """

    def __init__(self) -> None:
        self.stores: dict[str, OCIStore] = {}  # store id -> store
        self._by_path: dict[str, OCIStore] = {}
        self._exports: list[_Export] = []
        self.warnings: list[str] = []

    def _store(self, directory: str) -> OCIStore:
        key = os.path.realpath(directory)
        store = self._by_path.get(key)
        if store is None:
            store = self._by_path[key] = OCIStore(directory)
        self.stores["local:" + directory] = store
        return store

    def add_export(self, attributes: Mapping[str, str]) -> None:
        dest = attributes.get("dest", "")
        if not dest:
            raise LocalCacheError("local cache export needs dest=DIR")
        try:
            os.makedirs(dest, 0o755, exist_ok=True)
        except OSError as exc:
            raise LocalCacheError(f"local cache export to {dest}: cannot create the directory: {exc.strerror}") from None
        reset = parse_go_bool(attributes.get("reset", "false"))
        if reset is None:
            raise LocalCacheError(f"local cache export to {dest}: reset={attributes['reset']!r} is not a boolean")
        tag = attributes.get("tag", "latest")
        if not tag:
            raise LocalCacheError(f"local cache export to {dest}: tag= must not be empty")
        self._exports.append(_Export(dest, self._store(dest), tag, reset))

    def add_import(self, attributes: Mapping[str, str]) -> dict[str, str] | None:
        """The attributes to send for this import (with ``digest``), or ``None`` when it is skipped
        (the reason is added to :attr:`warnings`)."""
        src = attributes.get("src", "")
        if not src:
            raise LocalCacheError("local cache import needs src=DIR")
        out = dict(attributes)

        def skip(reason: str) -> None:
            self.warnings.append(f"local cache import at {src} skipped: {reason}")

        if not os.path.isdir(src):
            skip(f"{src} is not a directory" if os.path.exists(src) else f"{src} does not exist")
            return None
        digest = out.get("digest", "")
        if not digest:
            tag = out.get("tag", "latest")
            if not tag:
                raise LocalCacheError(
                    f"local cache import at {src} needs either an explicit digest= or a tag= in its index.json"
                )
            try:
                index = read_index(src)
            except OSError as exc:
                skip(f"could not read {os.path.join(src, 'index.json')}: {exc.strerror or exc}")
                return None
            except ValueError as exc:
                skip(str(exc))
                return None
            descriptor = find_in_index(index, tag)
            if descriptor is None or not isinstance(descriptor.get("digest"), str):
                skip(f"no digest found for tag {tag}")
                return None
            digest = out["digest"] = descriptor["digest"]
        store = OCIStore(src)
        try:
            store.info(digest)
        except ContentError as exc:
            skip(f"digest {digest} unavailable: {exc.message}")
            return None
        self._store(src)
        return out

    def service(self) -> ContentStores | None:
        return ContentStores(self.stores) if self.stores else None

    def finish(self, exporter_response: Mapping[str, str]) -> None:
        """Tags the exported cache manifest (``cache.manifest`` in the exporter response) in the
        export directories; problems that leave a directory untagged become :attr:`warnings`."""
        if not self._exports:
            return
        text = exporter_response.get("cache.manifest", "")
        if not text:
            for export in self._exports:
                self.warnings.append(
                    f"local cache export to {export.dest}: the daemon reported no cache manifest; "
                    "index.json was not updated"
                )
            return
        try:
            descriptor = json.loads(text)
        except ValueError as exc:
            raise LocalCacheError(f"the daemon's cache.manifest is not JSON: {exc}") from None
        if not isinstance(descriptor, dict) or not isinstance(descriptor.get("digest"), str):
            raise LocalCacheError(f"the daemon's cache.manifest is not a descriptor: {text[:200]}")
        for export in self._exports:
            if not export.store.exists(descriptor["digest"]):
                # With several cache exporters the daemon reports one manifest for all of them.
                self.warnings.append(
                    f"local cache export to {export.dest}: the cache manifest {descriptor['digest']} is "
                    "not in the directory; index.json was not updated"
                )
                continue
            try:
                put_in_index(export.store.root, descriptor, export.tag)
            except (OSError, ValueError) as exc:
                raise LocalCacheError(f"local cache export to {export.dest}: updating index.json: {_reason(exc)}") from None
            if export.reset:
                try:
                    remove_unreferenced(export.store)
                except (OSError, ValueError) as exc:
                    self.warnings.append(f"local cache export to {export.dest}: reset failed: {_reason(exc)}")


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)

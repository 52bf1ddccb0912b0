"""A layout's ``index.json``: which manifests are tagged, read and written under BuildKit's lock.

``index.json`` is read and written under an exclusive ``flock`` of ``index.json.lock`` (shared for
reading), as BuildKit's client does, so llbgen and buildctl can share a directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from llbgen.session.content.errors import ContentError
from llbgen.session.content.store import OCIStore

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
LAYOUT_VERSION = "1.0.0"


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

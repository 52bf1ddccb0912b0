"""``--cache-to``/``--cache-from type=local``: the client's side of local cache directories,
before the solve (which directories, which manifest to import) and after it (tagging the export).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import attrs

from llbgen.session.content.errors import ContentError
from llbgen.session.content.index import find_in_index, put_in_index, read_index, remove_unreferenced
from llbgen.session.content.service import ContentStores
from llbgen.session.content.store import OCIStore


def parse_go_bool(text: str) -> bool | None:
    """Go's ``strconv.ParseBool`` (how BuildKit reads ``reset=``); ``None`` if it is not a bool."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None



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

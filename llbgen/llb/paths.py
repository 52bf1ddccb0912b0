"""Paths inside a build's filesystems, joined and cleaned as Go's ``path`` package does.

Paths end up in op bytes, so ``a/../b`` or a trailing slash must come out exactly as BuildKit's Go
client writes them, or every digest after them differs.
"""

from __future__ import annotations

import posixpath


def clean(path: str) -> str:
    """Go's ``path.Clean``: like posixpath.normpath, but ``//x`` is ``/x``."""
    out = posixpath.normpath(path)
    return "/" + out.lstrip("/") if out.startswith("//") else out


def join(*parts: str) -> str:
    """Go's ``path.Join``: the non-empty parts joined with ``/`` and cleaned ("" if all are empty)."""
    kept = [p for p in parts if p]
    return clean("/".join(kept)) if kept else ""

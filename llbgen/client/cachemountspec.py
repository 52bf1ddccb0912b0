"""``--cache-mounts-to`` / ``--cache-mounts-from``: where a build's cache mounts travel to and from.

``REF[,ids=ID[,ID...]][,max-size=SIZE]``: REF is an image reference in a registry; ``ids`` the
cache mount ids to transfer (all the build uses by default; shell-style patterns such as
``llvm-ccache-*`` allowed); ``max-size`` (export only) refuses to push a cache mount larger than
SIZE (``500M``, ``8G``: binary units). The commas of ``ids`` follow buildx's style of list values:
every item after ``ids=`` that has no ``=`` is one more id.

Only parsing here (no client imports): every command's flags are parsed before anything builds.
"""

from __future__ import annotations

import fnmatch
import re

import attrs

from llbgen.llb import reference
from llbgen.llb.errors import UsageError
from llbgen.llb.platform import Platform

_SIZE = re.compile(r"^([0-9]+)([KMGT]?)(?:i?B)?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@attrs.frozen
class CacheMountsRef:
    """An image holding cache mounts (one layer per id, each id's files under ``/<dir_name(id)>/``)."""

    ref: str
    #: The ids (or patterns) to transfer; empty: every cache mount of the build.
    ids: tuple[str, ...] = ()
    #: Bytes; 0 for no limit.
    max_size: int = 0

    @classmethod
    def parse(cls, text: str, flag: str) -> CacheMountsRef:
        ref, _, rest = text.partition(",")
        if not ref or "=" in ref:
            raise UsageError(f"{flag} {text!r}: expected REF[,ids=ID,...][,max-size=SIZE], e.g. registry/app-cache:main")
        try:
            parsed = reference.parse(ref)
        except ValueError as exc:
            raise UsageError(f"{flag}: {exc}") from None
        if parsed.digest and flag == "--cache-mounts-to":
            raise UsageError(f"{flag} {ref}: an image is pushed under a tag, not a digest (e.g. registry/app-cache:main)")
        ids: list[str] = []
        max_size = 0
        key = ""
        for item in rest.split(",") if rest else []:
            name, sep, value = item.partition("=")
            if not sep:
                if key != "ids" or not item:
                    raise UsageError(f"{flag} {text!r}: {item!r} is not KEY=VALUE (keys: ids, max-size)")
                ids.append(item)
                continue
            key = name
            if name == "ids":
                if not value:
                    raise UsageError(f"{flag} {text!r}: ids= needs at least one cache mount id")
                ids.append(value)
            elif name == "max-size" and flag != "--cache-mounts-from":
                max_size = _size(value, flag)
            else:
                keys = "ids" if flag == "--cache-mounts-from" else "ids, max-size"
                raise UsageError(f"{flag} {text!r}: unknown key {name!r} (keys: {keys})")
        return cls(ref, tuple(ids), max_size)

    def wants(self, id: str) -> bool:
        return not self.ids or any(fnmatch.fnmatchcase(id, pattern) for pattern in self.ids)

    def for_node(self, platform: Platform) -> CacheMountsRef:
        """This reference for one node of a multi-node build: the tag suffixed with its platform.

        Each node has its own cache mounts (of its own build platform), so each keeps its own
        image; the same node's platform finds it again on the next build.
        """
        parsed = reference.parse(self.ref)
        if parsed.digest:
            raise UsageError(
                f"cache mounts {self.ref}: a build on several nodes needs a tag (each node reads and writes <tag>-<platform>), not a digest"
            )
        tag = f"{parsed.tag or 'latest'}-{platform.id.replace('_', '-')}"
        return attrs.evolve(self, ref=f"{self.ref.rsplit(':', 1)[0] if parsed.tag else self.ref}:{tag}")


def _size(value: str, flag: str) -> int:
    match = _SIZE.match(value)
    if not match:
        raise UsageError(f"{flag}: max-size={value!r} is not a size such as 500M or 8G")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def dir_name(id: str) -> str:
    """The directory of cache mount ``id`` in the image: ids may hold ``/`` (Dockerfile's default
    id is the mount's target), so everything but letters, digits, ``-`` and ``_`` is %-escaped."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "".join(f"%{b:02X}" for b in c.encode()) for c in id)

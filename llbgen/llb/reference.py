"""Docker image references, normalised as BuildKit's client does before they enter the LLB.

``debian`` becomes ``docker.io/library/debian:latest``; a reference with a digest keeps it. The
identifier of an image source is part of its digest, so this must agree with Go's
``reference.ParseNormalizedNamed`` + ``TagNameOnly``.
"""

from __future__ import annotations

import re

import attrs

_DEFAULT_DOMAIN = "docker.io"
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_DOMAIN = re.compile(r"^(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$")


@attrs.frozen
class Reference:
    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse(ref: str) -> Reference:
    """Parses and normalises ``ref``; raises ValueError saying what is wrong with it."""
    rest, _, digest = ref.partition("@")
    if digest and not _DIGEST.match(digest):
        raise ValueError(f"invalid image reference {ref!r}: bad digest {digest!r}")
    name, tag = rest, ""
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        name, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.match(tag):
            raise ValueError(f"invalid image reference {ref!r}: bad tag {tag!r}")
    first, slash, remainder = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, remainder
        if not _DOMAIN.match(domain):
            raise ValueError(f"invalid image reference {ref!r}: bad registry {domain!r}")
    else:
        domain, path = _DEFAULT_DOMAIN, name
    if domain == "index.docker.io":
        domain = _DEFAULT_DOMAIN
    if domain == _DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    if not path or not all(_COMPONENT.match(c) for c in path.split("/")):
        raise ValueError(
            f"invalid image reference {ref!r}: repository names are lowercase letters, digits and "
            "separators (. _ - /)"
        )
    return Reference(domain, path, tag, digest)


def normalize(ref: str) -> str:
    """The reference as the LLB carries it: with domain, and ``:latest`` when neither tag nor digest."""
    parsed = parse(ref)
    if not parsed.tag and not parsed.digest:
        parsed = attrs.evolve(parsed, tag="latest")
    return str(parsed)

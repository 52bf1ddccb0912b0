"""OCI platforms (``os/arch[/variant]``), normalised the way containerd and BuildKit do."""

from __future__ import annotations

import platform as _host
import re

import attrs

from llbgen.llb import wire

_COMPONENT = re.compile(r"^[A-Za-z0-9_.-]+$")
_OS = re.compile(r"^[A-Za-z0-9_-]+$")


def _normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    """containerd's ``normalizeArch``: one spelling per architecture and variant."""
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        if variant in ("8", "v8", "v8.0"):
            variant = ""
        elif variant in ("9", "9.0", "v9.0"):
            variant = "v9"
        return "arm64", variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
    return arch, variant


@attrs.frozen(order=True)
class Platform:
    """Where a step runs or what a result is for, e.g. ``Platform.parse("linux/arm64")``."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parses ``os/arch[/variant]`` and normalises it, as ``platforms.Normalize(platforms.Parse())``.

        Raises ValueError with a message meant for users.
        """
        parts = text.strip().split("/")
        if (
            len(parts) not in (2, 3)
            or not _OS.match(parts[0])
            or not all(_COMPONENT.match(p) for p in parts[1:])
        ):
            raise ValueError(
                f"invalid platform {text!r}: expected os/arch[/variant], e.g. linux/amd64 or linux/arm64"
            )
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "").normalized()

    @classmethod
    def host(cls) -> Platform:
        return cls("linux", _host.machine()).normalized()

    def normalized(self) -> Platform:
        """containerd's ``platforms.Normalize`` (``macos`` is ``darwin``, ``aarch64`` ``arm64``...)."""
        os_name = self.os.lower()
        arch, variant = _normalize_arch(self.architecture, self.variant)
        return Platform("darwin" if os_name == "macos" else os_name, arch, variant)

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base

    @property
    def id(self) -> str:
        """The key BuildKit uses for per-platform results and local export directories."""
        return str(self).replace("/", "_")

    def to_json(self) -> dict[str, str]:
        """The OCI image-spec JSON shape (``architecture``, ``os``, ``variant``)."""
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def encode(self) -> bytes:
        """``pb.Platform``: Architecture = 1, OS = 2, Variant = 3."""
        return (
            wire.str_field(1, self.architecture)
            + wire.str_field(2, self.os)
            + wire.str_field(3, self.variant)
        )

"""OCI platforms (``os/arch[/variant]``), normalised the way containerd and BuildKit do."""

from __future__ import annotations

import platform as _host

import attrs

from llbgen.llb import wire

# Spellings that mean the same platform, as containerd's platforms.Normalize maps them.
_ARCH_ALIASES = {
    "x86_64": ("amd64", ""),
    "x86-64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "aarch64": ("arm64", ""),
    "arm64": ("arm64", ""),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
}


@attrs.frozen(order=True)
class Platform:
    """Where a step runs or what a result is for, e.g. ``Platform.parse("linux/arm64")``."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parses ``os/arch[/variant]``; raises ValueError with a message meant for users."""
        parts = text.strip().lower().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(
                f"invalid platform {text!r}: expected os/arch[/variant], e.g. linux/amd64 or linux/arm64"
            )
        os_name, arch = parts[0], parts[1]
        variant = parts[2] if len(parts) == 3 else ""
        return cls(os_name, arch, variant).normalized()

    @classmethod
    def host(cls) -> Platform:
        return cls("linux", _host.machine().lower()).normalized()

    def normalized(self) -> Platform:
        arch, variant = _ARCH_ALIASES.get(self.architecture, (self.architecture, self.variant))
        if self.variant:
            variant = self.variant
        if arch == "arm64" and variant == "v8":
            variant = ""
        elif arch == "arm" and not variant:
            variant = "v7"
        return Platform(self.os, arch, variant)

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

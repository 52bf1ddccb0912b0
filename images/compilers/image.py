"""Debian trixie build toolchain, with a cross compiler and multiarch libraries for the other arch.

linux/amd64: native x86_64 gcc/g++ plus aarch64-linux-gnu-gcc/g++ and the :arm64 development
packages; linux/arm64 (built under emulation, a native arm64 toolchain) mirrors it: native aarch64
plus x86_64-linux-gnu-gcc/g++ and the :amd64 development packages. Other images use it through
sources/debian.py's compilers(ctx), which also takes a published image (--arg COMPILERS=REF@sha256:...).
"""

from __future__ import annotations

import types

import llbgen

PLATFORMS = ("linux/amd64", "linux/arm64")
# Installs Debian packages over the network: the images built on it need none (llbgen lint).
SYSTEM_PACKAGES = True

NATIVE = [
    "gcc", "g++", "make", "cmake", "ninja-build", "bison", "flex", "pkg-config", "python3",
    "libelf-dev", "zlib1g-dev", "libzstd-dev",
    # unpacking source tarballs (.xz, .bz2) and working on binaries
    "xz-utils", "bzip2", "binutils", "file",
]  # fmt: skip
# The development libraries the cross builds link against, from the other architecture.
MULTIARCH_DEV = ["libelf-dev", "zlib1g-dev", "libzstd-dev"]

INSTALL = r"""
set -eu
# Keep downloaded packages: /var/cache/apt is a cache mount, shared by later builds.
rm -f /etc/apt/apt.conf.d/docker-clean
echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' >/etc/apt/apt.conf.d/10llbgen-keep-cache
dpkg --add-architecture "$1"
shift
apt-get update -q
apt-get install -y -q --no-install-recommends "$@"
apt-get check
"""


def packages(debian: types.ModuleType, arch: str) -> list[str]:
    """What the compilers image for ``arch`` installs: the native toolchain, and the cross one
    (``debian``: the project's sources/debian helper)."""
    cross_arch = debian.CROSS_ARCH[arch]
    cross = debian.TRIPLETS[cross_arch].replace("_", "-")  # x86_64-linux-gnu -> x86-64-linux-gnu
    return [
        *NATIVE,
        f"gcc-{cross}", f"g++-{cross}", f"libc6-dev-{cross_arch}-cross",
        *(f"{p}:{cross_arch}" for p in MULTIARCH_DEV),
    ]  # fmt: skip


def build(ctx: llbgen.BuildContext) -> llbgen.State:
    debian = ctx.helper("sources/debian")
    platform = ctx.target_platform
    arch = platform.architecture
    if arch not in debian.CROSS_ARCH:
        raise ValueError(f"the compilers image is for {', '.join(PLATFORMS)}, not {platform}")
    base = ctx.base_image("debian:trixie")
    return (
        base.run(
            ["sh", "-c", INSTALL, "install", debian.CROSS_ARCH[arch], *packages(debian, arch)],
            mounts=debian.apt_mounts(platform),
            env={"DEBIAN_FRONTEND": "noninteractive"},
            network="host",
            name=f"install the toolchain for {arch} and {debian.CROSS_ARCH[arch]}",
        )
        .root.with_label("org.opencontainers.image.title", "compilers")
        .with_cmd("bash")
    )

"""bpftool from Debian's kernel source, statically linked, alone in a scratch image.

Built on the build platform for each target (cross-compiled for arm64), against a static libelf
built from Debian's elfutils source for that target, and Debian's static zlib and zstd. bpftool's
compiles go through ccache (a cache mount per build platform, which ``llbgen publish`` carries
through the registry); images/bpftool/patches/*.patch, if any, are applied to the kernel tree.

Build args:
  BUILD=cross (default) | emulated      emulated: build on the target platform (arm64 under QEMU)
  SOURCE=debian (default) | upstream    upstream: release tarballs over https, checked by sha256
  LINUX_VERSION, LINUX_ORIG_SHA256      move the kernel pin (see PINS below)
  ELFUTILS_VERSION, ELFUTILS_ORIG_SHA256
  LINUX_TARBALL_SHA256, ELFUTILS_TARBALL_SHA256   with SOURCE=upstream
  COMPILERS=REF@sha256:...              a published compilers image instead of building it

The exact Debian versions a build used are printed in its log ("llbgen: Debian source package
...") and stored in the binary itself, in the ELF section .llbgen.provenance:
``readelf -p .llbgen.provenance bpftool`` (or ``objcopy -O binary --only-section=...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import llbgen

PLATFORMS = ("linux/amd64", "linux/arm64")
# llbgen publish carries ccache through the registry (README, "Cache mounts").
CACHE_MOUNTS = ("bpftool-ccache-*",)
# Patches to the kernel's sources, applied after unpacking (none is the usual case).
PATCHES = Path(__file__).resolve().parent / "patches"
CCACHE_DIR = "/ccache"

# PINS. Debian's mirror keeps only the current revisions of a source package, so these are upstream
# versions (any Debian revision of them will do; the build records which one it got), with the
# sha256 of Debian's orig tarball, which does not change between revisions. When the mirror drops
# a version, the build fails and lists the versions it has with their orig checksums: change the
# two constants here, or pass --arg LINUX_VERSION=... --arg LINUX_ORIG_SHA256=....
LINUX_VERSION = "6.12.107"
LINUX_ORIG_SHA256 = "efc76d3c78a5d65f42724118c437d11db1c9f6309a5f024ee9a8b1978fdc6919"
ELFUTILS_VERSION = "0.192"
ELFUTILS_ORIG_SHA256 = "616099beae24aba11f9b63d86ca6cc8d566d968b802391334c91df54eab416b4"

# SOURCE=upstream. elfutils' release tarball is the very file Debian ships as its orig tarball.
# Debian repacks the kernel's (it removes non-free files), so kernel.org's tarball has a checksum
# of its own, which is not known here: pass it (sha256sums.asc next to the tarball on kernel.org).
LINUX_URL = "https://cdn.kernel.org/pub/linux/kernel/v{major}.x/linux-{version}.tar.xz"
ELFUTILS_URL = "https://sourceware.org/elfutils/ftp/{version}/elfutils-{version}.tar.bz2"
ELFUTILS_TARBALL_SHA256 = {"0.192": ELFUTILS_ORIG_SHA256}

# What bpftool's build reads from the kernel tree: tools/, the uapi headers, kernel/bpf/disasm.c,
# and the script that generates libbpf's helper definitions. The rest (drivers...) stays packed.
LINUX_PATHS = [
    "Makefile", "tools", "include/uapi", "kernel/bpf", "scripts/bpf_doc.py",
    "arch/x86/include/uapi", "arch/arm64/include/uapi",
]  # fmt: skip

# elfutils 0.192's libelf.a calls into libeu.a, which elfutils does not install, so no static link
# can use it as shipped (sourceware bug 32293; the fix puts libeu's objects into libelf.a). Build
# lib/ and libelf/ only, for the target, and make that libelf.a the same way.
LIBELF = r"""
set -eu
host=$1
prefix=${host:+$host-}
mkdir -p /build /out/lib /out/include
cd /build
/src/configure ${host:+--host=$host} --prefix=/usr/local --disable-nls --disable-debuginfod \
    --disable-libdebuginfod --disable-demangler --without-bzlib --without-lzma --with-zlib \
    --with-zstd >configure.log 2>&1 || { tail -n 40 configure.log config.log >&2; exit 1; }
grep -E '^ *(zstd|.*compression)' configure.log || true
make -s -j2 -C lib
make -s -j2 -C libelf libelf.a
cp libelf/libelf.a /out/lib/libelf.a
mkdir /tmp/libeu && cd /tmp/libeu
"${prefix}ar" x /build/lib/libeu.a
"${prefix}ar" rs /out/lib/libelf.a ./*.o
cp /src/libelf/libelf.h /src/libelf/gelf.h /src/libelf/nlist.h /out/include/
cp /src/.provenance /out/.provenance
"""

BPFTOOL = r"""
set -eu
arch=$1 cross=$2
cc=${cross}gcc
# Every compiler the build runs (the host's gcc for bpftool's bootstrap, the cross gcc) is ccache's
# link to it: the compilers-ccache image has one for each compiler installed.
[ -x "/usr/lib/ccache/$cc" ] || { echo "error: ccache has no link for $cc in /usr/lib/ccache" >&2; exit 1; }
PATH=/usr/lib/ccache:$PATH
ccache -z >/dev/null
field() { sed -n "s/^$1 = *//p" /src/Makefile; }
kernel=$(field VERSION).$(field PATCHLEVEL).$(field SUBLEVEL)$(field EXTRAVERSION)
libbpf() { sed -n "s/^#define LIBBPF_$1_VERSION //p" /src/tools/lib/bpf/libbpf_version.h; }
# bpftool's own version (libbpf's major + 6), with the kernel it comes from: as Debian names it.
version=$(( $(libbpf MAJOR) + 6 )).$(libbpf MINOR).0+$kernel
echo "llbgen: bpftool v$version for $arch with $($cc --version | head -n 1)"
# LIBS: 6.12's Makefile links "-lelf -lz"; a static libelf with zstd support also needs -lzstd.
mkdir -p /build
# shellcheck disable=SC2016 # $(LIBBPF) is make's variable
make -s -j2 -C /src/tools/bpf/bpftool OUTPUT=/build/ ${cross:+ARCH=$arch CROSS_COMPILE=$cross} \
    BPFTOOL_VERSION="$version" EXTRA_CFLAGS="-I/opt/libelf/include" \
    EXTRA_LDFLAGS="-static -L/opt/libelf/lib" 'LIBS=$(LIBBPF) -lelf -lz -lzstd'
ccache -s | sed 's/^/ccache: /'
mkdir -p /out
"${cross}strip" --strip-all -o /out/bpftool /build/bpftool
# Where it all came from: the sources, and the Debian packages of the static libraries.
if [ -n "$cross" ]; then libc=libc6-dev-$arch-cross; else libc=libc6-dev:$arch; fi
{
    cat /src/.provenance /opt/libelf/.provenance
    dpkg-query -W -f '${Package}:${Architecture} ${Version}\n' "$libc" "zlib1g-dev:$arch" "libzstd-dev:$arch"
    $cc --version | head -n 1
} | sed 's/:all / /' >/tmp/provenance
"${cross}objcopy" --add-section .llbgen.provenance=/tmp/provenance \
    --set-section-flags .llbgen.provenance=readonly /out/bpftool
sed 's/^/llbgen: provenance: /' /tmp/provenance
ls -l /out/bpftool
"""


def sources(ctx: llbgen.BuildContext) -> tuple[Any, Any]:
    """The kernel and elfutils sources (debian.Source) the build args select: Debian's by default."""
    debian = ctx.helper("sources/debian")
    linux_version, linux_sha = debian.pinned(ctx, "LINUX_VERSION", "LINUX_ORIG_SHA256", LINUX_VERSION, LINUX_ORIG_SHA256)
    elfutils_version, elfutils_sha = debian.pinned(
        ctx, "ELFUTILS_VERSION", "ELFUTILS_ORIG_SHA256", ELFUTILS_VERSION, ELFUTILS_ORIG_SHA256
    )
    if ctx.choice("SOURCE", ("debian", "upstream")) == "debian":
        pin = (
            "change {0} and {1} in images/bpftool/image.py, or pass --arg {0}=<upstream version> "
            "--arg {1}=<sha256 of its orig tarball>"
        )
        linux = debian.source_package(
            ctx, "linux", linux_version, orig_sha256=linux_sha,
            pin=pin.format("LINUX_VERSION", "LINUX_ORIG_SHA256"),
        )  # fmt: skip
        elfutils = debian.source_package(
            ctx, "elfutils", elfutils_version, orig_sha256=elfutils_sha,
            pin=pin.format("ELFUTILS_VERSION", "ELFUTILS_ORIG_SHA256"),
        )  # fmt: skip
        return linux, elfutils
    linux_tarball_sha = ctx.arg("LINUX_TARBALL_SHA256")
    if not linux_tarball_sha:
        raise ValueError(
            f"SOURCE=upstream needs --arg LINUX_TARBALL_SHA256=<sha256 of linux-{linux_version}.tar.xz> "
            "(kernel.org publishes them in sha256sums.asc next to the tarballs)"
        )
    elfutils_tarball_sha = ctx.arg("ELFUTILS_TARBALL_SHA256") or ELFUTILS_TARBALL_SHA256.get(elfutils_version)
    if not elfutils_tarball_sha:
        raise ValueError(f"SOURCE=upstream needs --arg ELFUTILS_TARBALL_SHA256=<sha256 of elfutils-{elfutils_version}.tar.bz2>")
    major = linux_version.split(".")[0]
    linux = debian.tarball(
        "linux", linux_version, LINUX_URL.format(major=major, version=linux_version), sha256=linux_tarball_sha
    )
    elfutils = debian.tarball(
        "elfutils", elfutils_version, ELFUTILS_URL.format(version=elfutils_version), sha256=elfutils_tarball_sha
    )
    return linux, elfutils


def build(ctx: llbgen.BuildContext) -> llbgen.State:
    debian = ctx.helper("sources/debian")
    emulated = ctx.choice("BUILD", ("cross", "emulated")) == "emulated"
    tc = debian.toolchain(ctx, emulated=emulated)
    # bpftool's compiles go through ccache; libelf's do not (it changes only with the compilers)
    cc = debian.toolchain(ctx, emulated=emulated, ccache=True)
    arch = ctx.target_platform.architecture
    how = "natively" if not tc.is_cross else f"with {tc.cross_compile}gcc"

    # Sources: downloaded and unpacked once, on the build platform, whatever the target.
    unpack_in = debian.compilers(ctx)
    linux, elfutils = sources(ctx)
    linux_tree = debian.patched(ctx, linux.unpack(unpack_in, LINUX_PATHS), PATCHES)
    elfutils_tree = elfutils.unpack(unpack_in)

    libelf = tc.state.run(
        ["sh", "/llbgen/libelf.sh", tc.triplet if tc.is_cross else ""],
        mounts=[
            debian.script("libelf.sh", LIBELF),
            llbgen.bind("/src", elfutils_tree, readonly=True),
            llbgen.bind("/out", llbgen.scratch()),
        ],
        network="none",
        name=f"build a static libelf for {arch} {how}",
    ).mount("/out")

    binary = cc.state.run(
        ["sh", "/llbgen/bpftool.sh", arch, cc.cross_compile],
        mounts=[
            debian.script("bpftool.sh", BPFTOOL),
            llbgen.bind("/src", linux_tree, readonly=True),
            llbgen.bind("/opt/libelf", libelf, readonly=True),
            llbgen.bind("/out", llbgen.scratch()),
            # one per machine the compiles run on; the targets' builds take turns (ccache's rule)
            llbgen.cache(CCACHE_DIR, f"bpftool-ccache-{cc.runs_on.id}", sharing="locked"),
        ],
        env={"CCACHE_DIR": CCACHE_DIR, "CCACHE_MAXSIZE": "1G"},
        network="none",
        name=f"build bpftool for {arch} {how}, static",
    ).mount("/out")

    return (
        llbgen.scratch()
        .file(
            llbgen.copy(binary, "/bpftool", "/usr/local/bin/bpftool", mode=0o755, create_dest_path=True),
            name="bpftool alone in the image",
        )
        .with_entrypoint("/usr/local/bin/bpftool")
        .with_label("org.opencontainers.image.title", "bpftool")
        .with_label(
            "org.opencontainers.image.description",
            f"bpftool from Linux {linux.version} ({'Debian source package' if linux.tarball.endswith('*') else 'kernel.org'}), static",
        )
    )

"""LLVM (clang, llc, llvm-objcopy, llvm-strip) for BPF only, statically linked, alone in a scratch image.

The sources are the orig tarball of Debian's llvm-toolchain-19 source package (trixie), checked
against the pinned sha256. Everything is built on the build platform, whatever the target:

0. the sources, with images/llvm/patches/*.patch applied if there are any (``patch -p1``);
1. the native tablegens (llvm-tblgen, clang-tblgen), once per build platform;
2. for each target, a cmake configure that takes its tablegens from (1): a native configure for
   the build platform's own architecture, a cross configure (the compilers image's
   aarch64-linux-gnu-gcc/g++, ``LLVM_HOST_TRIPLE=aarch64-linux-gnu``) for arm64;
3. for each target, the compile of the configured tree (ccache in a cache mount), stripped;
4. the four binaries in ``scratch``.

Build args:
  STAGE=image (default) | configure | mc
                                        configure: stop after (1) and (2), and return their
                                        results: /native (the tablegens, their --version, the
                                        native CMakeCache.txt) and /target (the target's
                                        CMakeCache.txt, the tablegens its build would run)
                                        mc: (1), (2), then (3) for llvm-mc alone (a fifth of
                                        llc's compiles; it prints the same "Registered Targets"
                                        list), alone in scratch: a real BPF-only binary for CI
  LLVM_VERSION, LLVM_ORIG_SHA256        move the pin (see PINS below)
  SOURCE=debian (default) | upstream    upstream: LLVM's release tarball over https, checked by
                                        sha256 (LLVM_TARBALL_SHA256), for builds outside this network
  JOBS=<cores of the daemon's machine>   parallel compile jobs
  COMPILERS=REF@sha256:...              a published compilers image instead of building it

The compiles of the different targets take turns (one ccache directory per build platform, in a
locked cache mount), each with JOBS jobs. Where the sources, the compiler and the static C and C++
libraries came from is printed in the log ("llbgen: provenance: ...") and stored in each binary,
in the ELF section .llbgen.provenance (``readelf -p .llbgen.provenance clang``).
"""

from __future__ import annotations

import re
from pathlib import Path

import llbgen

PLATFORMS = ("linux/amd64", "linux/arm64")
# llbgen publish carries ccache through the registry, so that an empty CI runner compiles only
# what changed (README, "Cache mounts").
CACHE_MOUNTS = ("llvm-ccache-*",)

# PINS: the upstream version, and the sha256 of Debian's orig tarball of it, which is the same for
# every Debian revision (trixie's Sources index listed llvm-toolchain-19 1:19.1.7-3 with
# llvm-toolchain-19_19.1.7.orig.tar.xz, 164,407,968 bytes, when this was pinned). To move the pin,
# change both constants, or pass --arg LLVM_VERSION=... --arg LLVM_ORIG_SHA256=...;
# a build with a version the mirror no longer has lists the ones it has, with their checksums.
PACKAGE = "llvm-toolchain-19"
LLVM_VERSION = "19.1.7"
LLVM_ORIG_SHA256 = "ae498f3bc58ae2d9f64ef5f0c035c4240152bf015a5b7738b15c22e93bdc97ce"

# SOURCE=upstream: the release tarball from LLVM's GitHub releases (not the same file as Debian's
# orig tarball, which is repacked), checked by the daemon against this sha256.
LLVM_URL = "https://github.com/llvm/llvm-project/releases/download/llvmorg-{version}/llvm-project-{version}.src.tar.xz"
LLVM_TARBALL_SHA256 = "82401fea7b79d0078043f7598b835284d6650a75b93e64b6f761ea7b63097501"
SOURCES = ("debian", "upstream")

STAGES = ("image", "configure", "mc")

# What the build reads from the monorepo (llvm/, clang/, the shared cmake modules and third-party
# headers); the rest (lldb, mlir, libc++...) stays packed.
SOURCE_PATHS = ["llvm", "clang", "cmake", "third-party"]

# The native tablegens: the target builds run these instead of building their own. (LLVM 19's
# llvm-min-tblgen, which the TargetParser headers need, is replaced by LLVM_TABLEGEN when it is set.)
TABLEGENS = ["llvm-tblgen", "clang-tblgen"]
# What the image holds; llvm-strip is llvm-objcopy under another name (a symlink, as LLVM installs it).
TOOLS = ["clang", "llc", "llvm-objcopy"]

# cmake options of every configure, native or target: BPF only, clang, Release, nothing optional
# (no zlib/zstd/libxml2/libedit...: a static binary must not pull in shared system libraries).
COMMON_OPTIONS = [
    "-G", "Ninja",
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLVM_TARGETS_TO_BUILD=BPF",
    "-DLLVM_ENABLE_PROJECTS=clang",
    "-DCMAKE_C_COMPILER_LAUNCHER=ccache",
    "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache",
    "-DLLVM_INCLUDE_TESTS=OFF",
    "-DLLVM_INCLUDE_BENCHMARKS=OFF",
    "-DLLVM_INCLUDE_EXAMPLES=OFF",
    "-DLLVM_INCLUDE_DOCS=OFF",
    "-DCLANG_INCLUDE_TESTS=OFF",
    "-DCLANG_INCLUDE_DOCS=OFF",
    "-DLLVM_ENABLE_ZLIB=OFF",
    "-DLLVM_ENABLE_ZSTD=OFF",
    "-DLLVM_ENABLE_LIBXML2=OFF",
    "-DLLVM_ENABLE_LIBEDIT=OFF",
    "-DLLVM_ENABLE_LIBPFM=OFF",
    "-DLLVM_ENABLE_FFI=OFF",
    "-DLLVM_ENABLE_Z3_SOLVER=OFF",
    "-DLLVM_ENABLE_BINDINGS=OFF",
    # Not needed to compile BPF programs, and a fifth of clang's compile steps.
    "-DCLANG_ENABLE_STATIC_ANALYZER=OFF",
    "-DCLANG_ENABLE_ARCMT=OFF",
]  # fmt: skip

# Patches to LLVM's sources, applied after unpacking (none is the usual case).
PATCHES = Path(__file__).resolve().parent / "patches"

NATIVE_DIR = "/native"  # where the native tablegens are mounted in the target steps
CCACHE_DIR = "/ccache"
CCACHE_ENV = {"CCACHE_DIR": CCACHE_DIR, "CCACHE_MAXSIZE": "8G"}

# Configures a native build tree on the build platform and builds only its tablegens.
NATIVE = r"""
# shellcheck disable=SC2086 # $TABLEGENS and $TOOLS are lists of words
set -eu
jobs=${1:-$(nproc)}
shift
cmake -S /src/llvm -B /build "$@" >/tmp/cmake.log 2>&1 || { tail -n 80 /tmp/cmake.log >&2; exit 1; }
tail -n 5 /tmp/cmake.log
mkdir -p /out/bin
cp /build/CMakeCache.txt /tmp/cmake.log /out/
ccache -z >/dev/null
NINJA_STATUS='[%f/%t %es] ' ninja -C /build -j"$jobs" $TABLEGENS
ccache -s | sed 's/^/ccache: /'
for t in $TABLEGENS; do
    cp "/build/bin/$t" /out/bin/
    printf '%s: %s\n' "$t" "$(/out/bin/$t --version | tr '\n' ' ')"
done | tee /out/tblgen-versions.txt
cp /src/.provenance /out/.provenance
"""

# Configures a target's build tree in /build (the path the compile step uses too: a cmake tree is
# not relocatable) and copies it to /out; records which tablegens its build would run.
CONFIGURE = r"""
# shellcheck disable=SC2086 # $TABLEGENS and $TOOLS are lists of words
set -eu
cmake -S /src/llvm -B /build "$@" >/tmp/cmake.log 2>&1 || { tail -n 80 /tmp/cmake.log >&2; exit 1; }
tail -n 5 /tmp/cmake.log
cp /tmp/cmake.log /build/llbgen-cmake.log
# Every tablegen the build of the tools runs, and whether it would configure a NATIVE sub-build
ninja -C /build -t commands $TOOLS >/tmp/commands
grep -o '[^ ]*-tblgen' /tmp/commands | sort -u >/build/llbgen-tablegens.txt
grep -c 'NATIVE' /tmp/commands >/build/llbgen-native-subbuilds.txt || true
sed 's/^/llbgen: tablegen: /' /build/llbgen-tablegens.txt
for t in $TABLEGENS; do
    printf '%s: %s\n' "$t" "$(/native/bin/$t --version | tr '\n' ' ')"
done >/build/llbgen-tblgen-versions.txt
cp -a /build/. /out/
"""

# Compiles a configured tree (copied to a tmpfs: only the stripped binaries are kept).
COMPILE = r"""
# shellcheck disable=SC2086 # $TABLEGENS and $TOOLS are lists of words
set -eu
jobs=${1:-$(nproc)} cross=$2
cp -a /configured/. /build/
ccache -z >/dev/null
# The log gets every 50th progress line and everything else (sed -u: as it comes); on a failure,
# the failed commands again from the full log, in case the daemon clipped the step's long log.
{ NINJA_STATUS='[%f/%t %es] ' ninja -C /build -j"$jobs" $TOOLS; echo $? >/tmp/ninja.status; } 2>&1 |
    tee /tmp/ninja.log | sed -u -e '/^\[[0-9]*\/[0-9]* /{' -e '/^\[[0-9]*[05]0\//!d' -e '}'
status=$(cat /tmp/ninja.status)
[ "$status" = 0 ] || grep -A 40 '^FAILED: ' /tmp/ninja.log | head -n 300 >&2
ccache -s | sed 's/^/ccache: /'
[ "$status" = 0 ] || exit "$status"
# Where the step's time went, from ninja's own log: CPU seconds per kind of build edge.
awk -F '\t' '!/^#/ {
    kind = $4 ~ /\.o$/ ? "compiles" : $4 ~ /\.(inc|def)$/ ? "tablegen" : $4 ~ /\.a$/ ? "archives" : $4 ~ /^bin\// ? "links" : "other"
    seconds[kind] += ($2 - $1) / 1000; count[kind]++
} END { for (k in seconds) printf "llbgen: time: %s: %d edges, %.0f s\n", k, count[k], seconds[k] }' /build/.ninja_log | sort
mkdir -p /out/usr/local/bin
# Where it all came from: the sources, the compiler, and the static C and C++ libraries linked in.
{
    cat /src/.provenance
    for lib in libc.a libstdc++.a; do
        file=$(realpath "$("${cross}g++" -print-file-name="$lib")")
        package=$(dpkg -S "$file" | sed 's/: .*//')
        dpkg-query -W -f '${Package}:${Architecture} ${Version}\n' "$package"
    done
    "${cross}g++" --version | head -n 1
} | sed 's/:all / /' >/tmp/provenance
sed 's/^/llbgen: provenance: /' /tmp/provenance
for t in $TOOLS; do
    "${cross}strip" --strip-all -o "/out/usr/local/bin/$t" "/build/bin/$t"
    "${cross}objcopy" --add-section .llbgen.provenance=/tmp/provenance \
        --set-section-flags .llbgen.provenance=readonly "/out/usr/local/bin/$t"
done
ln -s llvm-objcopy /out/usr/local/bin/llvm-strip
ls -l /out/usr/local/bin
"""


def _jobs(ctx: llbgen.BuildContext) -> str:
    """``JOBS``, or "" for as many as the daemon's machine has cores (``nproc`` in the step)."""
    value = ctx.arg("JOBS")
    if value and not re.fullmatch(r"[1-9][0-9]*", value):
        raise ValueError(f"--arg JOBS={value}: expected a positive number")
    return value or ""


def pin(ctx: llbgen.BuildContext) -> tuple[str, str]:
    """The pinned (version, orig sha256), or both moved by --arg."""
    debian = ctx.helper("sources/debian")
    return debian.pinned(ctx, "LLVM_VERSION", "LLVM_ORIG_SHA256", LLVM_VERSION, LLVM_ORIG_SHA256)


def builder(ctx: llbgen.BuildContext) -> llbgen.State:
    """The build platform's compilers image with ccache: the compilers-ccache image, in this graph."""
    return ctx.image("compilers-ccache", platform=ctx.build_platform)


def source(ctx: llbgen.BuildContext) -> llbgen.State:
    """The unpacked monorepo (``SOURCE_PATHS`` of it), with /.provenance saying which tarball it is."""
    debian = ctx.helper("sources/debian")
    version, orig_sha = pin(ctx)
    if ctx.choice("SOURCE", SOURCES) == "debian":
        package = debian.source_package(
            ctx, PACKAGE, version, orig_sha256=orig_sha,
            pin="change LLVM_VERSION and LLVM_ORIG_SHA256 in images/llvm/image.py, or pass "
            "--arg LLVM_VERSION=<upstream version> --arg LLVM_ORIG_SHA256=<sha256 of its orig tarball>",
        )  # fmt: skip
    else:
        sha = ctx.arg("LLVM_TARBALL_SHA256") or (LLVM_TARBALL_SHA256 if version == LLVM_VERSION else "")
        if not sha:
            raise ValueError(
                f"SOURCE=upstream needs --arg LLVM_TARBALL_SHA256=<sha256 of llvm-project-{version}.src.tar.xz>"
            )
        package = debian.tarball("llvm-project", version, LLVM_URL.format(version=version), sha256=sha)
    return debian.patched(ctx, package.unpack(debian.compilers(ctx), SOURCE_PATHS), PATCHES)


def ccache(ctx: llbgen.BuildContext) -> llbgen.llb.mounts.Mount:
    """The ccache directory: one per build platform, shared by the tablegens and every target's
    compile (they take turns: ccache's own locking is not meant for concurrent builds of one tree)."""
    return llbgen.cache(CCACHE_DIR, f"llvm-ccache-{ctx.build_platform.id}", sharing="locked")


def native_tablegens(ctx: llbgen.BuildContext, tools: llbgen.State, src: llbgen.State) -> llbgen.State:
    """/bin/<tablegen> built for the build platform, with the native CMakeCache.txt."""
    return tools.run(
        ["sh", "-c", NATIVE, "native", _jobs(ctx), *COMMON_OPTIONS],
        mounts=[
            llbgen.bind("/src", src, readonly=True),
            ccache(ctx),
            llbgen.tmpfs("/build"),
            llbgen.bind("/out", llbgen.scratch()),
        ],
        env={**CCACHE_ENV, "TABLEGENS": " ".join(TABLEGENS)},
        network="none",
        name=f"build the native tablegens for {ctx.build_platform}",
    ).mount("/out")


def target_options(ctx: llbgen.BuildContext) -> list[str]:
    """cmake options of the target's configure: static, native tablegens, cross settings for arm64."""
    debian = ctx.helper("sources/debian")
    tc = debian.toolchain(ctx)
    options = [
        *COMMON_OPTIONS,
        # -static for every executable, and find_library() finds only static libraries
        "-DLLVM_BUILD_STATIC=ON",
        # no shared libraries nor plugins (a static binary cannot load them): no PIC needed
        "-DLLVM_ENABLE_PIC=OFF",
        f"-DLLVM_NATIVE_TOOL_DIR={NATIVE_DIR}/bin",
        f"-DLLVM_TABLEGEN={NATIVE_DIR}/bin/llvm-tblgen",
        f"-DCLANG_TABLEGEN={NATIVE_DIR}/bin/clang-tblgen",
        # clang with no -target compiles for BPF: what this clang is for (else it would be the host's)
        "-DLLVM_DEFAULT_TARGET_TRIPLE=bpf",
    ]
    if tc.is_cross:
        triplet = tc.triplet
        options += [
            "-DCMAKE_SYSTEM_NAME=Linux",
            f"-DCMAKE_SYSTEM_PROCESSOR={triplet.split('-')[0]}",
            f"-DCMAKE_C_COMPILER={tc.cross_compile}gcc",
            f"-DCMAKE_CXX_COMPILER={tc.cross_compile}g++",
            f"-DCMAKE_FIND_ROOT_PATH=/usr/{triplet}",
            "-DCMAKE_FIND_ROOT_PATH_MODE_PROGRAM=NEVER",
            "-DCMAKE_FIND_ROOT_PATH_MODE_LIBRARY=ONLY",
            "-DCMAKE_FIND_ROOT_PATH_MODE_INCLUDE=ONLY",
            "-DCMAKE_FIND_ROOT_PATH_MODE_PACKAGE=ONLY",
            f"-DLLVM_HOST_TRIPLE={triplet}",
        ]
    return options


def configure(
    ctx: llbgen.BuildContext, tools: llbgen.State, src: llbgen.State, native: llbgen.State
) -> llbgen.State:
    """The target's configured build tree (as /build holds it in the compile step)."""
    arch = ctx.target_platform.architecture
    how = "natively" if ctx.target_platform == ctx.build_platform else "cross"
    return tools.run(
        ["sh", "-c", CONFIGURE, "configure", *target_options(ctx)],
        mounts=[
            llbgen.bind("/src", src, readonly=True),
            llbgen.bind(NATIVE_DIR, native, readonly=True),
            llbgen.tmpfs("/build"),
            llbgen.bind("/out", llbgen.scratch()),
        ],
        env={"TABLEGENS": " ".join(TABLEGENS), "TOOLS": " ".join(TOOLS)},
        network="none",
        name=f"configure LLVM for {arch} ({how})",
    ).mount("/out")


def build(ctx: llbgen.BuildContext) -> llbgen.State:
    debian = ctx.helper("sources/debian")
    stage = ctx.choice("STAGE", STAGES)
    version, _ = pin(ctx)
    tc = debian.toolchain(ctx)
    arch = ctx.target_platform.architecture
    tools = builder(ctx)
    src = source(ctx)
    native = native_tablegens(ctx, tools, src)
    configured = configure(ctx, tools, src, native)

    if stage == "configure":
        return llbgen.scratch().file(
            llbgen.copy(native, "/", "/native/", contents_only=True, create_dest_path=True)
            .copy(configured, "/CMakeCache.txt", "/target/CMakeCache.txt", create_dest_path=True)
            .copy(configured, "/llbgen-*", "/target/", allow_wildcard=True, create_dest_path=True),
            name=f"the configured LLVM trees for {arch}",
        )

    # STAGE=mc runs the same compile script on the same configured tree, for llvm-mc only (its
    # llvm-strip symlink dangles there, and is not copied).
    tools_built = ["llvm-mc"] if stage == "mc" else TOOLS
    binaries = tools.run(
        ["sh", "-c", COMPILE, "compile", _jobs(ctx), tc.cross_compile],
        mounts=[
            llbgen.bind("/src", src, readonly=True),
            llbgen.bind(NATIVE_DIR, native, readonly=True),
            llbgen.bind("/configured", configured, readonly=True),
            ccache(ctx),
            llbgen.tmpfs("/build"),
            llbgen.bind("/out", llbgen.scratch()),
        ],
        env={**CCACHE_ENV, "TOOLS": " ".join(tools_built)},
        network="none",
        name=f"build llvm-mc for {arch}" if stage == "mc" else f"build clang, llc and llvm-objcopy for {arch}",
    ).mount("/out")

    installed, what = (
        ("/usr/local/bin/llvm-mc", "llvm-mc")
        if stage == "mc"
        else ("/usr/local/bin", "clang, llc, llvm-objcopy and llvm-strip")
    )
    return (
        llbgen.scratch()
        .file(
            llbgen.copy(binaries, installed, installed, create_dest_path=True),
            name=f"{what} alone in the image",
        )
        .with_env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .with_label("org.opencontainers.image.title", "llvm")
        .with_label("org.opencontainers.image.version", version)
    )

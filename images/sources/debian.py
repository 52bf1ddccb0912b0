"""Helpers shared by the images that build from Debian: apt cache mounts, the compilers toolchain,
and Debian source packages pinned by upstream version.

This directory is not an image (it has no image.py). An image loads the module with a few lines
(_shared() in images/bpftool/image.py), then::

    debian = _shared("debian")                  # this file
    tc = debian.toolchain(ctx)                  # compilers on the build platform, cross to the target
    linux = debian.source_package(ctx, "linux", VERSION, orig_sha256=SHA256, pin="how to move it")
    tree = linux.unpack(debian.compilers(ctx), paths=["tools", "include/uapi"])
    tc.state.run(["sh", "/llbgen/build.sh", tc.cross_compile], mounts=[debian.script("build.sh", TEXT),
                 llbgen.bind("/src", tree, readonly=True), llbgen.bind("/out", llbgen.scratch())])

Scripts of more than a line are mounted as files (script()) rather than passed as ``sh -c TEXT``,
so that the daemon's messages about a step show a short command.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import llbgen

# GNU triplets of the architectures the images are built for, and the architecture each platform's
# compilers image cross-compiles to (upstream's compilers image does the same: amd64 <-> arm64).
TRIPLETS = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
CROSS_ARCH = {"amd64": "arm64", "arm64": "amd64"}

_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def apt_mounts(platform: llbgen.Platform, flavor: str = "") -> list[llbgen.llb.mounts.Mount]:
    """apt's download cache and lists in cache mounts, one pair per platform (and flavor).

    ``locked``: two builds on the same daemon take turns rather than corrupt apt's state.
    """
    key = f"{flavor}-{platform.id}" if flavor else platform.id
    return [
        llbgen.cache("/var/cache/apt", f"apt-cache-{key}", sharing="locked"),
        llbgen.cache("/var/lib/apt", f"apt-lib-{key}", sharing="locked"),
    ]


def script(name: str, text: str) -> llbgen.llb.mounts.Mount:
    """A read-only mount of ``text`` as the executable file /llbgen/<name>, for a run step.

    Run it as ``["sh", "/llbgen/<name>", args...]``: the step's command line stays short, and so do
    the daemon's messages about it, while the script is part of the step's cache key all the same.
    """
    files = llbgen.scratch().file(llbgen.mkfile(f"/{name}", 0o755, text), name=f"script {name}")
    return llbgen.bind("/llbgen", files, readonly=True)


# Debian's packages for an image of tools, without manuals and translations (the copyright files
# stay). The apt options are on the command line, so the image keeps no apt configuration of the
# build's. git is among the packages: it trusts every checkout, since CI mounts them from the host.
_TOOL_PACKAGES = r"""
set -eu
apt-get update -q
apt-get install -y -q --no-install-recommends \
    -o APT::Keep-Downloaded-Packages=true \
    -o 'DPkg::Options::=--path-exclude=/usr/share/man/*' \
    -o 'DPkg::Options::=--path-exclude=/usr/share/locale/*' \
    -o 'DPkg::Options::=--path-exclude=/usr/share/doc/*' \
    -o 'DPkg::Options::=--path-include=/usr/share/doc/*/copyright' \
    "$@"
# The repository is mounted from the host, owned by someone else than the container's user.
git config --system --add safe.directory '*'
"""


def tool_packages(
    ctx: llbgen.BuildContext, platform: llbgen.Platform, packages: Sequence[str], flavor: str
) -> llbgen.State:
    """The pinned Debian base for ``platform`` with ``packages`` (git among them), for a tool image.

    Runs on ``platform`` itself (under QEMU for another architecture): maintainer scripts run as
    they would on that machine. ``flavor`` names the image's apt cache mounts.
    """
    if "git" not in packages:
        raise ValueError("tool_packages: git must be among the packages (the step configures it)")
    return ctx.base_image("debian:trixie", platform=platform).run(
        ["sh", "/llbgen/install.sh", *packages],
        mounts=[script("install.sh", _TOOL_PACKAGES), *apt_mounts(platform, flavor)],
        env={"DEBIAN_FRONTEND": "noninteractive"},
        network="host",
        name=f"install {' '.join(packages)} for {platform.architecture}",
    ).root


# -- the toolchain --------------------------------------------------------------------------


def compilers(ctx: llbgen.BuildContext, platform: llbgen.Platform | None = None) -> llbgen.State:
    """The compilers image for ``platform`` (default: the build platform).

    By default it is the ``compilers`` image's state, built into the same graph (nothing is pushed
    or pulled in between). ``--arg COMPILERS=REF@sha256:...`` uses a published compilers image
    instead (a multi-platform index; the variant for ``platform`` is picked), which freezes the
    system packages the way upstream pins its compilers image. The image config of a published
    image is not read, so the compilers image sets nothing there that builds depend on.
    """
    platform = platform or ctx.build_platform
    ref = ctx.arg("COMPILERS")
    if not ref:
        return ctx.image("compilers", platform=platform)
    if not _DIGEST.search(ref):
        raise ValueError(
            f"COMPILERS={ref!r} must be pinned by digest (REF@sha256:<64 hex digits>), e.g. the "
            "digest 'llbgen build compilers --platform linux/amd64,linux/arm64 -o "
            "type=image,name=REF,push=true' prints"
        )
    return llbgen.image(ref, platform=platform)


@dataclasses.dataclass(frozen=True)
class Toolchain:
    """Where a build runs and how it reaches the target: ``make CROSS_COMPILE=...``."""

    state: llbgen.State  # the compilers image to run the build steps in
    target: llbgen.Platform
    cross_compile: str  # "" for a native build, else "aarch64-linux-gnu-"...
    runs_on: llbgen.Platform  # the platform of ``state``: the target's, or the build platform's

    @property
    def triplet(self) -> str:
        return TRIPLETS[self.target.architecture]

    @property
    def is_cross(self) -> bool:
        return bool(self.cross_compile)


def toolchain(ctx: llbgen.BuildContext, *, emulated: bool = False, ccache: bool = False) -> Toolchain:
    """The toolchain that builds for ``ctx.target_platform``.

    Cross (default): the build platform's compilers image with its cross compiler for the target.
    ``emulated``: the target platform's own compilers image, run natively there (under QEMU when
    the target is not the daemon's platform); slower, kept for comparison.
    ``ccache``: the compilers-ccache image instead (compilers with ccache and patch), for builds
    whose compiles go through ccache: ``PATH=/usr/lib/ccache:$PATH`` makes every compiler of the
    image, the cross compilers too, a ccache in front of it.
    """
    target = ctx.target_platform
    if target.architecture not in TRIPLETS:
        raise ValueError(f"no toolchain for {target}: the compilers image targets {', '.join(TRIPLETS)}")

    def image(platform: llbgen.Platform) -> llbgen.State:
        return ctx.image("compilers-ccache", platform=platform) if ccache else compilers(ctx, platform)

    if emulated or target == ctx.build_platform:
        return Toolchain(image(target), target, "", target)
    build = ctx.build_platform
    if CROSS_ARCH.get(build.architecture) != target.architecture:
        raise ValueError(f"the compilers image for {build} cannot cross-compile for {target}")
    return Toolchain(image(build), target, TRIPLETS[target.architecture] + "-", build)


# -- Debian source packages -------------------------------------------------------------------

# Downloads the orig tarball of a source package from the mirror the base image's apt sources name:
# deb-src entries are derived from its deb entries (same URI, suite, components), in a list of
# their own so that apt-get update fetches only the Sources indices; apt-get source --print-uris
# gives the file's URI and hash from the signed index, and apt-helper downloads and checks it.
# The tarball is also checked against the pinned checksum.
_FETCH = r"""
set -eu
pkg=$1 want=$2 sha=$3 pin=$PIN_HINT
die() { printf 'error: %s\n' "$1" >&2; shift; [ $# -eq 0 ] || printf '%s\n' "$@" | sed 's/^/  /' >&2; exit 1; }
src=/etc/apt/llbgen-deb-src
mkdir -p "$src/parts"
: >"$src/sources.list"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] && sed -n 's/^[[:space:]]*deb[[:space:]]/deb-src /p' "$f" >>"$src/sources.list"
done
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && sed 's/^Types:.*/Types: deb-src/' "$f" >"$src/parts/${f##*/}"
done
[ -s "$src/sources.list" ] || [ -n "$(ls "$src/parts")" ] ||
    die "the base image's apt sources have no deb entries to derive deb-src entries from"
printf 'Dir::Etc::SourceList "%s";\nDir::Etc::SourceParts "%s";\n' \
    "$src/sources.list" "$src/parts" >/etc/apt/apt.conf.d/99llbgen-deb-src
mirror=$(sed -n 's/^deb-src[[:space:]]*//p' "$src/sources.list" | head -n 1)
apt-get update -qq || die "apt-get update of the deb-src entries ($mirror) failed"
# "<version> <orig sha256> <orig file>" for each revision of the package the index has
origs=$(apt-cache showsrc "$pkg" 2>/dev/null | awk -v pkg="$pkg" '
    /^$/ { p = ""; v = ""; c = 0 }
    /^Package: / { p = $2 }
    /^Version: / { v = $2 }
    /^[^ ]/ { c = /^Checksums-Sha256:/; next }
    c && p == pkg && $3 ~ /\.orig\.tar\./ { print v, $1, $3 }' | sort -u -V)
# The revisions of the pinned upstream version, newest first.
candidates=
for v in $(echo "$origs" | cut -d' ' -f1); do
    upstream=${v#*:}
    upstream=${upstream%-*}
    if [ "$upstream" = "$want" ]; then candidates="$candidates $v"; fi
done
newest_first=
while [ -n "$candidates" ]; do
    best='' rest=''
    for v in $candidates; do
        if [ -z "$best" ]; then best=$v
        elif dpkg --compare-versions "$v" gt "$best"; then rest="$rest $best" best=$v
        else rest="$rest $v"
        fi
    done
    newest_first="$newest_first $best" candidates=$rest
done
# Only the orig tarball is downloaded (the build does not use Debian's packaging), from the URI
# and with the hash the signed index gives. The index can still list a revision whose files are
# already gone from the pool: then the next one is tried.
mkdir -p /out && cd /out
version='' orig=''
for v in $newest_first; do
    uris=$(apt-get -o APT::Sandbox::User=root source --print-uris -qq "$pkg=$v") || continue
    # 'URI' FILE SIZE HASH, for the orig tarball (not its .asc signature)
    # shellcheck disable=SC2046
    set -- $(printf '%s\n' "$uris" | awk -v f="${pkg}_${want}.orig.tar." \
        'index($2, f) == 1 && $2 !~ /\.asc$/ { gsub("\047", "", $1); print $1, $2, $4; exit }')
    [ $# -eq 3 ] || continue
    indexed=$(echo "${3#*:}" | tr A-F a-f)
    case $3 in SHA256:*) ;; *) indexed=;; esac
    [ -z "$indexed" ] || [ "$indexed" = "$sha" ] || die "Debian's index gives $2 of $pkg $v sha256:$indexed," \
        "but the pin says sha256:$sha. Debian's orig tarball of $pkg $want is not the one pinned;" \
        "check why, then move the pin: $pin"
    if /usr/lib/apt/apt-helper -o APT::Sandbox::User=root download-file "$1" "/out/$2" "$3"; then
        version=$v orig=$2
        break
    fi
    echo "llbgen: $pkg $v is in the mirror's index, but $2 could not be downloaded" >&2
    rm -f "/out/$2"
done
# The mirror no longer has it: the copy kept in a registry (llbgen sources push), if one is named,
# as an OCI blob addressed by the pinned sha256 (anonymous pull; apt-helper checks the hash).
if [ -z "$version" ] && [ -n "${SOURCES_REGISTRY:-}" ]; then
    host=${SOURCES_REGISTRY%%/*} repo=${SOURCES_REGISTRY#*/}
    case $host in localhost* | 127.* | "[::1]"*) scheme=http ;; *) scheme=https ;; esac
    url="$scheme://$host/v2/$repo/blobs/sha256:$sha"
    echo "llbgen: $pkg $want is not in $mirror; trying the copy in $SOURCES_REGISTRY"
    if /usr/lib/apt/apt-helper -o APT::Sandbox::User=root download-file "$url" /out/orig "SHA256:$sha"; then
        case $(od -An -tx1 -N3 /out/orig | tr -d ' ') in
            fd377a) ext=xz ;; 425a68) ext=bz2 ;; 1f8b*) ext=gz ;; *) ext=unknown ;;
        esac
        orig=${pkg}_$want.orig.tar.$ext version=$want mirror="the copy in $SOURCES_REGISTRY"
        mv /out/orig "$orig"
    else
        rm -f /out/orig
        echo "llbgen: $SOURCES_REGISTRY has no blob sha256:$sha either (llbgen sources push puts it there)" >&2
    fi
fi
if [ -z "$version" ]; then
    die "Debian's mirror ($mirror) no longer has source package $pkg at the pinned upstream version $want." \
        "The mirror keeps only current Debian revisions, so the pin must move: $pin" \
        "The mirror's index lists these versions of $pkg, with the sha256 of their orig tarball" \
        "(the newest ones can be listed before their files reach the pool, the oldest after they left it):" \
        "$(echo "$origs" | sed 's/^/    /')"
fi
echo "llbgen: Debian source package $pkg $version (pinned upstream version $want) from $mirror"
got=$(sha256sum "$orig" | cut -d' ' -f1)
echo "llbgen: $orig sha256:$got"
[ "$got" = "$sha" ] || die "$orig has sha256:$got, but the pin says sha256:$sha." \
    "Debian's orig tarball of $pkg $want is not the one pinned; check why, then move the pin: $pin"
printf '%s %s %s sha256:%s\n' "$pkg" "$version" "$orig" "$got" >/out/provenance
"""

# Unpacks a tarball's tree (its top directory stripped), or only some paths of it, and records
# where it came from in /.provenance: "<name> <version> <tarball> sha256:<hex>".
_UNPACK = r"""
set -eu
name=$1 version=$2 tarball=$3
shift 3
cd /in
# shellcheck disable=SC2086 # a glob, for Debian's orig tarball: .orig.tar.{xz,bz2,gz}
for t in $tarball; do tarball=$t; break; done
[ -f "$tarball" ] || { echo "error: no $tarball in the downloaded files: $(ls)" >&2; exit 1; }
top=$(tar -tf "$tarball" | head -n 1 | cut -d/ -f1)
members=
for p in "$@"; do members="$members $top/$p"; done
# shellcheck disable=SC2086
tar -xf "$tarball" -C /out --strip-components=1 --no-same-owner $members
if [ -f provenance ]; then
    cp provenance /out/.provenance
else
    printf '%s %s %s sha256:%s\n' "$name" "$version" "$tarball" \
        "$(sha256sum "$tarball" | cut -d' ' -f1)" >/out/.provenance
fi
"""


@dataclasses.dataclass(frozen=True)
class Source:
    """Downloaded source files (``files``, at its /) with the tarball that holds the tree."""

    name: str
    version: str  # upstream version
    files: llbgen.State
    tarball: str  # a file name in ``files``; a glob for Debian's orig tarball (.xz, .bz2, .gz)

    def unpack(self, cc: llbgen.State, paths: Sequence[str] = ()) -> llbgen.State:
        """The tree of the tarball (only ``paths`` of it, if given) at /, run in ``cc``.

        ``/.provenance`` says which version and tarball it is: ``<name> <version> <tarball>
        sha256:<hex>``, with the exact Debian version for a Debian source package. Debian's
        packaging patches are not applied: what is built is the upstream source as Debian ships it.
        """
        step = cc.run(
            ["sh", "/llbgen/unpack.sh", self.name, self.version, self.tarball, *paths],
            mounts=[
                script("unpack.sh", _UNPACK),
                llbgen.bind("/in", self.files, readonly=True),
                llbgen.bind("/out", llbgen.scratch()),
            ],
            network="none",
            name=f"unpack {self.name} {self.version}" + (f": {' '.join(paths)}" if paths else ""),
        )
        return step.mount("/out")


_PATCH = r"""
set -eu
for p in /patches/*.patch; do
    echo "llbgen: applying ${p#/patches/}"
    patch -p1 --forward --batch -d /src <"$p"
    printf 'patch %s sha256:%s\n' "${p#/patches/}" "$(sha256sum "$p" | cut -d' ' -f1)" >>/src/.provenance
done
"""


def patched(ctx: llbgen.BuildContext, tree: llbgen.State, directory: Path) -> llbgen.State:
    """``tree`` (an unpacked source) with ``directory``/*.patch applied in order (``patch -p1`` from
    its top), each named with its checksum in its /.provenance.

    ``tree`` itself when there are none, so that an image's graph is the same as without: an
    image's patches directory is where a local change to its sources goes (and the one-line change
    the cache benchmarks make).
    """
    patches = sorted(directory.glob("*.patch"))
    if not patches:
        return tree
    action = llbgen.mkfile(f"/{patches[0].name}", 0o644, patches[0].read_text())
    for path in patches[1:]:
        action = action.mkfile(f"/{path.name}", 0o644, path.read_text())
    files = llbgen.scratch().file(action, name=f"patches: {' '.join(p.name for p in patches)}")
    where = f"images/{directory.parent.name}/{directory.name}"
    return ctx.image("compilers-ccache", platform=ctx.build_platform).run(
        ["sh", "-c", _PATCH, "patch"],
        mounts=[llbgen.bind("/src", tree), llbgen.bind("/patches", files, readonly=True)],
        network="none",
        name=f"apply {len(patches)} patch(es) from {where}",
    ).mount("/src")


def pinned(ctx: llbgen.BuildContext, version_arg: str, sha_arg: str, version: str, sha: str) -> tuple[str, str]:
    """The pinned (version, orig checksum), or both from --arg: moving one without the other is an error."""
    new_version, new_sha = ctx.arg(version_arg), ctx.arg(sha_arg)
    if new_version and new_version != version and not new_sha:
        raise ValueError(
            f"--arg {version_arg}={new_version} needs --arg {sha_arg}=<sha256 of its orig tarball> too: "
            f"a build with an unavailable version lists the versions Debian's mirror has, with checksums"
        )
    return new_version or version, new_sha or sha


def source_package(
    ctx: llbgen.BuildContext, package: str, upstream: str, *, orig_sha256: str, pin: str
) -> Source:
    """Debian's source package ``package`` at upstream version ``upstream``, for trixie.

    The newest Debian revision of that upstream version the mirror has is used; the build log and
    the ``provenance`` file record which one. When the mirror has no revision of it any more (it
    keeps only current ones), the step takes the copy ``llbgen sources push`` kept in the registry
    repository ``--arg SOURCES_REGISTRY=HOST/PATH`` names (the blob with the pinned sha256), if
    given; else it fails and says so, with ``pin`` telling how to move the pin.
    Runs on the build platform: the files are the same for every target.
    """
    if not re.fullmatch(r"[0-9a-f]{64}", orig_sha256):
        raise ValueError(f"orig_sha256 of {package} {upstream} must be 64 hex digits, not {orig_sha256!r}")
    base = ctx.base_image("debian:trixie", platform=ctx.build_platform)
    env = {"PIN_HINT": pin}  # for the message when the pinned version is gone
    if ctx.arg("SOURCES_REGISTRY"):
        env["SOURCES_REGISTRY"] = ctx.arg("SOURCES_REGISTRY")  # the fallback: llbgen sources push
    step = base.run(
        ["sh", "/llbgen/fetch-debian-source.sh", package, upstream, orig_sha256],
        env=env,
        mounts=[
            script("fetch-debian-source.sh", _FETCH),
            *apt_mounts(ctx.build_platform, "deb-src"),
            llbgen.bind("/out", llbgen.scratch()),
        ],
        network="host",
        name=f"download Debian source package {package} {upstream}",
    )
    return Source(package, upstream, step.mount("/out"), f"{package}_{upstream}.orig.tar.*")


def tarball(name: str, version: str, url: str, *, sha256: str) -> Source:
    """An upstream release tarball over https, checked against ``sha256`` by the daemon.

    The alternative to Debian's source packages for builds outside this network.
    """
    sha256 = sha256.removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError(f"the sha256 of {url} must be 64 hex digits, not {sha256!r}")
    filename = url.rsplit("/", 1)[-1]
    files = llbgen.http(url, checksum=f"sha256:{sha256}", filename=filename)
    return Source(name, version, files, filename)

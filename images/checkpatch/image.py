"""checkpatch: the kernel's checkpatch.pl with three fixes and a wrapper, on Debian with perl and git.

checkpatch.pl, spelling.txt and const_structs.checkpatch come from the kernel source bpftool
builds from (the same download step, so the same cache entry: the pin is images/bpftool/image.py's
LINUX_VERSION, and the build args that move it move both images). fixes.pl edits checkpatch.pl
(see its comments; the build fails if an edit does not apply), checkpatch.sh is the entrypoint
(/usr/local/bin/checkpatch; `checkpatch -h`). Run it with the repository mounted::

    docker run --rm -v "$PWD:/workspace" IMAGE            # the commits since the last branch/tag
    docker run --rm -v "$PWD:/workspace" IMAGE -a         # every C file under bpf/

Build args: those of bpftool that choose the kernel source (SOURCE, LINUX_VERSION,
LINUX_ORIG_SHA256, LINUX_TARBALL_SHA256).
"""

from __future__ import annotations

from pathlib import Path

import llbgen

PLATFORMS = ("linux/amd64", "linux/arm64")
# A tool image of Debian packages (perl, git) plus three files: its apt steps reach the network,
# as a system-package image's may (llbgen lint).
SYSTEM_PACKAGES = True

HERE = Path(__file__).resolve().parent
SCRIPTS = ["scripts/checkpatch.pl", "scripts/spelling.txt", "scripts/const_structs.checkpatch"]
PREFIX = "/opt/checkpatch"
# Debian's perl (checkpatch.pl needs more than perl-base's modules) and git for the wrapper.
PACKAGES = ["perl", "git"]

# The scripts from the kernel tree, checkpatch.pl edited; checked to compile with its modules.
FIX = r"""
set -eu
cp /src/scripts/checkpatch.pl /src/scripts/spelling.txt /src/scripts/const_structs.checkpatch /out/
cp /src/.provenance /out/provenance
perl /llbgen/fixes.pl /out/checkpatch.pl
perl -c /out/checkpatch.pl
chmod 0755 /out/checkpatch.pl
chmod 0644 /out/spelling.txt /out/const_structs.checkpatch /out/provenance
"""


def tools(ctx: llbgen.BuildContext, platform: llbgen.Platform) -> llbgen.State:
    """The pinned Debian base with perl and git, for ``platform``: the image without its files."""
    return ctx.helper("sources/debian").tool_packages(ctx, platform, PACKAGES, "checkpatch")


def pristine(ctx: llbgen.BuildContext) -> llbgen.State:
    """The three files as the kernel source has them (under /scripts), with /.provenance.

    Unpacked on the build platform from bpftool's kernel source state (the same download step);
    the tests run this unedited checkpatch.pl beside the image's to show what each fix changes.
    """
    debian = ctx.helper("sources/debian")
    linux, _ = ctx.helper("bpftool/image").sources(ctx)
    # The orig tarball is .xz: the base has no xz, so the unpack step gets it first.
    xz = ctx.base_image("debian:trixie", platform=ctx.build_platform).run(
        ["sh", "-c", 'apt-get update -q && apt-get install -y -q --no-install-recommends "$@"', "install", "xz-utils"],
        mounts=debian.apt_mounts(ctx.build_platform, "checkpatch"),
        env={"DEBIAN_FRONTEND": "noninteractive"},
        network="host",
        name="install xz-utils to unpack the kernel source",
    ).root
    return linux.unpack(xz, SCRIPTS)


def build(ctx: llbgen.BuildContext) -> llbgen.State:
    debian = ctx.helper("sources/debian")
    # Edited once, on the build platform, for every target: the files are the same.
    scripts = llbgen.scratch().file(
        llbgen.mkfile("/fix.sh", 0o755, FIX).mkfile("/fixes.pl", 0o755, (HERE / "fixes.pl").read_text()),
        name="scripts fix.sh, fixes.pl",
    )
    fixed = tools(ctx, ctx.build_platform).run(
        ["sh", "/llbgen/fix.sh"],
        mounts=[
            llbgen.bind("/llbgen", scripts, readonly=True),
            llbgen.bind("/src", pristine(ctx), readonly=True),
            llbgen.bind("/out", llbgen.scratch()),
        ],
        network="none",
        name="apply fixes.pl to checkpatch.pl",
    ).mount("/out")
    return (
        tools(ctx, ctx.target_platform)
        .file(
            llbgen.copy(fixed, "/", f"{PREFIX}/", create_dest_path=True)
            .mkfile("/usr/local/bin/checkpatch", 0o755, (HERE / "checkpatch.sh").read_text()),
            name="checkpatch.pl and the wrapper",
        )
        .with_env("LANG", "C.UTF-8")
        .with_dir("/workspace")
        .with_entrypoint("/usr/local/bin/checkpatch")
        .with_label("org.opencontainers.image.title", "checkpatch")
        .with_label("org.opencontainers.image.description", "the kernel's checkpatch.pl for BPF C sources, with a wrapper")
    )

"""The compilers image with ccache and patch: what llvm's and bpftool's compiles run in.

Their compiles go through ccache; patch(1) applies an image's patches to its sources
(sources/debian.py, patched()).

Its own image because it installs Debian packages over the network: the build steps then run
without network (llbgen lint). Built into those images' graphs.
"""

from __future__ import annotations

import llbgen

PLATFORMS = ("linux/amd64", "linux/arm64")
# Installs Debian packages over the network (llbgen lint).
SYSTEM_PACKAGES = True


def build(ctx: llbgen.BuildContext) -> llbgen.State:
    debian = ctx.helper("sources/debian")
    platform = ctx.target_platform
    return debian.compilers(ctx, platform).run(
        ["sh", "-c", "set -eu; apt-get update -q; apt-get install -y -q --no-install-recommends ccache patch"],
        mounts=debian.apt_mounts(platform),
        env={"DEBIAN_FRONTEND": "noninteractive"},
        network="host",
        name="install ccache and patch",
    ).root

"""The compilers image with ccache: what llvm's build steps run in (its compiles go through ccache),
and patch(1), which applies llvm's own patches to the sources.

Its own image because it installs a Debian package over the network: llvm's steps then run
without network (llbgen lint). Built into llvm's graph for the build platform.
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

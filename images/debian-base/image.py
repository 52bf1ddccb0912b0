"""Debian trixie minbase from the stack's mmdebstrap root filesystems (scripts/stack-up imports it)."""

import llbgen

PLATFORMS = ("linux/amd64", "linux/arm64")


def build(ctx: llbgen.BuildContext) -> llbgen.State:
    # scripts/stack-up passes --local rootfs=DIR, where DIR holds debian-trixie-<arch>.tar for each platform.
    tarball = f"debian-trixie-{ctx.target_platform.architecture}.tar"
    rootfs = llbgen.local("rootfs", include=[tarball])
    return (
        llbgen.scratch()
        .file(llbgen.copy(rootfs, tarball, "/", unpack=True), name=f"unpack {tarball}")
        .with_env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .with_cmd("bash")
    )

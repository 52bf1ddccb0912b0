"""The BuildKit image the stack's buildx builders run (docker-container driver).

What moby/buildkit's image is, made here because Docker Hub cannot be reached: the stack's pinned
Debian base, Debian's runc, and the buildkitd/buildctl that scripts/install-buildkit built
(``--local bin=DIR`` holding both). Emulated platforms need no QEMU inside: the host's qemu-aarch64
handler is registered with the fix-binary flag, so it serves containers too.
scripts/stack-buildx builds it for this machine's platform and pushes it to the local registry.
"""

import llbgen

INSTALL = """set -eu
apt-get update -q
apt-get install -y -q --no-install-recommends runc
rm -rf /var/lib/apt/lists/*
"""


def build(ctx: llbgen.BuildContext) -> llbgen.State:
    binaries = llbgen.local("bin", include=["buildkitd", "buildctl"])
    return (
        ctx.base_image("debian:trixie")
        .run(["sh", "-c", INSTALL], env={"DEBIAN_FRONTEND": "noninteractive"}, network="host",
             name="install runc")
        .root.file(
            llbgen.copy(binaries, "buildkitd", "/usr/bin/buildkitd")
            .copy(binaries, "buildctl", "/usr/bin/buildctl")
            .mkdir("/var/lib/buildkit", 0o711),
            name="add buildkitd and buildctl",
        )
        .with_env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .with_entrypoint("/usr/bin/buildkitd")
        .with_label("org.opencontainers.image.title", "buildkit for llbgen's buildx builders")
    )

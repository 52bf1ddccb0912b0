"""A tiny Debian image whose entrypoint greets and names the architecture it was built on."""

import llbgen

PLATFORMS = ("linux/amd64", "linux/arm64")

SCRIPT = """#!/bin/sh
cat /usr/share/hello/greeting.txt
echo "built on $(cat /usr/share/hello/arch), running on $(uname -m)"
"""


def build(ctx: llbgen.BuildContext) -> llbgen.State:
    base = ctx.base_image("debian:trixie")
    context = llbgen.local("context", include=["images/hello/greeting.txt"])
    return (
        base.file(
            llbgen.copy(
                context,
                "images/hello/greeting.txt",
                "/usr/share/hello/greeting.txt",
                create_dest_path=True,
            ).mkfile("/usr/local/bin/hello", 0o755, SCRIPT),
            name="add greeting and script",
        )
        # Runs on the target platform: under QEMU when building linux/arm64 on amd64.
        .run("sh -c 'uname -m > /usr/share/hello/arch'", network="none", name="record the build architecture")
        .root.with_env("LANG", "C.UTF-8")
        .with_entrypoint("/usr/local/bin/hello")
        .with_label("org.opencontainers.image.title", "hello")
    )

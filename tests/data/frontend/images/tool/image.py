"""An image built on another one of the project, with a full image config (frontend test fixture)."""

import llbgen

from pathlib import Path

PLATFORMS = ("linux/amd64", "linux/arm64")

# A sibling file, read the way a definition reads its own data.
BANNER = (Path(__file__).parent / "banner.txt").read_text()


def build(ctx: llbgen.BuildContext) -> llbgen.State:
    greeter = ctx.image("greeter")
    return (
        greeter.file(llbgen.mkfile("/etc/banner", 0o644, BANNER), name="add the banner")
        # Runs on the target platform (under QEMU for linux/arm64 on amd64).
        .run("sh -c 'uname -m > /etc/tool-arch'", name="record the architecture")
        .root.with_env("TOOL_HOME", "/opt/tool")
        .with_dir("/opt/tool")
        .with_user("1000:1000")
        .with_entrypoint("/usr/local/bin/greet")
        .with_cmd("--help")
        .with_label("org.example.kind", "frontend-test")
    )

"""A greeting script on the stack's Debian base (test fixture for llbgen's frontend)."""

import llbgen

PLATFORMS = ("linux/amd64", "linux/arm64")


def build(ctx: llbgen.BuildContext) -> llbgen.State:
    message = ctx.arg("GREETING", "hello from greeter")
    return ctx.base_image("debian:trixie").file(
        llbgen.mkfile("/usr/local/bin/greet", 0o755, f"#!/bin/sh\necho '{message}'\n"),
        name="add the greet script",
    )

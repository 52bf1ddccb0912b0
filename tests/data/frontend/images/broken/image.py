"""A definition that fails while it builds its graph (frontend test fixture)."""

import llbgen


def flags() -> dict[str, str]:
    return {"mode": "fast"}


def build(ctx: llbgen.BuildContext) -> llbgen.State:
    base = ctx.base_image("debian:trixie")
    return base.with_env("MODE", flags()["speed"])  # line 12: KeyError

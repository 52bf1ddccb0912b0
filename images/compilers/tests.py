"""Structure tests of the compilers image: native and cross compilers report their targets."""

import llbgen
from llbgen.structure import Check, CommandTest

TRIPLET = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}


def tests(ctx: llbgen.BuildContext) -> list[Check]:
    native = TRIPLET[ctx.target_platform.architecture]
    (other,) = (t for t in TRIPLET.values() if t != native)
    return [
        CommandTest("native gcc", ["gcc", "-dumpmachine"], expected_output=[f"^{native}$"]),
        CommandTest("native g++", ["g++", "-dumpmachine"], expected_output=[f"^{native}$"]),
        CommandTest("cross gcc", [f"{other}-gcc", "-dumpmachine"], expected_output=[f"^{other}$"]),
        CommandTest("cross g++", [f"{other}-g++", "-dumpmachine"], expected_output=[f"^{other}$"]),
    ]

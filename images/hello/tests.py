"""Structure tests of the hello image: `llbgen test hello` (both platforms, arm64 under QEMU)."""

import re
from pathlib import Path

import llbgen
from llbgen.structure import Check, CommandTest, FileContentTest, FileExistenceTest

GREETING = (Path(__file__).parent / "greeting.txt").read_text().strip()
UNAME = {"amd64": "x86_64", "arm64": "aarch64"}


def tests(ctx: llbgen.BuildContext) -> list[Check]:
    machine = UNAME[ctx.target_platform.architecture]
    return [
        FileExistenceTest(
            "greeting is installed", "/usr/share/hello/greeting.txt", permissions=0o644, uid=0, gid=0
        ),
        FileExistenceTest("hello is executable", "/usr/local/bin/hello", permissions="-rwxr-xr-x"),
        FileContentTest("greeting text", "/usr/share/hello/greeting.txt", expected_contents=[re.escape(GREETING)]),
        # The build step that wrote it ran on the target platform (under QEMU for arm64).
        FileContentTest("build architecture", "/usr/share/hello/arch", expected_contents=[f"^{machine}$"]),
        CommandTest(
            "hello greets",
            ["hello"],
            expected_output=[f"^{re.escape(GREETING)}$", f"built on {machine}, running on {machine}$"],
            excluded_error=["."],
        ),
        CommandTest("runs on the target architecture", ["uname", "-m"], expected_output=[f"^{machine}$"]),
        CommandTest(
            "environment and setup",
            ["sh", "-c", 'echo "$LANG $WHO $(cat /tmp/hello/name)"'],
            env={"WHO": "tests"},
            files={"/tmp/hello/name": "llbgen\n"},
            setup=[["test", "-s", "/tmp/hello/name"]],
            expected_output=["^C.UTF-8 tests llbgen$"],
        ),
    ]

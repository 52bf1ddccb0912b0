"""Structure tests of the bpftool image: `llbgen test bpftool` (both platforms, arm64 under QEMU)."""

import re
from pathlib import Path

import llbgen
from llbgen.structure import Check, CommandTest, FileExistenceTest

# The pinned upstream kernel version, as image.py declares it (--arg LINUX_VERSION moves it).
PINNED = re.search(r'^LINUX_VERSION = "([^"]+)"', (Path(__file__).parent / "image.py").read_text(), re.M)
ELF_MACHINE = {"amd64": "3e 00", "arm64": "b7 00"}  # e_machine: EM_X86_64 (62), EM_AARCH64 (183)


def tests(ctx: llbgen.BuildContext) -> list[Check]:
    assert PINNED is not None
    version = re.escape(ctx.arg("LINUX_VERSION") or PINNED.group(1))
    arch = ctx.target_platform.architecture
    return [
        CommandTest("version matches the pin", ["bpftool", "version"], expected_output=[rf"^bpftool v\d+\.\d+\.\d+\+{version}$"]),
        CommandTest(
            "statically linked",
            ["sh", "-c", "ldd /image/usr/local/bin/bpftool 2>&1"],
            image_mount="/image",
            exit_code=None,
            expected_output=["not a dynamic executable"],
        ),
        CommandTest(
            f"ELF machine is {arch}",
            ["od", "-An", "-tx1", "-j18", "-N2", "/image/usr/local/bin/bpftool"],
            image_mount="/image",
            expected_output=[rf"^\s*{ELF_MACHINE[arch]}\s*$"],
        ),
        CommandTest(
            "exactly one file",
            ["find", "/image", "!", "-type", "d"],
            image_mount="/image",
            expected_output=[r"\A/image/usr/local/bin/bpftool\n\Z"],
        ),
        FileExistenceTest("bpftool mode 0755", "/usr/local/bin/bpftool", permissions="-rwxr-xr-x"),
    ]

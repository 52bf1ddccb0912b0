"""Structure tests of the llvm image: `llbgen test llvm` (both platforms, arm64 under QEMU).

The commands run in the image itself (scratch, four static binaries), except where a shell or
``od``/``ldd`` is needed: those run in the pinned Debian base with the image mounted at /image.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import llbgen
from llbgen.structure import Check, CommandTest, FileExistenceTest

VERSION = "19.1.7"
BIN = "/usr/local/bin"
BINARIES = ("clang", "llc", "llvm-objcopy", "llvm-strip")
BPF_TARGETS = ("bpf", "bpfeb", "bpfel")
# ELF e_machine values: what each platform's binaries are, and what a BPF object is.
MACHINES = {"amd64": 62, "arm64": 183}
EM_BPF = 247

# A line of llc's "Registered Targets:" list ("    bpfel      - BPF (little endian)") whose
# name is not one of BPF_TARGETS. llc prints nothing else in that form.
OTHER_TARGET = r"^ +(?!(?:%s) +- )\S+ +- " % "|".join(BPF_TARGETS)

PROGRAM = """\
struct ctx { unsigned int len; };

__attribute__((section("xdp"), used))
int count(struct ctx *ctx)
{
    return ctx->len > 64 ? 2 : 1;
}

char LICENSE[] __attribute__((section("license"), used)) = "GPL";
"""

# Prints "type=<e_type> machine=<e_machine> interp=<n> dynamic=<n>" for an ELF file, from its
# headers (little-endian ELF64 only, which is all this image has): interp/dynamic count the
# PT_INTERP and PT_DYNAMIC program headers, which a static executable has none of.
ELF_INFO = r"""
elf_info() {
    f=$1
    u() { od -A n -t "u$2" -j "$1" -N "$2" "$f" | tr -d ' '; }
    [ "$(od -A n -c -N 4 "$f" | tr -d ' ')" = '177ELF' ] || { echo "$f: not an ELF file"; return 1; }
    [ "$(u 4 1)$(u 5 1)" = 21 ] || { echo "$f: not a little-endian ELF64 file"; return 1; }
    phoff=$(u 32 8) phentsize=$(u 54 2) phnum=$(u 56 2) interp=0 dynamic=0 i=0
    while [ "$i" -lt "$phnum" ]; do
        case $(u $((phoff + i * phentsize)) 4) in
            2) dynamic=$((dynamic + 1)) ;;
            3) interp=$((interp + 1)) ;;
        esac
        i=$((i + 1))
    done
    echo "type=$(u 16 2) machine=$(u 18 2) interp=$interp dynamic=$dynamic"
}
"""


def version_test(binary: str, command: Sequence[str]) -> CommandTest:
    """``clang version 19.1.7``, or ``LLVM version 19.1.7`` from the LLVM tools."""
    return CommandTest(
        f"{binary} --version is {VERSION}",
        list(command),
        expected_output=rf"\b(clang|LLVM) version {re.escape(VERSION)}$",
    )


def only_bpf_targets(command: Sequence[str] = ("llc", "--version"), *, name: str | None = None) -> CommandTest:
    """llc --version lists bpf, bpfeb and bpfel, and no other target.

    Fails on a multi-target llc (Debian's llc-19 lists aarch64, x86-64...): see tests/test_llvm.py.
    """
    return CommandTest(
        name or "llc lists the BPF targets and no other",
        list(command),
        expected_output=[
            r"^ +Registered Targets:$",
            *(rf"^ +{t} +- BPF \(" for t in BPF_TARGETS),
        ],
        excluded_output=OTHER_TARGET,
    )


def tests(ctx: llbgen.BuildContext) -> list[Check]:
    arch = ctx.target_platform.architecture
    checks: list[Check] = [
        FileExistenceTest(f"{b} is installed", f"{BIN}/{b}", permissions="-rwxr-xr-x", uid=0, gid=0)
        for b in BINARIES[:3]
    ]
    checks += [
        FileExistenceTest("llvm-strip is llvm-objcopy", f"{BIN}/llvm-strip", permissions="lrwxrwxrwx"),
        version_test("clang", ["clang", "--version"]),
        version_test("llc", ["llc", "--version"]),
        version_test("llvm-objcopy", ["llvm-objcopy", "--version"]),
        version_test("llvm-strip", ["llvm-strip", "--version"]),
        only_bpf_targets(),
        CommandTest("clang's default target is BPF", ["clang", "--version"], expected_output=r"^Target: bpf$"),
        # In the image itself: clang compiles C for BPF, llvm-strip works on its output.
        CommandTest(
            "clang -target bpf compiles C, llvm-strip strips it",
            ["llvm-strip", "-g", "/tmp/prog.o"],
            files={"/tmp/prog.c": PROGRAM},
            setup=[["clang", "-O2", "-target", "bpf", "-c", "/tmp/prog.c", "-o", "/tmp/prog.o"]],
        ),
        # The object is a BPF ELF relocatable (e_machine EM_BPF); llc compiles IR to one too.
        CommandTest(
            "clang -O2 -target bpf -c makes a BPF ELF object",
            [
                "sh", "-c",
                ELF_INFO + "set -e; cd /tmp; bin=/image" + BIN + "\n"
                "$bin/clang -O2 -target bpf -c prog.c -o prog.o\n"
                "echo \"clang: $(elf_info prog.o)\"\n"
                "$bin/clang -O2 -target bpf -S -emit-llvm prog.c -o prog.ll\n"
                "$bin/llc -march=bpf -filetype=obj prog.ll -o llc.o\n"
                "echo \"llc: $(elf_info llc.o)\"\n"
                "$bin/llvm-objcopy --remove-section license prog.o stripped.o\n"
                "echo \"llvm-objcopy: $(elf_info stripped.o)\"\n"
                "$bin/clang -O2 -c prog.c -o default.o\n"
                "echo \"clang, no -target: $(elf_info default.o)\"\n",
            ],
            image_mount="/image",
            files={"/tmp/prog.c": PROGRAM},
            expected_output=[
                rf"^{tool}: type=1 machine={EM_BPF} interp=0 dynamic=0$"
                for tool in ("clang", "llc", "llvm-objcopy", "clang, no -target")
            ],
        ),  # fmt: skip
    ]
    for binary in BINARIES:
        # Both ways: the headers (no PT_INTERP nor PT_DYNAMIC), and what ldd makes of it.
        checks.append(
            CommandTest(
                f"{binary} is static",
                [
                    "sh", "-c",
                    ELF_INFO + f"f=/image{BIN}/{binary}\n"
                    'echo "elf: $(elf_info "$f")"; echo "ldd: $(ldd "$f" 2>&1)"',
                ],
                image_mount="/image",
                expected_output=[
                    rf"^elf: type=2 machine={MACHINES[arch]} interp=0 dynamic=0$",
                    r"^ldd:\s+(not a dynamic executable|statically linked)$",
                ],
            )  # fmt: skip
        )
    return checks

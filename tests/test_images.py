"""The project's images, built on the real stack: bpftool (static, cross-compiled) and compilers.

Cold, these build the compilers image for both platforms (arm64 under QEMU: minutes) and bpftool
from Debian's kernel and elfutils sources; warm, every step is cached and each test takes seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAKE_DEBIAN, ROOT, Cli

# A cold build of the compilers image for arm64 runs apt under QEMU for several minutes, more than
# the project fixture's 120 s per command allows: builds here run with their own timeout.
BUILD_TIMEOUT = 60 * 60

EM_X86_64, EM_AARCH64 = 62, 183
MACHINE = {"amd64": EM_X86_64, "arm64": EM_AARCH64}
TRIPLET = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
QEMU = {"amd64": "qemu-x86_64-static", "arm64": "qemu-aarch64-static"}
# sha256 of elfutils-0.192.tar.bz2 as another distribution pins the same release tarball, not read
# from images/bpftool: TERMUX_PKG_SHA256 in gpkg/libelf/build.sh of termux-pacman/glibc-packages
# (commit 225b7c53a58806bdcd6ad176d69fb483147995c8), whose TERMUX_PKG_SRCURL is sourceware's tarball.
ELFUTILS_0_192_TARBALL_SHA256 = "616099beae24aba11f9b63d86ca6cc8d566d968b802391334c91df54eab416b4"
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
PT_DYNAMIC, PT_INTERP, DT_NULL, DT_NEEDED = 2, 3, 0, 1


def _bpftool_pins() -> Any:
    path = ROOT / "images" / "bpftool" / "image.py"
    spec = importlib.util.spec_from_file_location("tests_bpftool_image", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PINS = _bpftool_pins()


def build(project: Cli, image: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llbgen", "build", image, "--progress", "plain", *args],
        cwd=project.cwd,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )


def build_ok(project: Cli, image: str, *args: str) -> str:
    result = build(project, image, *args)
    assert result.returncode == 0, result.stderr[-6000:]
    return result.stderr


# -- ELF, read by hand ---------------------------------------------------------------------------


class Elf:
    """The parts of a 64-bit little-endian ELF file the tests look at."""

    def __init__(self, data: bytes) -> None:
        assert data[:4] == b"\x7fELF", "not an ELF file"
        assert data[4] == 2 and data[5] == 1, "not a 64-bit little-endian ELF file"
        self.data = data
        self.type, self.machine = struct.unpack_from("<HH", data, 16)
        self.phoff, self.shoff = struct.unpack_from("<QQ", data, 32)
        self.phentsize, self.phnum, self.shentsize, self.shnum, self.shstrndx = struct.unpack_from(
            "<HHHHH", data, 54
        )

    def segments(self) -> list[tuple[int, int, int]]:
        """(p_type, p_offset, p_filesz) of each program header."""
        out = []
        for i in range(self.phnum):
            base = self.phoff + i * self.phentsize
            (p_type,) = struct.unpack_from("<I", self.data, base)
            p_offset, _, _, p_filesz = struct.unpack_from("<QQQQ", self.data, base + 8)
            out.append((p_type, p_offset, p_filesz))
        return out

    def needed(self) -> list[int]:
        """The DT_NEEDED entries (string offsets) of the dynamic segment, if there is one."""
        entries = []
        for p_type, offset, size in self.segments():
            if p_type != PT_DYNAMIC:
                continue
            for pos in range(offset, offset + size, 16):
                tag, value = struct.unpack_from("<qQ", self.data, pos)
                if tag == DT_NULL:
                    break
                if tag == DT_NEEDED:
                    entries.append(value)
        return entries

    def section(self, name: str) -> bytes | None:
        def header(i: int) -> tuple[int, int, int]:
            base = self.shoff + i * self.shentsize
            (sh_name,) = struct.unpack_from("<I", self.data, base)
            sh_offset, sh_size = struct.unpack_from("<QQ", self.data, base + 24)
            return sh_name, sh_offset, sh_size

        _, strtab, _ = header(self.shstrndx)
        for i in range(self.shnum):
            sh_name, offset, size = header(i)
            end = self.data.index(b"\0", strtab + sh_name)
            if self.data[strtab + sh_name : end].decode() == name:
                return self.data[offset : offset + size]
        return None


def run_for(arch: str, exe: Path, *args: str) -> str:
    """Runs a binary for ``arch``: directly when it is this machine's, else under QEMU user mode."""
    command = [str(exe), *args]
    if arch != HOST_ARCH:
        qemu = shutil.which(QEMU[arch])
        assert qemu, f"{QEMU[arch]} is not installed (scripts/stack-up installs qemu-user-static)"
        command.insert(0, qemu)
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{command}: {result.stderr}"
    return result.stdout


def regular_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


# -- bpftool -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpftool(stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bpftool for linux/amd64 and linux/arm64 exported to a local directory, one subdirectory each.

    Built once for the module, in a project set up as the ``project`` fixture does.
    """
    root = tmp_path_factory.mktemp("bpftool")
    shutil.copytree(ROOT / "images", root / "project" / "images")
    env = dict(os.environ, LLBGEN_CONFIG=stack["LLBGEN_CONFIG"], BUILDKIT_HOST=stack["BUILDKIT_HOST"])
    out = root / "out"
    log = build_ok(
        Cli(root / "project", env), "bpftool", "--platform", "linux/amd64,linux/arm64",
        "--output", f"type=local,dest={out}",
    )  # fmt: skip
    # The step that says which Debian revision the build used (when it runs; else it is CACHED).
    assert "download Debian source package linux " + PINS.LINUX_VERSION in log
    return out


@pytest.mark.buildkit
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_bpftool_is_one_static_binary_for_its_platform(bpftool: Path, arch: str) -> None:
    root = bpftool / f"linux_{arch}"
    assert regular_files(root) == ["usr/local/bin/bpftool"]
    exe = root / "usr/local/bin/bpftool"
    assert stat.S_IMODE(exe.stat().st_mode) == 0o755
    elf = Elf(exe.read_bytes())
    assert elf.machine == MACHINE[arch]
    assert PT_INTERP not in [s[0] for s in elf.segments()], "has a program interpreter: dynamically linked"
    assert elf.needed() == [], "has DT_NEEDED entries: links shared libraries"
    assert elf.section(".symtab") is None, "not stripped"


@pytest.mark.buildkit
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_bpftool_version_and_provenance_match_the_pins(bpftool: Path, arch: str) -> None:
    exe = bpftool / f"linux_{arch}" / "usr/local/bin/bpftool"
    output = run_for(arch, exe, "version")
    # bpftool's own version (libbpf's + 6), then the kernel source it was built from, as Debian does.
    first = output.splitlines()[0]
    assert re.fullmatch(rf"bpftool v\d+\.\d+\.\d+\+{re.escape(PINS.LINUX_VERSION)}", first), output
    assert "using libbpf v" in output
    info = json.loads(run_for(arch, exe, "--json", "version"))
    assert info["version"].endswith("+" + PINS.LINUX_VERSION)

    # The exact Debian revisions this binary was built from, in its .llbgen.provenance section.
    section = Elf(exe.read_bytes()).section(".llbgen.provenance")
    assert section is not None, "no .llbgen.provenance section"
    lines = section.decode().splitlines()
    linux = re.escape(PINS.LINUX_VERSION)
    elfutils = re.escape(PINS.ELFUTILS_VERSION)
    assert re.fullmatch(
        rf"linux {linux}-\S+ linux_{linux}\.orig\.tar\.\w+ sha256:{PINS.LINUX_ORIG_SHA256}", lines[0]
    ), lines
    assert re.fullmatch(
        rf"elfutils {elfutils}-\S+ elfutils_{elfutils}\.orig\.tar\.\w+ sha256:{PINS.ELFUTILS_ORIG_SHA256}",
        lines[1],
    ), lines
    assert any(line.startswith(f"zlib1g-dev:{arch} ") for line in lines), lines
    assert any(line.startswith(f"libzstd-dev:{arch} ") for line in lines), lines


@pytest.mark.buildkit
def test_bpftool_pin_gone_from_the_mirror_says_how_to_move_it(project: Cli) -> None:
    result = build(
        project, "bpftool", "--platform", "linux/amd64",
        "--arg", "LINUX_VERSION=6.12.0", "--arg", "LINUX_ORIG_SHA256=" + "0" * 64,
    )  # fmt: skip
    assert result.returncode == 1
    message = result.stderr
    assert "no longer has source package linux at the pinned upstream version 6.12.0" in message
    assert "LINUX_VERSION" in message and "LINUX_ORIG_SHA256" in message
    # ... and lists what the mirror has, with the checksums to pin.
    assert re.search(r"6\.12\.\d+-\S+ [0-9a-f]{64} linux_6\.12\.\d+\.orig\.tar\.xz", message), message


# -- compilers -----------------------------------------------------------------------------------

CHECK_COMPILERS = r'''
import llbgen

PLATFORMS = ("linux/amd64", "linux/arm64")

SCRIPT = """
set -eu
cd /out
for cc in gcc g++ aarch64-linux-gnu-gcc aarch64-linux-gnu-g++ x86_64-linux-gnu-gcc x86_64-linux-gnu-g++; do
    echo "$cc $($cc -dumpmachine)" >>dumpmachine
done
cat >/tmp/libs.c <<'EOF'
#include <stdio.h>
#include <zlib.h>
#include <zstd.h>
int main(void) { printf("zlib %s zstd %u\\n", zlibVersion(), ZSTD_versionNumber()); return 0; }
EOF
echo '#include <libelf.h>
int main(void) { return elf_version(EV_CURRENT) == EV_NONE; }' >/tmp/elf.c
for triplet in aarch64-linux-gnu x86_64-linux-gnu; do
    $triplet-gcc -static -o "static-$triplet" /tmp/libs.c -lz -lzstd
    $triplet-gcc -o "libelf-$triplet" /tmp/elf.c -lelf
done
"""


def build(ctx):
    # Each platform's own compilers image, run there (arm64 under QEMU).
    cc = ctx.image("compilers")
    return cc.run(["sh", "-c", SCRIPT], mounts=[llbgen.bind("/out", llbgen.scratch())]).mount("/out")
'''


@pytest.mark.buildkit
def test_compilers_native_and_cross_targets(project: Cli, tmp_path: Path) -> None:
    project.write_image("check-compilers", CHECK_COMPILERS)
    out = tmp_path / "out"
    build_ok(project, "check-compilers", "--platform", "linux/amd64,linux/arm64", "--output", f"type=local,dest={out}")
    for arch, cross_arch in (("amd64", "arm64"), ("arm64", "amd64")):
        root = out / f"linux_{arch}"
        machines = dict(line.split(" ", 1) for line in (root / "dumpmachine").read_text().splitlines())
        assert machines["gcc"] == machines["g++"] == TRIPLET[arch], (arch, machines)
        for target in ("amd64", "arm64"):
            # the native compiler under its triplet name, and the cross compiler to the other arch
            assert machines[f"{TRIPLET[target]}-gcc"] == TRIPLET[target], (arch, machines)
            assert machines[f"{TRIPLET[target]}-g++"] == TRIPLET[target], (arch, machines)
        for target in (arch, cross_arch):
            static = root / f"static-{TRIPLET[target]}"
            elf = Elf(static.read_bytes())
            assert elf.machine == MACHINE[target] and elf.needed() == []
            assert re.fullmatch(r"zlib \S+ zstd \d+\n", run_for(target, static))
            # linked against the libelf of that architecture (the multiarch -dev package)
            assert Elf((root / f"libelf-{TRIPLET[target]}").read_bytes()).machine == MACHINE[target]


# -- graphs (no daemon) --------------------------------------------------------------------------


def _exec_platforms(cli: Cli, *args: str) -> dict[str, str]:
    """Each run step's name, with the architecture it runs on."""
    result = cli("llb", "bpftool", "--format", "json", *args)
    assert result.code == 0, result.stderr
    steps = {}
    for line in result.text.splitlines():
        op = json.loads(line)
        if "exec" in op["Op"]["Op"]:
            name = op["OpMetadata"]["description"]["llb.customname"]
            steps[name] = op["Op"]["platform"]["Architecture"]
    return steps


def test_bpftool_for_arm64_is_cross_compiled_unless_asked_to_emulate(cli: Cli) -> None:
    if HOST_ARCH != "amd64":
        pytest.skip("the expectations below are for an amd64 build machine")
    cross = _exec_platforms(cli, "--platform", "linux/arm64")
    assert set(cross.values()) == {"amd64"}, cross
    assert "build bpftool for arm64 with aarch64-linux-gnu-gcc, static" in cross
    emulated = _exec_platforms(cli, "--platform", "linux/arm64", "--arg", "BUILD=emulated")
    assert emulated["build bpftool for arm64 natively, static"] == "arm64"
    assert emulated["build a static libelf for arm64 natively"] == "arm64"


def test_compilers_from_a_published_digest(cli: Cli) -> None:
    ref = "127.0.0.1:5000/llbgen/compilers@sha256:" + "1" * 64
    result = cli("llb", "bpftool", "--platform", "linux/arm64", "--format", "json", "--arg", f"COMPILERS={ref}")
    assert result.code == 0, result.stderr
    ops = [json.loads(line) for line in result.text.splitlines()]
    sources = {op["Op"]["Op"]["source"]["identifier"] for op in ops if "source" in op["Op"]["Op"]}
    assert f"docker-image://{ref}" in sources
    names = [op["OpMetadata"].get("description", {}).get("llb.customname", "") for op in ops]
    assert not any(n.startswith("install the toolchain") for n in names), "built compilers anyway"
    assert FAKE_DEBIAN.split("@")[0] in " ".join(sources)  # the source downloads still use the base

    unpinned = cli("llb", "bpftool", "--platform", "linux/arm64", "--arg", "COMPILERS=127.0.0.1:5000/llbgen/compilers:latest")
    assert unpinned.code == 1 and "must be pinned by digest" in unpinned.stderr


def test_bpftool_from_upstream_tarballs_is_pinned_by_checksum(cli: Cli) -> None:
    sha = "a" * 64
    result = cli("llb", "bpftool", "--format", "json", "--arg", "SOURCE=upstream", "--arg", f"LINUX_TARBALL_SHA256={sha}")
    assert result.code == 0, result.stderr
    http = {}
    for line in result.text.splitlines():
        source = json.loads(line)["Op"]["Op"].get("source", {})
        if source.get("identifier", "").startswith("https://"):
            http[source["identifier"].rsplit("/", 1)[1]] = source["attrs"]["http.checksum"]
    assert http == {
        f"linux-{PINS.LINUX_VERSION}.tar.xz": f"sha256:{sha}",
        f"elfutils-{PINS.ELFUTILS_VERSION}.tar.bz2": f"sha256:{PINS.ELFUTILS_TARBALL_SHA256[PINS.ELFUTILS_VERSION]}",
    }
    assert PINS.ELFUTILS_VERSION == "0.192" and http["elfutils-0.192.tar.bz2"] == f"sha256:{ELFUTILS_0_192_TARBALL_SHA256}"
    missing = cli("llb", "bpftool", "--arg", "SOURCE=upstream")
    assert missing.code == 1 and "LINUX_TARBALL_SHA256" in missing.stderr


@pytest.mark.buildkit
@pytest.mark.parametrize("image", ["bpftool", "compilers", "compilers-ccache", "checkpatch"])
def test_structure_tests_pass_on_both_platforms(project: Cli, image: str) -> None:
    """`llbgen test IMAGE`: the image's declared checks, amd64 natively and arm64 under QEMU."""
    result = subprocess.run(
        [sys.executable, "-m", "llbgen", "test", image, "--platform", "linux/amd64,linux/arm64", "--progress", "plain"],
        cwd=project.cwd,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"^{image}: (\d+) passed, 0 failed", result.stdout, re.M), result.stdout

"""The llvm image (``images/llvm``): its graph, its pins and its checks; on the stack, the CI-sized build.

The full build takes about 1.5 hours per platform on the project's 2-core machine, so CI stops at the
cmake configure (``--arg STAGE=configure``): the native tablegens built, and the configure of both
targets done with them, which is where a BPF-only, static, cross configuration shows; and
``--arg STAGE=mc``, llvm-mc alone for amd64 from that configure (about 7 minutes cold), on which
the image's own "BPF only" check runs its passing path. The full build and its structure tests
are ``make e2e-llvm``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import os
import re
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from llbgen.llb.definition import Definition, marshal
from llbgen.llb.errors import DefinitionError
from llbgen.llb.platform import Platform
from llbgen.pb import ops_pb2
from llbgen.project import Project
from llbgen.structure import CommandTest
from llbgen.structure.evaluate import CommandOutcome, evaluate
from llbgen.structure.runner import checks_for, load_suite
from tests.conftest import FAKE_DEBIAN, ROOT, Cli

AMD64, ARM64 = Platform.parse("linux/amd64"), Platform.parse("linux/arm64")
PLATFORMS = [AMD64, ARM64]
#: How long the configure stage may take here cold (measured: about 10 minutes).
CONFIGURE_TIMEOUT = 45 * 60
#: How long STAGE=mc may take on top of a cached configure stage (measured cold: 7.2 minutes, 376 ninja steps).
MC_TIMEOUT = 45 * 60
# sha256 of LLVM's llvm-project-19.1.7.src.tar.xz as another packager pins the same release tarball,
# not read from images/llvm: Homebrew's Formula/l/llvm@19.rb (Homebrew/homebrew-core, as its fork
# zalt50/homebrew-core holds it at commit 1b457a061683c02864dc08a9dfc4381a34fbfea4; url is the same
# GitHub release asset).
LLVM_19_1_7_TARBALL_SHA256 = "82401fea7b79d0078043f7598b835284d6650a75b93e64b6f761ea7b63097501"


def _module(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


image = _module("tests_llvm_image", ROOT / "images" / "llvm" / "image.py")
checks = _module("tests_llvm_checks", ROOT / "images" / "llvm" / "tests.py")


@pytest.fixture
def fake_project(tmp_path: Path) -> Project:
    bases = tmp_path / "bases.json"
    bases.write_text(json.dumps({"debian:trixie": FAKE_DEBIAN}))
    return Project(ROOT / "images", bases_file=bases)


def graph(project: Project, target: Platform, **args: str) -> Definition:
    """The llvm graph for ``target``, built on linux/amd64 (the project's machine)."""
    return marshal(project.state("llvm", project.context(target, args, AMD64)), platform=target)


def ops(definition: Definition) -> list[ops_pb2.Op]:
    return [ops_pb2.Op.FromString(data) for data in definition.ops]


def runs(definition: Definition) -> dict[str, ops_pb2.Op]:
    """The exec ops by the name of their script (``sh -c SCRIPT NAME ...``), or their command."""
    found = {}
    for op in ops(definition):
        if op.WhichOneof("op") == "exec":
            args = list(op.exec.meta.args)
            found[args[3] if args[:2] == ["sh", "-c"] and len(args) > 3 else " ".join(args)] = op
    return found


def cmake_options(op: ops_pb2.Op) -> set[str]:
    return {a for a in op.exec.meta.args if a.startswith("-D")}


# -- the graph -------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["image", "configure", "mc"])
@pytest.mark.parametrize("target", PLATFORMS, ids=str)
def test_graph_marshals_and_everything_runs_on_the_build_platform(
    fake_project: Project, target: Platform, stage: str
) -> None:
    definition = graph(fake_project, target, STAGE=stage)
    steps = runs(definition)
    assert {"native", "configure"} <= set(steps)
    assert ("compile" in steps) == (stage != "configure")
    # every step runs on linux/amd64: arm64 is cross-compiled there, nothing runs under QEMU
    for op in ops(definition):
        if op.WhichOneof("op") == "exec":
            assert (op.platform.OS, op.platform.Architecture) == ("linux", "amd64"), op.exec.meta.args[:4]

    native, configure = cmake_options(steps["native"]), cmake_options(steps["configure"])
    common = {
        "-DLLVM_TARGETS_TO_BUILD=BPF", "-DLLVM_ENABLE_PROJECTS=clang", "-DCMAKE_BUILD_TYPE=Release",
        "-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache",
    }  # fmt: skip
    assert common <= native and common <= configure
    assert {
        "-DLLVM_BUILD_STATIC=ON", "-DLLVM_TABLEGEN=/native/bin/llvm-tblgen",
        "-DCLANG_TABLEGEN=/native/bin/clang-tblgen", "-DLLVM_NATIVE_TOOL_DIR=/native/bin",
    } <= configure  # fmt: skip
    assert not any(o.startswith(("-DLLVM_BUILD_STATIC", "-DLLVM_TABLEGEN")) for o in native)
    # clang without -target compiles for BPF; the native tablegens' tree does not need to know
    assert "-DLLVM_DEFAULT_TARGET_TRIPLE=bpf" in configure
    assert not any(o.startswith("-DLLVM_DEFAULT_TARGET_TRIPLE") for o in native)
    assert "patch" not in steps  # no images/llvm/patches: the graph has no patch step
    cross = {
        "-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
        "-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc", "-DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++",
        "-DLLVM_HOST_TRIPLE=aarch64-linux-gnu",
    }  # fmt: skip
    if target == ARM64:
        assert cross <= configure
    else:
        assert not any(o.startswith(("-DCMAKE_SYSTEM_NAME", "-DLLVM_HOST_TRIPLE")) for o in configure)

    # the native tablegens and the compile share one ccache directory per build platform, locked
    for name in ("native", "compile") if stage != "configure" else ("native",):
        [mount] = [m for m in steps[name].exec.mounts if m.mountType == ops_pb2.CACHE]
        assert (mount.dest, mount.cacheOpt.ID, mount.cacheOpt.sharing) == (
            "/ccache", "llvm-ccache-linux_amd64", ops_pb2.LOCKED
        )


def test_native_tablegens_are_one_step_for_both_targets_and_configure_is_a_prefix_of_the_build(
    fake_project: Project,
) -> None:
    native = {t: runs(graph(fake_project, t, STAGE="configure"))["native"].SerializeToString() for t in PLATFORMS}
    assert native[AMD64] == native[ARM64]  # the same op: one build of the tablegens for both
    for target in PLATFORMS:
        configure = graph(fake_project, target, STAGE="configure")
        full = graph(fake_project, target)
        # CI's stage is the full build's own steps (same digests), so its cache carries over
        assert set(configure.digests[:-2]) <= set(full.digests)
        assert runs(configure)["configure"] == runs(full)["configure"]


def test_mc_stage_shares_the_configure_and_compiles_llvm_mc_alone(fake_project: Project) -> None:
    configure = graph(fake_project, AMD64, STAGE="configure")
    mc, full = graph(fake_project, AMD64, STAGE="mc"), graph(fake_project, AMD64)
    # the configure stage's steps are the mc stage's own (same digests): CI's configure cache carries over
    assert set(configure.digests[:-2]) <= set(mc.digests)
    assert runs(mc)["configure"] == runs(full)["configure"]
    compile_mc, compile_full = runs(mc)["compile"], runs(full)["compile"]
    env = dict(e.split("=", 1) for e in compile_mc.exec.meta.env)
    assert env["TOOLS"] == "llvm-mc"
    # the same script and mounts as the full compile: only the tools differ
    assert list(compile_mc.exec.meta.args) == list(compile_full.exec.meta.args)
    assert compile_mc.exec.mounts == compile_full.exec.mounts


@pytest.mark.parametrize("source", ["debian", "upstream"])
@pytest.mark.parametrize("target", PLATFORMS, ids=str)
def test_every_source_is_pinned(fake_project: Project, target: Platform, source: str) -> None:
    """Images by digest, http by checksum, Debian source packages by version (and orig checksum)."""
    definition = graph(fake_project, target, SOURCE=source)
    http = {}
    for op in ops(definition):
        if op.WhichOneof("op") != "source":
            continue
        identifier = op.source.identifier
        scheme = identifier.split("://", 1)[0]
        if scheme == "docker-image":
            assert re.search(r"@sha256:[0-9a-f]{64}$", identifier), identifier
        elif scheme in ("http", "https"):
            http[identifier] = op.source.attrs["http.checksum"]
        else:
            pytest.fail(f"unexpected source in the llvm graph: {identifier}")
    release = "https://github.com/llvm/llvm-project/releases/download/llvmorg-19.1.7/llvm-project-19.1.7.src.tar.xz"
    assert http == ({release: f"sha256:{LLVM_19_1_7_TARBALL_SHA256}"} if source == "upstream" else {})
    # a Debian source package is fetched by a step given its name, upstream version and orig checksum
    fetches = [
        args[args.index(image.PACKAGE):][:3] for args in (list(op.exec.meta.args) for op in ops(definition)
        if op.WhichOneof("op") == "exec") if image.PACKAGE in args and image.LLVM_ORIG_SHA256 in args
    ]  # fmt: skip
    expected = [[image.PACKAGE, "19.1.7", image.LLVM_ORIG_SHA256]] if source == "debian" else []
    assert fetches == expected


def test_the_compilers_image_can_be_a_pinned_digest(fake_project: Project) -> None:
    ref = "127.0.0.1:5000/llbgen/compilers@sha256:" + "1" * 64
    definition = graph(fake_project, ARM64, COMPILERS=ref)
    identifiers = {op.source.identifier for op in ops(definition) if op.WhichOneof("op") == "source"}
    assert f"docker-image://{ref}" in identifiers
    with pytest.raises(DefinitionError, match="must be pinned by digest"):
        graph(fake_project, ARM64, COMPILERS="127.0.0.1:5000/llbgen/compilers:latest")


def test_patches_are_applied_in_order_before_everything_else(tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(ROOT / "images", images, ignore=shutil.ignore_patterns("__pycache__"))
    patches = images / "llvm" / "patches"
    patches.mkdir()
    (patches / "0002-second.patch").write_text("--- a/llvm/b\n+++ b/llvm/b\n")
    (patches / "0001-first.patch").write_text("--- a/llvm/a\n+++ b/llvm/a\n")
    bases = tmp_path / "bases.json"
    bases.write_text(json.dumps({"debian:trixie": FAKE_DEBIAN}))
    definition = graph(Project(images, bases_file=bases), AMD64)
    steps = runs(definition)
    assert "patch -p1" in steps["patch"].exec.meta.args[2]
    by_digest = dict(zip(definition.digests, ops(definition)))
    # the patch files, in order, with their bytes, are what the patch step mounts at /patches
    (files,) = [by_digest[i.digest] for i, m in _mounted(steps["patch"], "/patches")]
    assert [(a.mkfile.path, a.mkfile.data) for a in files.file.actions] == [
        ("/0001-first.patch", b"--- a/llvm/a\n+++ b/llvm/a\n"),
        ("/0002-second.patch", b"--- a/llvm/b\n+++ b/llvm/b\n"),
    ]
    # and the patched tree is what the native tablegens read at /src
    (patched,) = [by_digest[i.digest] for i, m in _mounted(steps["native"], "/src")]
    assert patched == steps["patch"]


def _mounted(op: ops_pb2.Op, target: str) -> list[tuple[ops_pb2.Input, ops_pb2.Mount]]:
    return [(op.inputs[m.input], m) for m in op.exec.mounts if m.dest == target]


@pytest.mark.parametrize(
    "args, message",
    [
        ({"STAGE": "link"}, "STAGE=link: expected one of image, configure, mc"),
        ({"SOURCE": "git"}, "SOURCE=git: expected one of debian, upstream"),
        ({"SOURCE": "upstream", "LLVM_VERSION": "19.1.8", "LLVM_ORIG_SHA256": "0" * 64},
         "SOURCE=upstream needs --arg LLVM_TARBALL_SHA256="),
        ({"JOBS": "0"}, "JOBS=0: expected a positive number"),
        ({"LLVM_VERSION": "19.1.8"}, "needs --arg LLVM_ORIG_SHA256="),
    ],
)
def test_build_args_are_checked(fake_project: Project, args: dict[str, str], message: str) -> None:
    with pytest.raises(DefinitionError, match=re.escape(message)):
        graph(fake_project, AMD64, **args)


# -- the structure tests ---------------------------------------------------------------------------

BPF_ONLY_LLC = """\
LLVM (http://llvm.org/):
  LLVM version 19.1.7
  Optimized build.
  Default target: x86_64-unknown-linux-gnu
  Host CPU: znver4

  Registered Targets:
    bpf    - BPF (host endian)
    bpfeb  - BPF (big endian)
    bpfel  - BPF (little endian)
"""

# `llc-19 --version` of Debian's llvm-19 1:19.1.7-3 (trixie, amd64), as the stack test below got it.
DEBIAN_LLC_19 = """\
Debian LLVM version 19.1.7
  Optimized build.
  Default target: x86_64-pc-linux-gnu
  Host CPU: znver4

  Registered Targets:
    aarch64     - AArch64 (little endian)
    aarch64_32  - AArch64 (little endian ILP32)
    aarch64_be  - AArch64 (big endian)
    amdgcn      - AMD GCN GPUs
    arm         - ARM
    arm64       - ARM64 (little endian)
    arm64_32    - ARM64 (little endian ILP32)
    armeb       - ARM (big endian)
    avr         - Atmel AVR Microcontroller
    bpf         - BPF (host endian)
    bpfeb       - BPF (big endian)
    bpfel       - BPF (little endian)
    hexagon     - Hexagon
    lanai       - Lanai
    loongarch32 - 32-bit LoongArch
    loongarch64 - 64-bit LoongArch
    m68k        - Motorola 68000 family
    mips        - MIPS (32-bit big endian)
    mips64      - MIPS (64-bit big endian)
    mips64el    - MIPS (64-bit little endian)
    mipsel      - MIPS (32-bit little endian)
    msp430      - MSP430 [experimental]
    nvptx       - NVIDIA PTX 32-bit
    nvptx64     - NVIDIA PTX 64-bit
    ppc32       - PowerPC 32
    ppc32le     - PowerPC 32 LE
    ppc64       - PowerPC 64
    ppc64le     - PowerPC 64 LE
    r600        - AMD GPUs HD2XXX-HD6XXX
    riscv32     - 32-bit RISC-V
    riscv64     - 64-bit RISC-V
    sparc       - Sparc
    sparcel     - Sparc LE
    sparcv9     - Sparc V9
    systemz     - SystemZ
    thumb       - Thumb
    thumbeb     - Thumb (big endian)
    ve          - VE
    wasm32      - WebAssembly 32-bit
    wasm64      - WebAssembly 64-bit
    x86         - 32-bit X86: Pentium-Pro and above
    x86-64      - 64-bit X86: EM64T and AMD64
    xcore       - XCore
    xtensa      - Xtensa 32
"""


def test_the_bpf_only_check_passes_on_bpf_only_and_fails_on_a_multi_target_llc() -> None:
    check = checks.only_bpf_targets()
    assert evaluate(check, CommandOutcome(0, BPF_ONLY_LLC)) == []
    problems = evaluate(check, CommandOutcome(0, DEBIAN_LLC_19))
    assert problems == [
        f"stdout: excluded /{checks.OTHER_TARGET}/ found in line '    aarch64     - AArch64 (little endian)'"
    ]
    # only one other target, after the BPF ones, is enough; a missing BPF target fails too
    assert evaluate(check, CommandOutcome(0, BPF_ONLY_LLC + "    x86-64 - 64-bit X86: EM64T and AMD64\n"))
    assert evaluate(check, CommandOutcome(0, BPF_ONLY_LLC.replace("    bpfeb  - BPF (big endian)\n", ""))) == [
        r"stdout: expected /^ +bpfeb +- BPF \(/ not found"
    ]
    version = checks.version_test("llc", ["llc", "--version"])
    assert evaluate(version, CommandOutcome(0, BPF_ONLY_LLC)) == []
    assert evaluate(version, CommandOutcome(0, DEBIAN_LLC_19)) == []
    assert evaluate(version, CommandOutcome(0, BPF_ONLY_LLC.replace("19.1.7", "19.1.70")))


@pytest.mark.parametrize("target", PLATFORMS, ids=str)
def test_tests_py_checks_each_platform(fake_project: Project, target: Platform) -> None:
    ctx = fake_project.context(target, {}, AMD64)
    declared = {c.name: c for c in checks_for(load_suite(fake_project, "llvm"), ctx)}
    for binary in ("clang", "llc", "llvm-objcopy", "llvm-strip"):
        assert f"{binary} --version is 19.1.7" in declared
        static = declared[f"{binary} is static"]
        assert isinstance(static, CommandTest)
        machine = {"amd64": 62, "arm64": 183}[target.architecture]
        assert rf"^elf: type=2 machine={machine} interp=0 dynamic=0$" in static.expected_output
    assert "llc lists the BPF targets and no other" in declared
    assert "clang -O2 -target bpf -c makes a BPF ELF object" in declared


@pytest.mark.parametrize("target", PLATFORMS, ids=str)
def test_the_static_check_accepts_what_ldd_prints_for_a_static_binary(fake_project: Project, target: Platform) -> None:
    """Debian's ldd indents its verdict with a tab (as the first full arm64 build showed)."""
    ctx = fake_project.context(target, {}, AMD64)
    [static] = [c for c in checks_for(load_suite(fake_project, "llvm"), ctx) if c.name == "clang is static"]
    machine = {"amd64": 62, "arm64": 183}[target.architecture]
    elf = f"elf: type=2 machine={machine} interp=0 dynamic=0\n"
    assert evaluate(static, CommandOutcome(0, elf + "ldd: \tnot a dynamic executable\n")) == []
    assert evaluate(static, CommandOutcome(0, elf + "ldd:         statically linked\n")) == []
    dynamic = f"elf: type=3 machine={machine} interp=1 dynamic=1\nldd: \tlinux-vdso.so.1 (0x00007ffd)\n"
    assert len(evaluate(static, CommandOutcome(0, dynamic))) == 2


def test_elf_info_reads_the_headers(tmp_path: Path) -> None:
    """The shell function the checks use, on this machine's own binaries (x86-64, dynamic)."""
    script = checks.ELF_INFO + 'elf_info "$1"'
    out = subprocess.run(["sh", "-c", script, "sh", sys.executable], capture_output=True, text=True, check=True)
    assert re.fullmatch(r"type=[23] machine=62 interp=1 dynamic=1\n", out.stdout), out.stdout
    (tmp_path / "text").write_text("hello\n")
    out = subprocess.run(["sh", "-c", script, "sh", str(tmp_path / "text")], capture_output=True, text=True)
    assert out.returncode == 1 and "not an ELF file" in out.stdout


# -- on the stack ----------------------------------------------------------------------------------


def llbgen(project: Cli, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m llbgen`` in the project, for steps longer than the ``Cli`` fixture allows."""
    return subprocess.run(
        [sys.executable, "-m", "llbgen", *args], cwd=project.cwd, env=project.env,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def cmake_cache(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_-]+):[A-Z]+=(.*)$", line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


def elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", path
    return int.from_bytes(header[18:20], "little")


@pytest.mark.buildkit
def test_configure_stage_for_both_platforms(project: Cli, tmp_path: Path) -> None:
    """The llvm graph up to its cmake configure and native tablegens, amd64 and arm64 (cross)."""
    out = tmp_path / "out"
    start = time.monotonic()
    result = llbgen(
        project, "build", "llvm", "--platform", "linux/amd64,linux/arm64", "--arg", "STAGE=configure",
        "--progress", "plain", "-o", f"type=local,dest={out}", timeout=CONFIGURE_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-6000:]
    print(f"STAGE=configure for both platforms: {time.monotonic() - start:.0f} s")

    native_bins = {}
    for target in PLATFORMS:
        root = out / target.id
        native = cmake_cache(root / "native" / "CMakeCache.txt")
        assert native["LLVM_TARGETS_TO_BUILD"] == "BPF" and native["CMAKE_BUILD_TYPE"] == "Release"
        assert native["LLVM_HOST_TRIPLE"] == "x86_64-unknown-linux-gnu"
        # the tablegens ran (in the step that built them), and are build-platform binaries
        versions = (root / "native" / "tblgen-versions.txt").read_text()
        for tablegen in image.TABLEGENS:
            assert re.search(rf"^{tablegen}: .*LLVM version 19\.1\.7", versions, re.M), versions
            assert elf_machine(root / "native" / "bin" / tablegen) == 62
        native_bins[target] = {t: (root / "native" / "bin" / t).read_bytes() for t in image.TABLEGENS}

        cache = cmake_cache(root / "target" / "CMakeCache.txt")
        assert cache["LLVM_TARGETS_TO_BUILD"] == "BPF"
        assert cache["LLVM_ENABLE_PROJECTS"] == "clang"
        assert cache["CMAKE_BUILD_TYPE"] == "Release"
        assert cache["LLVM_BUILD_STATIC"] == "ON"
        assert cache["LLVM_TABLEGEN"] == "/native/bin/llvm-tblgen"
        assert cache["CLANG_TABLEGEN"] == "/native/bin/clang-tblgen"
        assert cache["LLVM_NATIVE_TOOL_DIR"] == "/native/bin"
        if target == ARM64:
            assert cache["LLVM_HOST_TRIPLE"] == "aarch64-linux-gnu"
            assert cache["CMAKE_CXX_COMPILER"] == "/usr/bin/aarch64-linux-gnu-g++"
            assert cache["CMAKE_AR"] == "/usr/bin/aarch64-linux-gnu-ar"
        else:
            assert cache["LLVM_HOST_TRIPLE"] == "x86_64-unknown-linux-gnu"
            assert cache["CMAKE_CXX_COMPILER"] == "/usr/bin/c++"
        # the target build runs exactly the native tablegens, and configures no NATIVE sub-build
        target_dir = root / "target"
        assert (target_dir / "llbgen-tablegens.txt").read_text().split() == sorted(
            f"/native/bin/{t}" for t in image.TABLEGENS
        )
        assert (target_dir / "llbgen-native-subbuilds.txt").read_text().strip() == "0"
        # and the configure step of the target ran them too
        versions = (target_dir / "llbgen-tblgen-versions.txt").read_text()
        assert all(re.search(rf"^{t}: .*LLVM version 19\.1\.7", versions, re.M) for t in image.TABLEGENS)
        assert "Build files have been written to: /build" in (target_dir / "llbgen-cmake.log").read_text()
        # "llvm-toolchain-19 1:19.1.7-3 llvm-toolchain-19_19.1.7.orig.tar.xz sha256:...": the revision used
        provenance = (root / "native" / ".provenance").read_text().split()
        assert provenance[0] == "llvm-toolchain-19" and re.fullmatch(r"1:19\.1\.7-\S+", provenance[1])
        assert provenance[2:] == ["llvm-toolchain-19_19.1.7.orig.tar.xz", f"sha256:{image.LLVM_ORIG_SHA256}"]
    # the native tablegens were built once, for both targets
    assert native_bins[AMD64] == native_bins[ARM64]


MULTI_TARGET_IMAGE = """\
import llbgen

PLATFORMS = ("linux/amd64",)

def build(ctx):
    return ctx.base_image("debian:trixie").run(
        ["sh", "-c", "apt-get update -q && apt-get install -y -q --no-install-recommends llvm-19"],
        env={"DEBIAN_FRONTEND": "noninteractive"}, network="host", name="install Debian's llvm-19",
    ).root
"""

MULTI_TARGET_TESTS = """\
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("llvm_checks", Path(__file__).parent.parent / "llvm" / "tests.py")
llvm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(llvm)

TESTS = [
    llvm.only_bpf_targets(["llc-19", "--version"]),
    llvm.version_test("llc", ["llc-19", "--version"]),
]
"""


@pytest.mark.buildkit
def test_the_bpf_only_check_fails_on_debians_multi_target_llc(project: Cli) -> None:
    """The llvm image's own check, run by ``llbgen test`` against Debian's llc-19 (every target)."""
    project.write_image("multi-target-llc", MULTI_TARGET_IMAGE)
    (project.cwd / "images" / "multi-target-llc" / "tests.py").write_text(textwrap.dedent(MULTI_TARGET_TESTS))
    result = llbgen(project, "test", "multi-target-llc", "--progress", "plain", timeout=15 * 60)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    report = result.stdout
    assert re.search(r"^FAIL +linux/amd64 +command +llc lists the BPF targets and no other$", report, re.M), report
    assert "found in line '    aarch64     - AArch64 (little endian)'" in report
    assert re.search(r"^PASS +linux/amd64 +command +llc --version is 19\.1\.7$", report, re.M), report
    assert "1 passed, 1 failed" in report


# The llvm image's tests.py, replaced (in the test's copy of the project) by the image's own
# BPF-only check aimed at llvm-mc, and a wrong expectation on the same binary that must fail.
MC_TESTS = """\
import importlib.util
from pathlib import Path

from llbgen.structure import CommandTest

spec = importlib.util.spec_from_file_location("llvm_checks", Path(__file__).parent / "checks.py")
llvm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(llvm)

TESTS = [
    llvm.only_bpf_targets(("llvm-mc", "--version"), name="llvm-mc lists the BPF targets and no other"),
    CommandTest("llvm-mc lists x86-64 (wrong)", ["llvm-mc", "--version"], expected_output=r"^ +x86-64 +- "),
]
"""


@pytest.mark.buildkit
def test_the_bpf_only_check_passes_on_a_bpf_only_llvm_mc(project: Cli) -> None:
    """The llvm image's own BPF-only check, run by ``llbgen test`` on a real BPF-only binary: llvm-mc
    of ``--arg STAGE=mc`` (the llvm image's configure, then llvm-mc alone: ``llc`` is too long for CI),
    which prints the "Registered Targets" list through the same LLVM function as llc."""
    llvm_dir = project.cwd / "images" / "llvm"
    (llvm_dir / "tests.py").rename(llvm_dir / "checks.py")
    (llvm_dir / "tests.py").write_text(MC_TESTS)
    start = time.monotonic()
    result = llbgen(
        project, "test", "llvm", "--platform", "linux/amd64", "--arg", "STAGE=mc", "-v", "--progress", "plain",
        timeout=MC_TIMEOUT,
    )  # fmt: skip
    print(f"STAGE=mc for linux/amd64 and its tests: {time.monotonic() - start:.0f} s")
    report = result.stdout
    assert result.returncode == 1, report + result.stderr[-6000:]
    assert re.search(r"^PASS +linux/amd64 +command +llvm-mc lists the BPF targets and no other$", report, re.M), report
    assert re.search(r"^FAIL +linux/amd64 +command +llvm-mc lists x86-64 \(wrong\)$", report, re.M), report
    assert r"expected /^ +x86-64 +- / not found" in report
    assert "1 passed, 1 failed" in report


def test_e2e_llvm_make_target_builds_and_tests_both_platforms() -> None:
    dry = subprocess.run(["make", "-s", "-n", "e2e-llvm"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "MAKEFLAGS": ""})  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    commands = dry.stdout.splitlines()
    assert commands[0] == "scripts/stack-up"
    both = "--platform linux/amd64,linux/arm64"
    assert re.fullmatch(rf"time scripts/llbgen build llvm {both} --progress plain *", commands[1])
    assert re.fullmatch(rf"time scripts/llbgen test llvm {both} -v --progress plain *", commands[2])

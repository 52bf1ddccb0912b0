"""The arm64 bpftool built by cross-compilation vs the same build under emulation, side by side.

Both builds start from nothing on a private buildkitd (fresh state, the stack's config and
registry): cross builds the amd64 compilers image and cross-compiles libelf and bpftool for
arm64 (the default); emulated (``--arg BUILD=emulated``) builds the arm64 compilers image and
compiles them natively under QEMU, the way upstream builds today. End-to-end wall time of
``llbgen build bpftool --platform linux/arm64`` each.

Usage: .venv/bin/python benchmarks/bpftool_cross_vs_emulated.py   (needs scripts/stack-up; ~20 min)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from private_daemon import llbgen_env, private_daemon

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="llbgen-bench-"))
    print(f"machine: {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, load {os.getloadavg()[0]:.1f}")
    times = {}
    try:
        for mode in ("cross", "emulated"):
            with private_daemon(work / mode) as address:
                env = llbgen_env(address)
                env.pop("PYTHONDONTWRITEBYTECODE", None)
                start = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "llbgen", "build", "bpftool", "--platform", "linux/arm64",
                     "--arg", f"BUILD={mode}", "--progress", "plain"],
                    cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                times[mode] = time.perf_counter() - start
                print(f"{mode}: {times[mode]:.1f}s")
        print(f"cross-compiled is {times['emulated'] / times['cross']:.1f}x faster end to end (goal >= 10x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

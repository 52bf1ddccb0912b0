"""gcc against Debian's clang as the host compiler of the llvm image: the same sample of its
translation units compiled by both, one at a time, on the stack's daemon (benchmarks/images/hostcc).

Prints each round's seconds per compiler and the ratio of the medians. The llvm image builds with
gcc, Debian's default; this says whether clang would compile it faster (README, "LLVM image").

Usage: .venv/bin/python benchmarks/host_compiler.py [--every N] [--rounds N]   (needs scripts/stack-up)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from private_daemon import llbgen_env, stack_env

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, default=40, help="the sample: every N-th object")
    parser.add_argument("--rounds", type=int, default=2)
    ns = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llbgen-bench-hostcc-"))
    images = work / "images"
    shutil.copytree(ROOT / "images", images, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(Path(__file__).resolve().parent / "images" / "hostcc", images / "hostcc")
    env = llbgen_env(stack_env()["BUILDKIT_HOST"])
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"machine: {os.cpu_count()} cores, {now}, load {os.getloadavg()[0]:.1f}")
    log = work / "build.log"
    with log.open("w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "llbgen", "--images", str(images), "build", "hostcc", "--platform", "linux/amd64",
             "--arg", f"EVERY={ns.every}", "--arg", f"ROUNDS={ns.rounds}", "--progress", "plain",
             "-o", f"type=local,dest={work / 'out'}"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"build failed (log: {log}):\n{log.read_text()[-4000:]}")
    text = log.read_text()
    for line in re.findall(r"llbgen: hostcc: ((?!round ).+)$", text, re.MULTILINE):
        print(line)  # the sample's size, the compilers' versions
    times: dict[str, list[float]] = {}
    rounds = (work / "out" / "times.txt").read_text()
    for compiler, seconds in re.findall(r"^round \d+ (\w+) ([0-9.]+) s$", rounds, re.MULTILINE):
        times.setdefault(compiler, []).append(float(seconds))
    for compiler, values in times.items():
        print(f"{compiler}: {', '.join(f'{v:.1f}' for v in values)} s (rounds)")
    ratio = statistics.median(times["clang"]) / statistics.median(times["gcc"])
    print(f"clang/gcc = {ratio:.2f}; load {os.getloadavg()[0]:.1f}; log {log}")


if __name__ == "__main__":
    main()

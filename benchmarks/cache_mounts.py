"""Cache mounts through the registry: a fresh daemon seeded with ccache against a cold one.

The scenario of tests/test_cachemounts.py, with more to compile: ``tests/data/cachemounts``'s
``ccdemo`` image (gcc through ccache in a locked cache mount) on N generated C files.

1. The stack's daemon builds them and exports its cache mounts (``--cache-mounts-to``).
2. One file changes (one line).
3. A fresh private daemon builds the change seeded with ``--cache-mounts-from``.
4. Another fresh private daemon builds the change cold (no seed).

Both fresh daemons pull the compilers-ccache image (pushed once to the stack's registry and pinned
by digest, so neither builds it). Wall times of whole ``llbgen build`` commands, ccache's hits, and
whether both fresh daemons built the same binary.

Usage: .venv/bin/python benchmarks/cache_mounts.py [--files N]   (needs scripts/stack-up)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from private_daemon import llbgen_env, private_daemon, stack_env

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "tests" / "data" / "cachemounts" / "images"

# Enough work per file for the compiler to matter (about 0.1-0.3 s each at -O2 here).
UNIT = """
static double mix{i}_{j}(double x, int n) {{
    double acc = 0;
    for (int k = 0; k < n; k++) acc += (x * k + {j}) / (k + {i} + 1.0) - acc / (k + {salt}.0);
    return acc;
}}
"""


def sources(dest: Path, files: int, salt: int) -> None:
    """``files`` C files and a main; ``salt``, in every file's code, makes them this run's own."""
    src = dest / "src"
    src.mkdir(parents=True, exist_ok=True)
    calls = []
    for i in range(files):
        body = "".join(UNIT.format(i=i, j=j, salt=salt) for j in range(40))
        total = " + ".join(f"mix{i}_{j}(x, {i % 7 + 3})" for j in range(40))
        (src / f"unit{i}.c").write_text(f"{body}\ndouble unit{i}(double x) {{ return {total}; }}\n")
        calls.append(f"unit{i}(1.5)")
    decls = "".join(f"double unit{i}(double);\n" for i in range(files))
    (src / "main.c").write_text(
        f'#include <stdio.h>\n{decls}int main(void) {{ printf("%f\\n", {" + ".join(calls)}); return 0; }}\n'
    )


def build(env: dict[str, str], address: str, compilers: str, cache_id: str, context: Path, out: Path, *extra: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "llbgen", "--images", str(IMAGES), "build", "ccdemo", "--arg", f"COMPILERS={compilers}",
         "--arg", f"CACHE_ID={cache_id}", "--local", f"context={context}", "--progress", "plain",
         "-o", f"type=local,dest={out}", *extra],
        env=dict(env, BUILDKIT_HOST=address), capture_output=True, text=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"build failed:\n{proc.stderr[-4000:]}")
    return elapsed, proc.stderr


def hits(log: str) -> str:
    found = re.search(r"ccache:\s+Hits:\s+(\d+ / +\d+)", log)
    return re.sub(r" +", " ", found.group(1)) if found else "(compile step cached)"


def step_time(log: str, name: str) -> str:
    """How long the step ``name`` took, from the plain progress (its DONE line)."""
    vertex = re.search(rf"^#(\d+) {re.escape(name)}$", log, re.MULTILINE)
    done = vertex and re.search(rf"^#{vertex.group(1)} DONE ([0-9.]+s)$", log, re.MULTILINE)
    return done.group(1) if done else "?"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=60)
    files = parser.parse_args().files
    stack = stack_env()
    env = llbgen_env()
    registry = f"{stack['LLBGEN_REGISTRY']}/llbgen-bench/cache-mounts-{uuid.uuid4().hex[:12]}"
    print(f"machine: {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.1f}")
    pushed = subprocess.run(
        [sys.executable, "-m", "llbgen", "build", "compilers-ccache", "--platform", "linux/amd64",
         "-o", f"type=image,name={registry}/compilers-ccache:bench,push=true", "--progress", "plain"],
        cwd=ROOT, env=dict(env, BUILDKIT_HOST=stack["BUILDKIT_HOST"]), capture_output=True, text=True,
    )  # fmt: skip
    if pushed.returncode != 0:
        raise SystemExit(pushed.stderr[-4000:])
    compilers = f"{registry}/compilers-ccache:bench@" + re.findall(r"sha256:[0-9a-f]{64}", pushed.stderr)[-1]
    work = Path(tempfile.mkdtemp(prefix="llbgen-bench-cm-"))
    context = work / "context"
    sources(context, files, salt=uuid.uuid4().int % 10**9 + 2)  # new code: in no daemon's nor ccache's cache
    cache = f"{registry}/ccdemo-cache:main"
    cache_id = uuid.uuid4().hex[:12]  # an empty cache mount on the stack's daemon
    elapsed, log = build(env, stack["BUILDKIT_HOST"], compilers, cache_id, context, work / "a", "--cache-mounts-to", cache)
    print(f"{files + 1} files; stack daemon, build and export the cache mounts: {elapsed:.1f} s, ccache hits {hits(log)}")
    main_c = (context / "src" / "unit0.c").read_text()
    (context / "src" / "unit0.c").write_text(main_c.replace("+ 0) /", "+ 100) /", 1))
    results = {}
    for label, extra in (("seeded", ["--cache-mounts-from", cache]), ("cold", [])):
        state = Path(f"/tmp/llbgen-bench-{uuid.uuid4().hex[:8]}")  # short: the daemon's socket is in it
        try:
            with private_daemon(state) as address:
                elapsed, log = build(env, address, compilers, cache_id, context, work / label, *extra)
        finally:
            subprocess.run(["rm", "-rf", str(state)], check=False)
        (work / f"{label}.log").write_text(log)
        results[label] = (work / label / "usr/local/bin/ccdemo").read_bytes()
        print(
            f"fresh daemon, one line changed, {label}: {elapsed:.1f} s (the compile step {step_time(log, 'compile ccdemo')}), "
            f"ccache hits {hits(log)}"
        )
    print(f"same binary seeded and cold: {results['seeded'] == results['cold']}; progress logs in {work}")


if __name__ == "__main__":
    main()

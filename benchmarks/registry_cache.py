"""A registry cache exported by one daemon, imported by a fresh one: bpftool fully cached.

1. The stack's daemon builds bpftool (both platforms) and exports its cache to the stack's
   registry (``--cache-to type=registry,mode=max``).
2. A fresh private daemon (empty state, the stack's configuration) builds it with
   ``--cache-from`` that cache: every step must come from the cache (checked in the progress).
3. Another fresh daemon builds it without any cache, from nothing (``--skip-cold`` to leave out).

Both fresh builds write an OCI tarball with the same SOURCE_DATE_EPOCH and rewritten timestamps;
when their image digests differ, the script says per platform whether the layers or only the
config's history differ. Wall times of whole ``llbgen build`` commands; steps that ran are read
from ``--progress rawjson`` (benchmarks/progress_steps.py).

Usage: .venv/bin/python benchmarks/registry_cache.py [--skip-cold]   (needs scripts/stack-up)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from oci_tarball import platform_images
from private_daemon import llbgen_env, private_daemon, stack_env
from progress_steps import steps_run

ROOT = Path(__file__).resolve().parent.parent
EPOCH = "1700000000"


def build(address: str, *extra: str) -> tuple[float, str, str]:
    """Wall time, progress log and metadata of one ``llbgen build bpftool`` for both platforms."""
    env = llbgen_env(address)
    with tempfile.NamedTemporaryFile(suffix=".json") as metadata:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "llbgen", "build", "bpftool", "--platform", "linux/amd64,linux/arm64",
             "--arg", f"SOURCE_DATE_EPOCH={EPOCH}", "--progress", "rawjson", "--metadata-file", metadata.name, *extra],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )  # fmt: skip
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"build failed:\n{proc.stderr[-4000:]}")
        return elapsed, proc.stderr, Path(metadata.name).read_text()


def main() -> None:
    skip_cold = "--skip-cold" in sys.argv[1:]
    env = stack_env()
    cache = f"{env['LLBGEN_REGISTRY']}/llbgen-bench/bpftool-cache:{uuid.uuid4().hex[:12]}"
    print(f"machine: {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.1f}")
    work = Path(tempfile.mkdtemp(prefix="llbgen-bench-"))
    exported, _, _ = build(env["BUILDKIT_HOST"], "--cache-to", f"type=registry,ref={cache},mode=max")
    print(f"progress logs: {work}")
    print(f"stack daemon: build and export the cache to {cache}: {exported:.1f} s")
    output = "type=oci,dest={},rewrite-timestamp=true,source-date-epoch=" + EPOCH
    results = {}
    runs = [("with the registry cache", ["--cache-from", f"type=registry,ref={cache}"])]
    if not skip_cold:
        runs.append(("without a cache", []))
    for label, extra in runs:
        state = work / label.replace(" ", "-")
        tarball = work / f"{label.replace(' ', '-')}.tar"
        with private_daemon(state) as address:
            elapsed, progress, metadata = build(address, *extra, "-o", output.format(tarball))
        (work / f"{label.replace(' ', '-')}.log").write_text(progress)
        ran = steps_run(progress)
        digest = json.loads(metadata)["containerimage.digest"]
        results[label] = (elapsed, digest, platform_images(tarball))
        print(f"fresh daemon, {label}: {elapsed:.1f} s, {digest}, steps run: {len(ran)}")
        for name in ran:
            print(f"    ran: {name}")
        subprocess.run(["rm", "-rf", str(state)], check=False)
    if len(results) == 2:
        (cached, d1, i1), (cold, d2, i2) = results.values()
        print(f"cached / cold: {cached:.1f} s / {cold:.1f} s ({cold / cached:.1f}x); same digest: {d1 == d2}")
        for arch in sorted(i1):
            (layers1, history1), (layers2, history2) = i1[arch], i2.get(arch, ([], []))
            print(f"    {arch}: same layers: {layers1 == layers2}; history: {history1} / {history2}")


if __name__ == "__main__":
    main()

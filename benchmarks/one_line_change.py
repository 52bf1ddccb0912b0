"""A one-line change to an image's sources on an empty daemon seeded from the registry, against cold.

What a CI runner that starts empty does for every change to an image, with ``llbgen publish``'s
caches (its layers, and its compiler cache through ``--cache-mounts-to``):

cold IMAGE      a fresh private daemon builds IMAGE (both platforms, or --platform) from
                nothing, exporting its registry cache (mode=max) to llbgen-bench/IMAGE-cache:TAG
                and its ccache mounts (IMAGE-ccache-*, the image's CACHE_MOUNTS) to
                llbgen-bench/IMAGE-ccache:TAG in the stack's registry
changed IMAGE   a copy of images/ with benchmarks/patches/IMAGE-one-line.patch in
                IMAGE/patches/, built for the same platforms by another fresh daemon with
                ``--cache-from`` and ``--cache-mounts-from`` those two
both IMAGE      one after the other, in one run (the default)
--layers-only   the changed build imports the registry cache alone, not the cache mounts (what
                an empty runner does without ``--cache-mounts-from``)

Wall times of whole ``llbgen build`` commands, the steps that took a second or more (running, or
pulling a cached result) with their times, and ccache's hits per step, from the plain progress.
The daemons' state goes under --state (default: /var/tmp, which must hold an llvm build's: about
30 GB).

Usage: .venv/bin/python benchmarks/one_line_change.py [cold|changed|both] IMAGE [--tag TAG]
           [--layers-only] [--platform P,...]   (needs scripts/stack-up)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from private_daemon import llbgen_env, private_daemon, stack_env

ROOT = Path(__file__).resolve().parent.parent
PATCHES = Path(__file__).resolve().parent / "patches"
PLATFORMS = "linux/amd64,linux/arm64"


def build(images: Path, address: str, image: str, log: Path, *extra: str) -> float:
    """Wall time of one ``llbgen --images IMAGES build IMAGE``; its log in ``log``."""
    env = llbgen_env(address)
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "llbgen", "--images", str(images), "build", image, "--progress", "plain", *extra],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"build failed (log: {log}):\n{log.read_text()[-4000:]}")
    return elapsed


def step_names(log: str) -> dict[str, str]:
    """The plain progress's step numbers and names (a step's first line is its name)."""
    names: dict[str, str] = {}
    for number, rest in re.findall(r"^#(\d+) (.+)$", log, re.MULTILINE):
        names.setdefault(number, rest)
    return names


def steps(log: str) -> list[tuple[str, float]]:
    """(name, seconds) of the steps that ran for a second or more, from their DONE lines (a cached
    step has none, a step that ran has one even if a later solve found it cached)."""
    names = step_names(log)
    done = re.findall(r"^#(\d+) DONE ([0-9.]+)s$", log, re.MULTILINE)
    return [(names.get(n, f"#{n}"), float(s)) for n, s in done if float(s) >= 1]


def ccache_hits(log: str) -> list[tuple[str, str]]:
    """(step, "hits / cacheable calls") for each step that printed ccache's statistics."""
    names = step_names(log)
    seen: dict[str, str] = {}
    for vertex, hits in re.findall(r"^#(\d+) [0-9.]+ ccache:\s+Hits:\s+(\d+ / +\d+)", log, re.MULTILINE):
        seen.setdefault(names.get(vertex, f"#{vertex}"), re.sub(r" +", " ", hits))
    return list(seen.items())


def report(label: str, elapsed: float, log: Path) -> None:
    text = log.read_text()
    print(f"{label}: {elapsed / 60:.1f} min ({elapsed:.0f} s); load {os.getloadavg()[0]:.1f}; log {log}")
    for name, seconds in sorted(steps(text), key=lambda s: -s[1])[:12]:
        print(f"  {seconds:8.1f} s  {name}")
    for name, hits in ccache_hits(text):
        print(f"  ccache hits {hits}: {name}")
    for line in sorted(set(re.findall(r"llbgen: time: .+$", text, re.MULTILINE))):
        print(f"  {line}")


def fresh_daemon_build(root: Path, images: Path, image: str, label: str, work: Path, *extra: str) -> None:
    state = root / f"llbgen-bench-{uuid.uuid4().hex[:8]}"
    try:
        with private_daemon(state) as address:
            elapsed = build(images, address, image, work / f"{label}.log", *extra)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    report(f"{image}, {label}", elapsed, work / f"{label}.log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="?", choices=("cold", "changed", "both"), default="both")
    patched = sorted(p.name.removesuffix("-one-line.patch") for p in PATCHES.glob("*.patch"))
    parser.add_argument("image", choices=patched)
    parser.add_argument("--tag", default="bench", help="tag of the caches in the registry")
    parser.add_argument("--state", type=Path, default=Path("/var/tmp"), help="where the daemons' state goes")
    parser.add_argument("--layers-only", action="store_true", help="changed: without --cache-mounts-from")
    parser.add_argument("--platform", default=PLATFORMS, help=f"the platforms built (default {PLATFORMS})")
    ns = parser.parse_args()
    registry = f"{stack_env()['LLBGEN_REGISTRY']}/llbgen-bench"
    cache, mounts = f"{registry}/{ns.image}-cache:{ns.tag}", f"{registry}/{ns.image}-ccache:{ns.tag}"
    work = Path(tempfile.mkdtemp(prefix="llbgen-bench-change-"))
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"machine: {os.cpu_count()} cores, {now}, load {os.getloadavg()[0]:.1f}")
    if ns.which in ("cold", "both"):
        fresh_daemon_build(
            ns.state, ROOT / "images", ns.image, "cold", work, "--platform", ns.platform,
            "--cache-to", f"type=registry,ref={cache},mode=max",
            "--cache-mounts-to", f"{mounts},ids={ns.image}-ccache-*",
        )  # fmt: skip
    if ns.which in ("changed", "both"):
        images = work / "images"
        shutil.copytree(ROOT / "images", images, ignore=shutil.ignore_patterns("__pycache__"))
        patches = images / ns.image / "patches"
        patches.mkdir(exist_ok=True)
        shutil.copy(PATCHES / f"{ns.image}-one-line.patch", patches / "9999-one-line.patch")
        seed = [] if ns.layers_only else ["--cache-mounts-from", f"{mounts},ids={ns.image}-ccache-*"]
        label = "one line changed, registry cache only" if ns.layers_only else "one line changed, seeded"
        fresh_daemon_build(
            ns.state, images, ns.image, label, work, "--platform", ns.platform,
            "--cache-from", f"type=registry,ref={cache}", *seed,
        )  # fmt: skip


if __name__ == "__main__":
    main()

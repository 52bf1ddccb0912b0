"""The README's images table: each image built cold on a fresh daemon, its build time and size.

For each image, a fresh private daemon (empty state, the stack's configuration) builds it for
both platforms, as an empty CI runner would (everything it builds in its graph included, e.g.
bpftool's compilers image), into an OCI tarball. Reported: the wall time of the whole
``llbgen build``, and per platform the compressed size of its layers (what a pull downloads) and
their uncompressed size (what it takes on disk).

Usage: .venv/bin/python benchmarks/images.py [IMAGE ...]   (default: every image but llvm, whose
cold build takes hours here; needs scripts/stack-up)
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from private_daemon import llbgen_env, private_daemon

ROOT = Path(__file__).resolve().parent.parent
PLATFORMS = "linux/amd64,linux/arm64"
DEFAULT = ["hello", "checkpatch", "compilers", "compilers-ccache", "bpftool", "maker"]


def cold_build(image: str, address: str, dest: Path) -> float:
    env = llbgen_env(address)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "llbgen", "build", image, "--platform", PLATFORMS,
         "--progress", "plain", "--output", f"type=oci,dest={dest}"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"{image}: build failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def sizes(oci: Path) -> dict[str, tuple[int, int]]:
    """Per platform: (compressed, uncompressed) bytes of the image's layers."""
    with tarfile.open(oci) as tar:

        def blob(digest: str) -> bytes:
            member = tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
            assert member is not None
            return member.read()

        index = json.loads(blob(json.loads(tar.extractfile("index.json").read())["manifests"][0]["digest"]))  # type: ignore[union-attr]
        result = {}
        for entry in index["manifests"]:
            platform = entry.get("platform", {})
            if platform.get("architecture") in (None, "unknown"):
                continue  # attestations
            layers = json.loads(blob(entry["digest"]))["layers"]
            compressed = sum(layer["size"] for layer in layers)
            uncompressed = sum(len(gzip.decompress(blob(layer["digest"]))) for layer in layers)
            result[f"{platform['os']}/{platform['architecture']}"] = (compressed, uncompressed)
        return result


def mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1e7 else f"{n / 1e6:.1f} MB"


def main() -> None:
    images = sys.argv[1:] or DEFAULT
    print(f"machine: {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| image | cold build, both platforms | amd64: pull / on disk | arm64: pull / on disk |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="llbgen-images-", dir="/var/tmp") as work:
        for image in images:
            load = os.getloadavg()[0]
            state = Path(work) / image
            with private_daemon(state) as address:
                elapsed = cold_build(image, address, state / "image.tar")
            per_platform = sizes(state / "image.tar")
            cells = [f"{mb(c)} / {mb(u)}" for c, u in (per_platform[p] for p in PLATFORMS.split(","))]
            print(f"| `{image}` | {elapsed / 60:.1f} min (load {load:.1f} at the start) | {' | '.join(cells)} |", flush=True)
            subprocess.run(["rm", "-rf", str(state)], check=False)


if __name__ == "__main__":
    main()

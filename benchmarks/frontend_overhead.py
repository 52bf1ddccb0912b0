"""What the frontend path costs over ``llbgen build``, for a fully cached build, side by side.

Builds the same image (default images/hello, for linux/amd64 and linux/arm64) on the stack's
daemon (scripts/stack-up) three ways, each run once to warm the cache and then ``--runs`` times,
interleaved so that a change in the machine's load hits all three alike:

  llbgen   python -m llbgen build IMAGE ...                     (gateway-client mode)
  gateway  buildctl build --frontend gateway.v0 --opt source=FRONTEND ...
  syntax   buildctl build --frontend dockerfile.v0 with '# syntax=FRONTEND' on the definition

Wall time of the whole command, as a user waits for it. The frontend image is built from
frontend.Dockerfile and pushed to the stack's registry first, unless --frontend names one.
With --export, every build also writes an OCI tarball (otherwise there is no exporter).

Usage: .venv/bin/python benchmarks/frontend_overhead.py [--runs N] [--image NAME] [--frontend REF] [--export]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STACK = Path(os.environ.get("LLBGEN_STACK_DIR", "/var/lib/llbgen-stack"))
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PLATFORMS = "linux/amd64,linux/arm64"
# Time what users run: with cached bytecode, whatever this shell says.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def stack_env() -> dict[str, str]:
    env = dict(os.environ)
    for line in (STACK / "stack.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            env.setdefault(key.strip(), value.strip())
    return env


def build_frontend(env: dict[str, str], base: str, work: Path) -> str:
    name = f"{env.get('LLBGEN_REGISTRY', '127.0.0.1:5000')}/llbgen/frontend:bench"
    metadata = work / "frontend.json"
    argv = [
        "buildctl", "build", "--frontend", "dockerfile.v0",
        "--local", f"context={ROOT}", "--local", f"dockerfile={ROOT}",
        "--opt", "filename=frontend.Dockerfile", "--opt", f"build-arg:BASE={base}",
        "--output", f"type=image,name={name},push=true", "--metadata-file", str(metadata),
    ]  # fmt: skip
    if CA_BUNDLE.is_file():
        argv += ["--secret", f"id=ca-certificates,src={CA_BUNDLE}"]
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return f"{name}@{json.loads(metadata.read_text())['containerimage.digest']}"


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])} ... failed:\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--image", default="hello")
    parser.add_argument("--frontend", help="frontend image reference (default: build frontend.Dockerfile)")
    parser.add_argument("--export", action="store_true", help="also export an OCI tarball in every build")
    ns = parser.parse_args()

    env = stack_env()
    base = json.loads((STACK / "bases.json").read_text())["debian:trixie"]
    work = Path(tempfile.mkdtemp(prefix="llbgen-frontend-bench-"))
    try:
        frontend = ns.frontend or build_frontend(env, base, work)
        syntax_dir = work / ns.image
        shutil.copytree(ROOT / "images" / ns.image, syntax_dir, ignore=shutil.ignore_patterns("__pycache__"))
        definition = syntax_dir / "image.py"
        definition.write_text(f"# syntax={frontend}\n" + definition.read_text())

        def out(tag: str) -> list[str]:
            return ["--output", f"type=oci,dest={work / tag}.tar"] if ns.export else []

        common = [
            "--local", f"context={ROOT}", "--opt", "filename=image.py", "--opt", f"platform={PLATFORMS}",
            "--opt", f"build-arg:base:debian:trixie={base}", "--progress", "plain",
        ]  # fmt: skip
        commands = {
            "llbgen": [
                sys.executable, "-m", "llbgen", "build", ns.image, "--platform", PLATFORMS,
                "--arg", f"base:debian:trixie={base}", "--progress", "plain",
                *(["-o", f"type=oci,dest={work / 'llbgen'}.tar"] if ns.export else []),
            ],
            "gateway": [
                "buildctl", "build", "--frontend", "gateway.v0", "--opt", f"source={frontend}",
                "--local", f"dockerfile={ROOT / 'images' / ns.image}", *common, *out("gateway"),
            ],
            "syntax": [
                "buildctl", "build", "--frontend", "dockerfile.v0",
                "--local", f"dockerfile={syntax_dir}", *common, *out("syntax"),
            ],
        }  # fmt: skip
        for argv in commands.values():  # warm: every step cached from here on
            timed(argv, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(ns.runs):
            for name, argv in commands.items():
                times[name].append(timed(argv, env))

        print(f"cached build of images/{ns.image} for {PLATFORMS}, {ns.runs} runs each"
              f"{', OCI export' if ns.export else ', no exporter'} (wall time of the command)")  # fmt: skip
        base_median = statistics.median(times["llbgen"])
        print(f"{'path':<8} {'median':>7} {'min':>7} {'max':>7} {'over llbgen (median)':>21}")
        for name, values in times.items():
            median = statistics.median(values)
            extra = "" if name == "llbgen" else f"{median - base_median:+.2f}s"
            print(f"{name:<8} {median:6.2f}s {min(values):6.2f}s {max(values):6.2f}s {extra:>21}")
        print(f"frontend: {frontend}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

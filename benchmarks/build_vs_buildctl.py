"""llbgen build vs buildctl, side by side in one run.

Each on a private buildkitd with the stack's configuration (scripts/stack-up) and empty state.
upload:  the first transfer of a 10,000-file / 200 MB context. Both tools solve the same LLB
         (printed by ``llbgen llb``); the daemon's cache is pruned before each run.
rebuild: a fully cached rebuild of images/hello, by llbgen and by buildctl with the equivalent
         Dockerfile. Wall time of the whole command (for llbgen a fresh `python -m llbgen`, as
         users run it), runs interleaved; the clients' CPU; and, from the daemon's build records,
         where each command's time went: before the daemon had the build, the build, and after.

Usage: .venv/bin/python benchmarks/build_vs_buildctl.py [upload|rebuild|all] [--runs N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from private_daemon import STACK, private_daemon

ROOT = Path(__file__).resolve().parent.parent
LLBGEN = [sys.executable, "-m", "llbgen"]
# Time what users run: with cached bytecode, whatever this shell says.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

UPLOAD_IMAGE = """
import llbgen

def build(ctx):
    files = llbgen.local("ctx")
    return llbgen.scratch().file(llbgen.copy(files, "/", "/", contents_only=True))
"""


def timed(argv: list[str], spans: list[tuple[float, float]] | None = None, **kwargs: object) -> float:
    """Wall time of the command; its start and end on the system clock appended to ``spans``."""
    started = time.time()
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    took = time.perf_counter() - start
    if spans is not None:
        spans.append((started, time.time()))
    return took


def report(name: str, ours: list[float], theirs: list[float], target: float) -> None:
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{name}: llbgen median {a:.3f}s (runs {', '.join(f'{t:.3f}' for t in ours)})")
    print(f"{name}: buildctl median {b:.3f}s (runs {', '.join(f'{t:.3f}' for t in theirs)})")
    print(f"{name}: ratio llbgen/buildctl = {a / b:.2f} (target <= {target})")


def make_context(root: Path, files: int = 10_000, total: int = 200 << 20) -> None:
    size = total // files
    chunk = os.urandom(size)
    for i in range(files):
        sub = root / f"d{i // 250:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:05d}.bin").write_bytes(chunk[i % 97 :] + chunk[: i % 97])


@contextlib.contextmanager
def children_cpu(into: list[float]) -> Iterator[None]:
    """Appends the CPU time (user + sys) of the child processes that ended in the block."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    yield
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    into.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)


def upload(runs: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="llbgen-bench-"))
    try:
        project = work / "project"
        (project / "images" / "upload").mkdir(parents=True)
        (project / "images" / "upload" / "image.py").write_text(UPLOAD_IMAGE)
        ctx = work / "ctx"
        make_context(ctx)
        with private_daemon(work / "bk") as address:
            definition = work / "upload.pb"
            with open(definition, "wb") as out:
                subprocess.run(LLBGEN + ["llb", "upload", "--platform", "linux/amd64"], cwd=project, stdout=out, check=True)
            env = dict(os.environ, BUILDKIT_HOST=address)
            prune = ["buildctl", "--addr", address, "prune", "--all"]
            ours, theirs = [], []
            # The clients' CPU (user + sys) as well: on a shared machine it varies less than time.
            our_cpu: list[float] = []
            their_cpu: list[float] = []
            for _ in range(runs):
                subprocess.run(prune, check=True, capture_output=True)
                with children_cpu(our_cpu):
                    ours.append(
                        timed(LLBGEN + ["build", "upload", "--platform", "linux/amd64", "--local", f"ctx={ctx}", "--progress", "plain"], cwd=project, env=env)
                    )
                subprocess.run(prune, check=True, capture_output=True)
                with children_cpu(their_cpu):
                    theirs.append(
                        timed(["buildctl", "--addr", address, "build", "--local", f"ctx={ctx}", "--progress", "plain"], stdin=open(definition, "rb"))
                    )
            report("upload 10,000 files / 200 MB", ours, theirs, 1.5)
            print(
                f"upload: client CPU median llbgen {statistics.median(our_cpu):.2f}s, buildctl "
                f"{statistics.median(their_cpu):.2f}s (runs {', '.join(f'{a:.2f}/{b:.2f}' for a, b in zip(our_cpu, their_cpu))})"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


DOCKERFILE = """\
FROM {base}
COPY images/hello/greeting.txt /usr/share/hello/greeting.txt
COPY --chmod=755 <<'EOF' /usr/local/bin/hello
{script}EOF
RUN sh -c 'uname -m > /usr/share/hello/arch'
ENV LANG=C.UTF-8
ENTRYPOINT ["/usr/local/bin/hello"]
LABEL org.opencontainers.image.title=hello
"""


def rebuild(runs: int) -> None:
    base = json.loads((STACK / "bases.json").read_text())["debian:trixie"]
    sys.path.insert(0, str(ROOT / "images" / "hello"))
    script = __import__("image").SCRIPT
    work = Path(tempfile.mkdtemp(prefix="llbgen-bench-"))
    try:
        (work / "Dockerfile").write_text(DOCKERFILE.format(base=base, script=script))
        (work / "llbgen.toml").write_text(f'[bases]\n"debian:trixie" = "{base}"\n')
        with private_daemon(work / "bk") as address:
            env = dict(os.environ, BUILDKIT_HOST=address, LLBGEN_CONFIG=str(work / "llbgen.toml"))
            ours_cmd = LLBGEN + ["build", "hello", "--platform", "linux/amd64", "--progress", "plain"]
            theirs_cmd = [
                "buildctl", "--addr", address, "build", "--frontend", "dockerfile.v0",
                "--local", f"context={ROOT}", "--local", f"dockerfile={work}", "--opt", "platform=linux/amd64",
                "--progress", "plain",
            ]  # fmt: skip
            timed(ours_cmd, cwd=ROOT, env=env)  # warm both caches
            timed(theirs_cmd)
            ours, theirs = [], []
            our_cpu: list[float] = []
            their_cpu: list[float] = []
            our_spans: list[tuple[float, float]] = []
            their_spans: list[tuple[float, float]] = []
            for _ in range(runs):
                with children_cpu(our_cpu):
                    ours.append(timed(ours_cmd, our_spans, cwd=ROOT, env=env))
                with children_cpu(their_cpu):
                    theirs.append(timed(theirs_cmd, their_spans))
            report("cached rebuild of hello", ours, theirs, 2.5)
            print(
                f"rebuild: client CPU median llbgen {statistics.median(our_cpu):.3f}s, "
                f"buildctl {statistics.median(their_cpu):.3f}s; load average now {os.getloadavg()[0]:.1f}"
            )
            records = build_records(address)
            for name, spans in (("llbgen", our_spans), ("buildctl", their_spans)):
                print(f"rebuild: {name}: {phases(spans, records)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_records(address: str) -> list[tuple[float, float]]:
    """(created, completed) of the daemon's finished build records, on the system clock.

    A record is created when the daemon receives the solve, and completed when the build's result
    is known; the daemon then still writes the record (logs, provenance) before it answers.
    """
    listed = subprocess.run(
        ["buildctl", "--addr", address, "debug", "histories", "--format", "{{json .}}"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip

    def seconds(stamp: dict[str, int]) -> float:
        return stamp.get("seconds", 0) + stamp.get("nanos", 0) / 1e9

    records = []
    for line in listed.splitlines():
        record = json.loads(line).get("record", {})
        if "CompletedAt" in record:
            records.append((seconds(record["CreatedAt"]), seconds(record["CompletedAt"])))
    return records


def phases(spans: list[tuple[float, float]], records: list[tuple[float, float]]) -> str:
    """Medians of where the commands' time went, each command matched with the one build record
    created while it ran (runs are sequential, and the daemon is the benchmark's own)."""
    before, build, after = [], [], []
    for start, end in spans:
        matched = [r for r in records if start <= r[0] <= end]
        if len(matched) == 1:
            created, completed = matched[0]
            before.append(created - start)
            build.append(completed - created)
            after.append(end - completed)
    if not before:
        return "no build records matched"
    return (
        f"until the daemon had the build {statistics.median(before):.3f}s, the build "
        f"{statistics.median(build):.3f}s, then until the command ended {statistics.median(after):.3f}s "
        f"(medians of {len(before)} runs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="?", choices=("upload", "rebuild", "all"), default="all")
    parser.add_argument("--runs", type=int, default=5)
    ns = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, buildctl {subprocess.run(['buildctl', '--version'], capture_output=True, text=True).stdout.split()[2]}")
    if ns.which in ("upload", "all"):
        upload(ns.runs)
    if ns.which in ("rebuild", "all"):
        rebuild(ns.runs)


if __name__ == "__main__":
    main()

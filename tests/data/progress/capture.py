"""Records the status streams that tests/test_progress.py replays, with buildctl's own output.

Each case is built once with ``buildctl build --progress plain --trace FILE``: the trace file gets
every status message as buildctl's rawjson printer would write it, and stderr gets buildctl's
plain rendering of exactly those messages. Both are saved here as ``CASE.rawjson`` and
``CASE.stderr``.

Needs a running buildkitd (v0.32.2), buildctl, and a statically linked busybox (Debian's
``busybox-static``) for the exec steps, since there is no image to run them in::

    buildkitd --addr unix:///tmp/pg-bk/bk.sock --root /tmp/pg-bk/root \\
        --oci-worker=true --containerd-worker=false &
    python tests/data/progress/capture.py unix:///tmp/pg-bk/bk.sock [CASE...]

``PROGRESS_CAPTURE_DIR=DIR`` writes the files to DIR instead of next to this script.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import llbgen
from llbgen import local, mkdir, mkfile, scratch

HERE = Path(os.environ.get("PROGRESS_CAPTURE_DIR") or Path(__file__).resolve().parent)


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def case_files() -> llbgen.State:
    # New content each time, so that the first build runs and the second is cached.
    content = f"recorded at {time.time_ns()}"
    return scratch().file(mkdir("/d", 0o755)).file(mkfile("/d/a", 0o644, content), name="write a")


def case_fail() -> llbgen.State:
    script = (
        "echo hi; sleep 0.3; echo err >&2; sleep 0.3; printf 'partial'; sleep 0.3; "
        "echo ' line'; exit 3"
    )
    return local("context").run(sh(script)).root


def case_parallel() -> llbgen.State:
    root = local("context")
    a = root.run(sh("for i in 1 2 3; do echo line $i; sleep 0.4; done")).root
    b = root.run(sh("echo other; sleep 1; echo other done >&2")).root
    return a.file(llbgen.copy(b, "/bin/busybox", "/bb2"))


def case_multi() -> llbgen.State:
    root = local("context")
    states = [
        root.run(sh(f"echo start {i}; sleep 0.{2 * i}; echo end {i}")).root for i in (1, 2, 3)
    ]
    out = states[0]
    for i, other in enumerate(states[1:]):
        out = out.file(llbgen.copy(other, "/bin/busybox", f"/copy{i}"))
    return out


def case_flood() -> llbgen.State:
    script = (
        "for i in $(seq 1 300); do echo flood line $i; done; sleep 0.5; "
        "for i in $(seq 1 5); do printf 'tick %s ' $i; sleep 0.1; done; echo; echo bye >&2"
    )
    return local("context").run(sh(script)).root


def case_cancel() -> llbgen.State:
    root = local("context")
    slow = root.run(sh("echo slow start; sleep 3; echo slow end")).root
    bad = root.run(sh("echo about to fail; sleep 0.5; echo oops >&2; exit 7")).root
    return slow.file(llbgen.copy(bad, "/bin/busybox", "/bb2"))


def case_groups() -> llbgen.State:
    group = llbgen.ProgressGroup("grp1", "my group")
    a = local("context").run(sh("echo in group a; sleep 0.3"), progress_group=group).root
    b = a.run(sh("echo in group b; sleep 0.3"), progress_group=group).root
    return b.run(sh("echo after group")).root


def case_interleave() -> llbgen.State:
    root = local("context")
    fast = root.run(sh("for i in $(seq 1 40); do echo fast $i; sleep 0.3; done")).root
    slow = root.run(sh("for i in $(seq 1 6); do echo slow $i; sleep 2; done")).root
    return fast.file(llbgen.copy(slow, "/bin/busybox", "/bb2"))


DOCKERFILE = """\
FROM scratch as Build
MAINTAINER me
COPY bin/ /bin/
SHELL ["/bin/sh", "-c"]
RUN echo hello from dockerfile; echo warn >&2
FROM scratch
COPY --from=Build /bin/busybox /bb
"""

# name -> (definition, also build it a second time for a cached run)
CASES = {
    "files": (case_files, True),
    "fail": (case_fail, False),
    "parallel": (case_parallel, False),
    "multi": (case_multi, False),
    "flood": (case_flood, False),
    "cancel": (case_cancel, False),
    "groups": (case_groups, False),
    "interleave": (case_interleave, False),
    "dockerfile": (None, False),
}


def build(addr: str, work: Path, name: str, args: list[str], stdin: bytes | None) -> None:
    trace = work / f"{name}.trace"
    proc = subprocess.run(
        ["buildctl", "--addr", addr, "build", "--progress", "plain", "--trace", str(trace), *args],
        input=stdin,
        capture_output=True,
        cwd=work,
        check=False,
    )
    (HERE / f"{name}.stderr").write_bytes(proc.stderr)
    shutil.copyfile(trace, HERE / f"{name}.rawjson")
    print(f"{name}: exit {proc.returncode}")


def main(addr: str, names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ctx = work / "ctx"
        (ctx / "bin").mkdir(parents=True)
        shutil.copy("/bin/busybox", ctx / "bin" / "busybox")
        (ctx / "bin" / "sh").symlink_to("busybox")
        (ctx / "Dockerfile").write_text(DOCKERFILE)
        for name in names or list(CASES):
            make, again = CASES[name]
            if make is None:
                args = ["--frontend", "dockerfile.v0", "--local", f"context={ctx}"]
                args += ["--local", f"dockerfile={ctx}", "--output", f"type=local,dest={work}/out"]
                build(addr, work, name, args, None)
                continue
            stdin = llbgen.marshal(make()).serialize()
            args = ["--local", f"context={ctx}", "--output", f"type=local,dest={work}/out-{name}"]
            build(addr, work, name, args, stdin)
            if again:
                build(addr, work, f"{name}-cached", args, stdin)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

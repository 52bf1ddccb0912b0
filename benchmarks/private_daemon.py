"""A buildkitd of a benchmark's own: the stack's configuration (scripts/stack-up), empty state.

Not the stack's daemon: that one holds the tests' cache and two days of build history, and a
cached rebuild took 62-70 ms on it against 52 ms on a fresh one (cause not pinned down), so its
timings drift from one day to the next.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

STACK = Path(os.environ.get("LLBGEN_STACK_DIR", "/var/lib/llbgen-stack"))


def stack_env() -> dict[str, str]:
    """The stack's stack.env (its daemon's address, its registry...)."""
    values = {}
    for line in (STACK / "stack.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values[key] = value
    return values


def llbgen_env(address: str | None = None) -> dict[str, str]:
    """The environment for an ``llbgen`` command on the stack's configuration (its base pins),
    talking to ``address`` when given (else to whatever the environment names)."""
    env = dict(os.environ, LLBGEN_CONFIG=str(STACK / "llbgen.toml"))
    if address is not None:
        env["BUILDKIT_HOST"] = address
    return env


@contextlib.contextmanager
def private_daemon(state: Path) -> Iterator[str]:
    """Runs buildkitd with its state under ``state`` (made here) until the block ends; its address."""
    state.mkdir(parents=True)
    address = f"unix://{state}/buildkitd.sock"
    daemon = subprocess.Popen(
        ["buildkitd", "--addr", address, "--root", str(state / "root"), "--config", str(STACK / "buildkitd.toml")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(150):
            if subprocess.run(["buildctl", "--addr", address, "debug", "workers"], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"buildkitd at {address} did not answer within 30 s")
        yield address
    finally:
        daemon.terminate()
        daemon.wait()

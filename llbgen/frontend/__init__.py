"""llbgen as a BuildKit gateway frontend: ``python -m llbgen.frontend`` in a frontend image.

BuildKit runs the image's entrypoint for a ``gateway.v0`` build (``buildctl build --frontend
gateway.v0 --opt source=IMAGE``) or when a definition file starts with ``# syntax=IMAGE`` (a
comment in Python, a directive for the dockerfile frontend). The frontend reads the image
definition from the ``dockerfile`` local, builds it with llbgen and returns the result, so users
of ``buildctl`` and ``docker buildx build`` can build llbgen images without installing llbgen.
"""

from __future__ import annotations

import logging
import os
import sys
import time


def main() -> int:
    """Runs one build over stdin/stdout; the result or the error goes back through the protocol."""
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    sys.dont_write_bytecode = True  # definitions are loaded from a temporary directory
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="llbgen frontend: %(message)s")

    from llbgen.frontend.frontend import run
    from llbgen.frontend.stdio import StdioChannel

    stdio = StdioChannel()
    started = time.perf_counter()
    try:
        run(stdio.bridge, os.environ)
    except Exception as exc:  # noqa: BLE001 - the connection itself failed: say so on stderr
        logging.getLogger("llbgen.frontend").error("%s: %s", type(exc).__name__, exc)
        return 1
    finally:
        stdio.close()
    logging.getLogger("llbgen.frontend").info(
        "done: %.2fs since the interpreter started, %.2fs of them connected",
        _process_age(),
        time.perf_counter() - started,
    )
    return 0


def _process_age() -> float:
    """Seconds since this process started, interpreter start-up included (from /proc)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0

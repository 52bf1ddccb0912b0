"""``python -m llbgen`` and the ``llbgen`` command.

A resident llbgen (``llbgen resident start``) runs the command if there is one for this code;
otherwise it runs here. Nothing beyond the hand-over is imported until it is known which.
"""

import os
import sys


def main() -> int:
    from llbgen.resident.client import forward

    code = forward(sys.argv[1:])
    if code is not None:
        # The command ran in the resident process: nothing here needs the interpreter's orderly
        # shutdown, which would take longer than the hand-over itself.
        sys.stderr.flush()
        os._exit(code & 0xFF)
    from llbgen.cli import main as run_here

    return run_here()


if __name__ == "__main__":
    raise SystemExit(main())

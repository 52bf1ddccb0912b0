"""``python -m llbgen`` and the ``llbgen`` command.

A resident llbgen (``llbgen resident start``) runs the command if there is one for this code;
otherwise it runs here. Nothing beyond the hand-over is imported until it is known which.
"""

import sys


def main() -> int:
    from llbgen.resident.client import forward

    code = forward(sys.argv[1:])
    if code is None:
        from llbgen.cli import main as run_here

        code = run_here()
    return code


if __name__ == "__main__":
    raise SystemExit(main())

import sys

from llbgen.resident.client import forward

# A resident llbgen (``llbgen resident start``) runs the command if there is one for this code.
code = forward(sys.argv[1:])
if code is None:
    from llbgen.cli import main

    code = main()
raise SystemExit(code)

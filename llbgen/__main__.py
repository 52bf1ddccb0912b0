"""``python -m llbgen``: the same command line as the ``llbgen`` script (:func:`llbgen.cli.main`)."""

from llbgen.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

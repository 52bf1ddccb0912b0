"""``llbgen test IMAGE``: runs an image's structure tests (``images/<name>/tests.py``) on BuildKit.

``llbgen.cli`` parses its flags (those it shares with ``llbgen build`` are in :mod:`llbgen.flags`)
and calls ``run(project, ns, config)``.
Exit codes: 0 every check passed, 1 a check failed (or the image failed to build), 2 usage.
"""

from __future__ import annotations

import argparse
import sys

from llbgen import flags
from llbgen.config import Config
from llbgen.project import Project


def run(project: Project, ns: argparse.Namespace, config: Config) -> int:
    """Runs ``llbgen test``; prints the report on stdout (build progress goes to stderr)."""
    from llbgen.structure.report import format_report
    from llbgen.structure.runner import TestOptions, run_tests

    results = run_tests(project, TestOptions(flags.build_options(ns, config), select=ns.select))
    sys.stdout.write(format_report(ns.image, results, verbose=ns.verbose))
    sys.stdout.flush()
    return 0 if all(r.passed for r in results) else 1

"""``llbgen test IMAGE``: runs an image's structure tests (``images/<name>/tests.py``) on BuildKit.

Wired into ``llbgen.cli`` with ``add_parser(commands)`` and ``run(project, ns, config)``; the flags
it shares with ``llbgen build`` are :mod:`llbgen.flags`'.
Exit codes: 0 every check passed, 1 a check failed (or the image failed to build), 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from llbgen import flags
from llbgen.config import Config
from llbgen.project import Project

DESCRIPTION = """\
Runs the structure tests of an image on every target platform (arm64 under QEMU) in one build,
and reports each check. The tests are declared next to the image, in images/IMAGE/tests.py:

    from llbgen.structure import CommandTest, FileContentTest, FileExistenceTest

    def tests(ctx):                       # or a TESTS list, the same on every platform
        return [
            CommandTest("version", ["tool", "--version"], expected_output=[r"^tool 1\\.2"]),
            FileExistenceTest("binary", "/usr/local/bin/tool", permissions="-rwxr-xr-x"),
        ]

The image's build steps are the ones 'llbgen build' runs, so they come from its cache.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the ``test`` command to ``llbgen``'s subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "test",
        help="run an image's structure tests (images/IMAGE/tests.py) on every platform",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    flags.add_build_flags(parser, "target platforms, comma-separated (default: all the image's PLATFORMS)")
    parser.add_argument(
        "-k", "--select", metavar="REGEX", help="only the checks whose name matches REGEX (re.search)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the details of passing checks too")
    return parser


def run(project: Project, ns: argparse.Namespace, config: Config) -> int:
    """Runs ``llbgen test``; prints the report on stdout (build progress goes to stderr)."""
    from llbgen.structure.report import format_report
    from llbgen.structure.runner import TestOptions, run_tests

    results = run_tests(project, TestOptions(flags.build_options(ns, config), select=ns.select))
    sys.stdout.write(format_report(ns.image, results, verbose=ns.verbose))
    sys.stdout.flush()
    return 0 if all(r.passed for r in results) else 1

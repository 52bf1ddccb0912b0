"""``llbgen test IMAGE``: runs an image's structure tests (``images/<name>/tests.py``) on BuildKit.

Wired into ``llbgen.cli`` with ``add_parser(commands)`` and ``run(project, ns)``.
Exit codes: 0 every check passed, 1 a check failed (or the image failed to build), 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from llbgen.llb.errors import UsageError
from llbgen.project import Project

T = TypeVar("T")

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
    from llbgen.cli import _connection_flags

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "test",
        help="run an image's structure tests (images/IMAGE/tests.py) on every platform",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", help="image name (a directory under --images)")
    parser.add_argument(
        "--platform",
        help="target platforms, comma-separated (default: all the image's PLATFORMS)",
    )
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE", help="build argument (repeatable)")
    parser.add_argument(
        "-k", "--select", metavar="REGEX", help="only the checks whose name matches REGEX (re.search)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the details of passing checks too")
    parser.add_argument("--no-cache", action="store_true", help="run every step again, the image's included")
    parser.add_argument("--progress", choices=("auto", "tty", "plain", "rawjson"), default="auto")
    parser.add_argument("--secret", action="append", default=[], metavar="id=ID,src=FILE|env=VAR")
    parser.add_argument("--ssh", action="append", default=[], metavar="ID[=SOCKET]")
    parser.add_argument(
        "--local", action="append", default=[], metavar="NAME=DIR", help="directory for a local source (context defaults to .)"
    )
    parser.add_argument("--allow", action="append", default=[], metavar="ENTITLEMENT", help="e.g. network.host")
    _connection_flags(parser)
    return parser


def _specs(values: Sequence[str], parse: Callable[[str], tuple[str, T]], flag: str) -> dict[str, T]:
    out = {}
    for value in values:
        try:
            key, item = parse(value)
        except ValueError as exc:
            raise UsageError(f"{flag} {value!r}: {exc}") from None
        out[key] = item
    return out


def run(project: Project, ns: argparse.Namespace) -> int:
    """Runs ``llbgen test``; prints the report on stdout (build progress goes to stderr)."""
    from llbgen.cli import parse_build_args, parse_pairs, parse_platforms
    from llbgen.client.connection import TLSConfig
    from llbgen.session.secrets import parse_secret_spec
    from llbgen.session.sshforward import parse_ssh_spec
    from llbgen.structure.report import format_report
    from llbgen.structure.runner import TestOptions, run_tests

    options = TestOptions(
        image=ns.image,
        platforms=parse_platforms(ns.platform) if ns.platform is not None else None,
        args=parse_build_args(ns.arg),
        select=ns.select,
        no_cache=ns.no_cache,
        progress=ns.progress,
        secrets=_specs(ns.secret, parse_secret_spec, "--secret"),
        ssh=_specs(ns.ssh, parse_ssh_spec, "--ssh"),
        locals={k: Path(v) for k, v in parse_pairs(ns.local, "--local").items()},
        allow=ns.allow,
        address=ns.addr,
        builder=ns.builder,
        tls=TLSConfig(ns.tlscacert, ns.tlscert, ns.tlskey, ns.tlsservername),
    )
    results = run_tests(project, options)
    sys.stdout.write(format_report(ns.image, results, verbose=ns.verbose))
    sys.stdout.flush()
    return 0 if all(r.passed for r in results) else 1

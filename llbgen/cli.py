"""The ``llbgen`` command line (also ``python -m llbgen``).

Exit codes: 0 success, 1 a build-definition error, 2 a usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from llbgen.llb import dump
from llbgen.llb.definition import marshal
from llbgen.llb.errors import LLBGenError, UsageError
from llbgen.llb.platform import Platform
from llbgen.project import Project


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="llbgen", description="Container images as Python functions, built with BuildKit.")
    parser.add_argument(
        "--images",
        type=Path,
        default=Path(os.environ.get("LLBGEN_IMAGES", "images")),
        help="directory of image definitions (default: ./images or $LLBGEN_IMAGES)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("ls", help="list the images and their platforms")

    llb = commands.add_parser("llb", help="print an image's LLB definition (binary pb.Definition by default)")
    llb.add_argument("image", help="image name (a directory under --images)")
    llb.add_argument("--platform", help="target platform, e.g. linux/arm64 (default: this machine's, if the image has it)")
    llb.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE", help="build argument (repeatable)")
    llb.add_argument(
        "--format",
        choices=("pb", "json", "dot"),
        default="pb",
        help="pb: for 'buildctl build'; json: like 'buildctl debug dump-llb'; dot: Graphviz",
    )
    return parser.parse_args(argv)


def parse_build_args(values: Sequence[str]) -> dict[str, str]:
    args = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise UsageError(f"--arg {value!r} must be KEY=VALUE")
        args[key] = val
    return args


def parse_platforms(value: str) -> list[Platform]:
    try:
        return [Platform.parse(p) for p in value.split(",")]
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def local_unique_id(project: Project) -> str:
    """Stable per project, so the daemon's cache of local sources is reused from run to run."""
    return "llbgen-" + hashlib.sha256(str(project.root.resolve()).encode()).hexdigest()[:16]


def _ls(project: Project) -> int:
    names = project.names()
    if not names:
        raise UsageError(f"no images found: {project.root} has no */image.py (use --images DIR)")
    rows = []
    for name in names:
        d = project.definition(name)
        platforms = ",".join(str(p) for p in d.platforms) or str(Platform.host())
        rows.append((name, platforms, d.description))
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    for name, platforms, description in rows:
        print(f"{name:<{width[0]}}  {platforms:<{width[1]}}  {description}".rstrip())
    return 0


def _llb(project: Project, ns: argparse.Namespace) -> int:
    args = parse_build_args(ns.arg)
    definition = project.definition(ns.image)
    if ns.platform is not None:
        platforms = parse_platforms(ns.platform)
        if len(platforms) != 1:
            raise UsageError("llb writes one definition per platform: pass a single --platform")
        target = platforms[0]
    else:
        target = definition.default_platform(Platform.host())
    if ns.format == "pb" and sys.stdout.isatty():
        raise UsageError("the binary definition would go to a terminal: redirect it (> def.pb) or use --format json")
    state = project.state(ns.image, project.context(target, args))
    result = marshal(state, platform=target, local_unique_id=local_unique_id(project))
    if not result.ops:
        raise LLBGenError(f"image {ns.image!r} is empty (scratch): there is nothing to build")
    if ns.format == "pb":
        sys.stdout.buffer.write(result.serialize())
    elif ns.format == "json":
        for line in dump.json_lines(result):
            print(line)
    else:
        sys.stdout.write(dump.dot(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        ns = _parse_args(argv)
        project = Project(ns.images)
        if ns.command == "ls":
            return _ls(project)
        return _llb(project, ns)
    except LLBGenError as exc:
        print(f"llbgen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("llbgen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0

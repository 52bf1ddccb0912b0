"""The ``llbgen`` command line (also ``python -m llbgen``).

Exit codes: 0 success, 1 a build-definition error, 2 a usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from llbgen import config as configuration
from llbgen import flags
from llbgen.llb.definition import marshal
from llbgen.llb.errors import LLBGenError, UsageError
from llbgen.llb.platform import Platform
from llbgen.project import Project
from llbgen import builder_cli
from llbgen.release import cli as release_cli

TEST_DESCRIPTION = """\
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

CONFIGURATION_HELP = """\
configuration (TOML, every key optional): --config FILE, else $LLBGEN_CONFIG, else ./llbgen.toml,
else the [tool.llbgen] table of ./pyproject.toml:
  bases-file = "bases.json"                   base image pins, {"NAME": "REF@sha256:..."} (JSON),
                                              relative to the configuration file
  [bases]                                     pins of its own, over the file's
  "debian:trixie" = "REF@sha256:..."
  [daemon]                                    llbgen's own buildkitd (no --addr, no $BUILDKIT_HOST)
  insecure-registries = ["127.0.0.1:5000"]    registries it reaches over plain HTTP
  entitlements = ["network.host"]             entitlements builds may be granted
"""


def parser() -> argparse.ArgumentParser:
    """The command line's parser."""
    parser = flags.Parser(
        prog="llbgen",
        description="Container images as Python functions, built with BuildKit.",
        epilog=CONFIGURATION_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--images",
        type=Path,
        help="directory of image definitions (default: ./images or $LLBGEN_IMAGES)",
    )
    parser.add_argument("--config", type=Path, help="project configuration file (see below)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("ls", help="list the images and their platforms")

    llb = commands.add_parser("llb", help="print an image's LLB definition (binary pb.Definition by default)")
    flags.add_image_flags(llb, "target platform, e.g. linux/arm64 (default: this machine's, if the image has it)")
    llb.add_argument(
        "--format",
        choices=("pb", "json", "dot"),
        default="pb",
        help="pb: for 'buildctl build'; json: like 'buildctl debug dump-llb'; dot: Graphviz",
    )
    llb.add_argument("--bundle", type=Path, metavar="DIR", help="write every --platform's definition and image config to DIR, for llbgen's frontend image")

    build = commands.add_parser("build", help="build an image on BuildKit")
    flags.add_build_flags(build, "target platforms, comma-separated (default: the daemon's, if the image has it)")
    build.add_argument(
        "-o", "--output", action="append", default=[], metavar="SPEC",
        help="type=image,name=REF[,push=true] | type=oci|docker,dest=FILE | type=tar,dest=FILE|- | type=local,dest=DIR",
    )
    build.add_argument(
        "--cache-to", action="append", default=[], metavar="SPEC",
        help="type=registry,ref=REF[,mode=max] | type=local,dest=DIR[,mode=max] | type=inline",
    )
    build.add_argument(
        "--cache-from", action="append", default=[], metavar="SPEC", help="type=registry,ref=REF | type=local,src=DIR"
    )
    build.add_argument(
        "--cache-mounts-to", metavar="REF[,ids=ID,...][,max-size=SIZE]",
        help="after the build, push its cache mounts (all, or the ids named) to the image REF, one layer per id",
    )
    build.add_argument(
        "--cache-mounts-from", metavar="REF[,ids=ID,...]",
        help="before the build, fill its empty cache mounts from the image REF (a missing REF is a warning)",
    )
    build.add_argument("--metadata-file", type=Path, help="write the build result (image digest...) as JSON to this file")

    test = commands.add_parser(
        "test",
        help="run an image's structure tests (images/IMAGE/tests.py) on every platform",
        description=TEST_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    flags.add_build_flags(test, "target platforms, comma-separated (default: all the image's PLATFORMS)")
    test.add_argument("-k", "--select", metavar="REGEX", help="only the checks whose name matches REGEX (re.search)")
    test.add_argument("-v", "--verbose", action="store_true", help="show the details of passing checks too")

    release_cli.add_parser(commands)
    builder_cli.add_parser(commands)

    daemon = commands.add_parser("daemon", help="llbgen's own buildkitd (used when no address is set)")
    daemon.add_argument("action", choices=("status", "stop", "start"))
    return parser


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
    args = flags.parse_build_args(ns.arg)
    definition = project.definition(ns.image)
    if ns.bundle is not None:
        from llbgen.release.bundle import write_bundle

        platforms = flags.parse_platforms(ns.platform) if ns.platform else list(definition.platforms) or [Platform.host()]
        for path in write_bundle(project, ns.image, platforms, args, ns.bundle, Platform.host()):
            print(path)
        return 0
    if ns.platform is not None:
        platforms = flags.parse_platforms(ns.platform)
        if len(platforms) != 1:
            raise UsageError("llb writes one definition per platform: pass a single --platform")
        target = platforms[0]
    else:
        target = definition.default_platform(Platform.host())
    if ns.format == "pb" and sys.stdout.isatty():
        raise UsageError("the binary definition would go to a terminal: redirect it (> def.pb) or use --format json")
    state = project.state(ns.image, project.context(target, args))
    result = marshal(state, platform=target, local_unique_id=project.local_unique_id)
    if not result.ops:
        raise LLBGenError(f"image {ns.image!r} is empty (scratch): there is nothing to build")
    from llbgen.llb import dump

    if ns.format == "pb":
        print(
            "llbgen: this definition carries no image config (entrypoint, env, platform of the index): "
            "for an image, use llbgen build, or --bundle DIR with llbgen's frontend image",
            file=sys.stderr,
        )
        sys.stdout.buffer.write(result.serialize())
    elif ns.format == "json":
        for line in dump.json_lines(result):
            print(line)
    else:
        sys.stdout.write(dump.dot(result))
    return 0


def _build(project: Project, ns: argparse.Namespace, config: configuration.Config) -> int:
    # Modules leave no garbage, only objects that live until the command ends: the collector stays
    # off while the client's load, and all loaded by then is frozen out of its later collections,
    # the full one at exit included (together a tenth of a cached build's CPU; README).
    gc.disable()
    try:
        from llbgen.client.cachemountspec import CacheMountsRef
        from llbgen.client.outputs import CacheOption, Output
        from llbgen.client.run import build
    finally:
        gc.freeze()
        gc.enable()

    options = flags.build_options(
        ns,
        config,
        outputs=[Output.parse(o) for o in ns.output],
        cache_to=[CacheOption.parse(c, "--cache-to") for c in ns.cache_to],
        cache_from=[CacheOption.parse(c, "--cache-from") for c in ns.cache_from],
        cache_mounts_to=CacheMountsRef.parse(ns.cache_mounts_to, "--cache-mounts-to") if ns.cache_mounts_to else None,
        cache_mounts_from=CacheMountsRef.parse(ns.cache_mounts_from, "--cache-mounts-from") if ns.cache_mounts_from else None,
    )
    response = build(project, options)
    if ns.metadata_file is not None:
        ns.metadata_file.write_text(json.dumps(response, indent=2, sort_keys=True) + "\n")
    digest = response.get("containerimage.digest")
    if digest:
        print(f"llbgen: {ns.image}: {digest}", file=sys.stderr)
    return 0


def _daemon(action: str, config: configuration.Config) -> int:
    from llbgen.client.daemon import EmbeddedDaemon

    daemon = EmbeddedDaemon.default(config.daemon)
    if action == "start":
        print(daemon.ensure_running())
    elif action == "stop":
        print("stopped" if daemon.stop() else "not running")
    else:
        running = daemon.is_answering()
        print(f"{'running' if running else 'not running'}: {daemon.address} (log: {daemon.log})")
        return 0 if running else 3
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # gRPC's C core logs connection failures to stderr on its own; llbgen reports them itself.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        ns = parser().parse_args(argv)
        config = configuration.find(ns.config, Path.cwd())
        if ns.command == "daemon":
            return _daemon(ns.action, config)
        images = ns.images or Path(os.environ.get("LLBGEN_IMAGES", "images"))
        project = Project(images, bases_file=config.bases_file, base_pins=config.bases)
        if ns.command == "ls":
            return _ls(project)
        if ns.command == "build":
            return _build(project, ns, config)
        if ns.command == "test":
            from llbgen.structure import cli as structure_cli

            return structure_cli.run(project, ns, config)
        if ns.command in release_cli.COMMANDS:
            return release_cli.run(project, ns, config)
        if ns.command == "builder":
            return builder_cli.run(ns, config)
        return _llb(project, ns)
    except LLBGenError as exc:
        print(f"llbgen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("llbgen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0

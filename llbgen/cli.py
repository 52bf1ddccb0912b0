"""The ``llbgen`` command line (also ``python -m llbgen``).

Exit codes: 0 success, 1 a build-definition error, 2 a usage error, 130 interrupted.
"""

from __future__ import annotations

import os

# gRPC's C core logs connection failures to stderr on its own; llbgen reports them itself.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import argparse
import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from llbgen.llb import dump
from llbgen.llb.definition import marshal
from llbgen.llb.errors import LLBGenError, UsageError
from llbgen.llb.platform import Platform
from llbgen.project import Project
from llbgen import builder_cli
from llbgen.structure import cli as structure_cli

T = TypeVar("T")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ns = parser().parse_args(argv)
    if ns.images is None:
        ns.images = Path(os.environ.get("LLBGEN_IMAGES", "images"))
    return ns


@functools.cache
def parser() -> argparse.ArgumentParser:
    """The command line's parser; made once, as the resident process (``llbgen resident``) does
    before it forks, so that commands it runs do not build it again."""
    parser = _Parser(prog="llbgen", description="Container images as Python functions, built with BuildKit.")
    parser.add_argument(
        "--images",
        type=Path,
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

    build = commands.add_parser("build", help="build an image on BuildKit")
    build.add_argument("image", help="image name (a directory under --images)")
    build.add_argument("--platform", help="target platforms, comma-separated (default: the daemon's, if the image has it)")
    build.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE", help="build argument (repeatable)")
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
    build.add_argument("--no-cache", action="store_true", help="run every step again")
    build.add_argument("--progress", choices=("auto", "tty", "plain", "rawjson"), default="auto")
    build.add_argument("--secret", action="append", default=[], metavar="id=ID,src=FILE|env=VAR")
    build.add_argument("--ssh", action="append", default=[], metavar="ID[=SOCKET]")
    build.add_argument("--local", action="append", default=[], metavar="NAME=DIR", help="directory for a local source (context defaults to .)")
    build.add_argument("--allow", action="append", default=[], metavar="ENTITLEMENT", help="e.g. network.host, security.insecure")
    build.add_argument("--metadata-file", type=Path, help="write the build result (image digest...) as JSON to this file")
    _connection_flags(build)

    structure_cli.add_parser(commands)
    builder_cli.add_parser(commands)

    daemon = commands.add_parser("daemon", help="llbgen's own buildkitd (used when no address is set)")
    daemon.add_argument("action", choices=("status", "stop", "start"))
    resident = commands.add_parser(
        "resident", help="keep llbgen imported in a process that runs later commands (faster start)"
    )
    resident.add_argument("action", choices=("status", "stop", "start"))
    return parser


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--addr", help="BuildKit address (default: $BUILDKIT_HOST, else a buildx builder, else llbgen's own daemon)"
    )
    parser.add_argument(
        "--builder", help="buildx builder to build on (default: $BUILDX_BUILDER, else buildx's current builder)"
    )
    parser.add_argument("--tlscacert", type=Path, help="CA certificate for tcp:// addresses")
    parser.add_argument("--tlscert", type=Path, help="client certificate")
    parser.add_argument("--tlskey", type=Path, help="client key")
    parser.add_argument("--tlsservername", help="server name to verify the certificate against")


def parse_pairs(values: Sequence[str], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {value!r} must be KEY=VALUE")
        pairs[key] = val
    return pairs


def parse_build_args(values: Sequence[str]) -> dict[str, str]:
    return parse_pairs(values, "--arg")


def parse_platforms(value: str) -> list[Platform]:
    try:
        return [Platform.parse(p) for p in value.split(",")]
    except ValueError as exc:
        raise UsageError(str(exc)) from None


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
    result = marshal(state, platform=target, local_unique_id=project.local_unique_id)
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


def _build(project: Project, ns: argparse.Namespace) -> int:
    from llbgen.client.connection import TLSConfig
    from llbgen.client.outputs import CacheOption, Output
    from llbgen.client.run import BuildOptions, build
    from llbgen.session.secrets import parse_secret_spec
    from llbgen.session.sshforward import parse_ssh_spec

    def specs(values: Sequence[str], parse: Callable[[str], tuple[str, T]], flag: str) -> dict[str, T]:
        out = {}
        for value in values:
            try:
                key, item = parse(value)
            except ValueError as exc:
                raise UsageError(f"{flag} {value!r}: {exc}") from None
            out[key] = item
        return out

    options = BuildOptions(
        image=ns.image,
        platforms=parse_platforms(ns.platform) if ns.platform is not None else None,
        args=parse_build_args(ns.arg),
        outputs=[Output.parse(o) for o in ns.output],
        cache_to=[CacheOption.parse(c, "--cache-to") for c in ns.cache_to],
        cache_from=[CacheOption.parse(c, "--cache-from") for c in ns.cache_from],
        no_cache=ns.no_cache,
        progress=ns.progress,
        secrets=specs(ns.secret, parse_secret_spec, "--secret"),
        ssh=specs(ns.ssh, parse_ssh_spec, "--ssh"),
        locals={k: Path(v) for k, v in parse_pairs(ns.local, "--local").items()},
        allow=ns.allow,
        address=ns.addr,
        tls=TLSConfig(ns.tlscacert, ns.tlscert, ns.tlskey, ns.tlsservername),
        builder=ns.builder,
    )
    response = build(project, options)
    if ns.metadata_file is not None:
        ns.metadata_file.write_text(json.dumps(response, indent=2, sort_keys=True) + "\n")
    digest = response.get("containerimage.digest")
    if digest:
        print(f"llbgen: {ns.image}: {digest}", file=sys.stderr)
    return 0


def _daemon(action: str) -> int:
    from llbgen.client.daemon import EmbeddedDaemon

    daemon = EmbeddedDaemon.default()
    if action == "start":
        print(daemon.ensure_running())
    elif action == "stop":
        print("stopped" if daemon.stop() else "not running")
    else:
        running = daemon.is_answering()
        print(f"{'running' if running else 'not running'}: {daemon.address} (log: {daemon.log})")
        return 0 if running else 3
    return 0


def _resident(action: str) -> int:
    from llbgen.resident import server

    if action == "start":
        print(server.start())
    elif action == "stop":
        print("stopped" if server.stop() else "not running")
    else:
        running, path = server.status()
        print(f"{'running' if running else 'not running'}: {path} (log: {server.log_file(path)})")
        return 0 if running else 3
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        ns = _parse_args(argv)
        project = Project(ns.images)
        if ns.command == "ls":
            return _ls(project)
        if ns.command == "build":
            return _build(project, ns)
        if ns.command == "test":
            return structure_cli.run(project, ns)
        if ns.command == "builder":
            return builder_cli.run(ns)
        if ns.command == "daemon":
            return _daemon(ns.action)
        if ns.command == "resident":
            return _resident(ns.action)
        return _llb(project, ns)
    except LLBGenError as exc:
        print(f"llbgen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("llbgen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0

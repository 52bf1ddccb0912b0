"""``llbgen builder ls|create|rm``: the buildx builders llbgen sees, and thin wrappers over buildx.

buildx launches and removes builders; llbgen only adds defaults that its own flows need (host
networking, so that builds reach registries on this machine's loopback, and a buildkitd config that
speaks plain HTTP to those registries).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llbgen.llb.errors import LLBGenError, UsageError

if TYPE_CHECKING:  # imported when used: `llbgen` parses its command line without gRPC
    from llbgen.client import buildx
    from llbgen.config import Config



def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    builder = commands.add_parser("builder", help="the buildx builders llbgen can build on")
    actions = builder.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = actions.add_parser("ls", help="every builder, its nodes, and which one a build would use")
    ls.add_argument("--addr", help="as for build: show what a build with this address would use")
    ls.add_argument("--builder", help="as for build")
    create = actions.add_parser(
        "create",
        help="docker buildx create, with defaults for llbgen",
        description=(
            "Runs 'docker buildx create --name NAME ARGS...'. Unless ARGS say otherwise: --driver "
            "docker-container, --driver-opt network=host, image=$LLBGEN_BUILDKIT_IMAGE when set, and a "
            "buildkitd config allowing network.host and plain HTTP to the registries of "
            "--insecure-registry HOST:PORT (repeatable; default: the configuration's [daemon] insecure-registries)."
        ),
    )
    create.add_argument("name")
    create.add_argument("buildx_args", nargs=argparse.REMAINDER, metavar="ARGS")
    rm = actions.add_parser("rm", help="docker buildx rm")
    rm.add_argument("name")
    rm.add_argument("buildx_args", nargs=argparse.REMAINDER, metavar="ARGS")


def run(ns: argparse.Namespace, config: Config) -> int:
    """``create``: plain HTTP to the registries that the project configuration's
    ``[daemon] insecure-registries`` names, unless ``--insecure-registry`` says otherwise."""
    if ns.action == "ls":
        sys.stdout.write(listing(ns.addr, ns.builder))
        return 0
    if ns.action == "create":
        return create(ns.name, ns.buildx_args, config.daemon.insecure_registries)
    return _buildx(["rm", ns.name, *ns.buildx_args])


# -- ls ------------------------------------------------------------------------------------------


def listing(address: str | None, builder: str | None, env: dict[str, str] | None = None) -> str:
    from llbgen.client import buildx

    env = dict(os.environ if env is None else env)
    store = buildx.Store.default(env)
    rows = [("NAME", "DRIVER", "NODE", "ENDPOINT", "STATUS", "PLATFORMS")]
    for name in store.names():
        found = store.get(name)
        if found is None:
            continue
        for i, node in enumerate(found.nodes or (buildx.Node("", ""),)):
            status, platforms = node_status(found, node)
            rows.append(
                (
                    name if i == 0 else "",
                    found.driver if i == 0 else "",
                    node.name,
                    node.endpoint,
                    status,
                    ", ".join(map(str, platforms)),
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(f"{v:<{w}}" for v, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    lines.append("")
    lines.append(f"builders from {store.root}")
    lines.append(f"a build would use: {would_use(address, builder, env, store)}")
    lines.append(
        "precedence: --addr > $BUILDKIT_HOST > --builder / $BUILDX_BUILDER > buildx's current builder "
        "(unless the docker driver) > llbgen's own daemon"
    )
    return "\n".join(line.rstrip() for line in lines) + "\n"


def would_use(address: str | None, builder: str | None, env: dict[str, str], store: buildx.Store) -> str:
    from llbgen.client import buildx

    try:
        choice = buildx.choose(address, builder, env, store)
    except buildx.BuilderError as exc:
        return f"nothing: {exc}"
    if choice.builder is not None:
        text = f"builder {choice.builder.name} ({choice.reason})"
    elif choice.address is not None:
        text = f"{choice.address} ({choice.reason})"
    else:
        text = choice.reason
    return "; ".join([text, *(f"passed over: {why}" for why in choice.skipped)])


def node_status(builder: buildx.Builder, node: buildx.Node) -> tuple[str, Sequence[object]]:
    """The node's state and platforms: configured ones, else what its workers report (when it runs)."""
    from llbgen.client import buildx

    problem = builder.unusable()
    if problem is not None or not node.name:
        return ("not for llbgen" if problem else "no nodes"), node.platforms
    if builder.driver == "docker-container":
        try:
            running = buildx.container_running(node)
        except buildx.BuilderError:
            return "no docker", node.platforms
        if not running:
            return ("stopped" if running is False else "inactive"), node.platforms
    try:
        connection = buildx.NodeConnection(builder, node)
    except LLBGenError as exc:
        return f"error: {exc}", node.platforms
    try:
        info = connection.probe(timeout=5.0)
    except LLBGenError:
        return "unreachable", node.platforms
    finally:
        connection.close()
    return f"running {info.version}", node.platforms or info.platforms


# -- create / rm -----------------------------------------------------------------------------------


def _has(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _driver_opts(args: Sequence[str]) -> str:
    opts = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--driver-opt"]
    opts += [a.split("=", 1)[1] for a in args if a.startswith("--driver-opt=")]
    return ",".join(opts)


def create_args(
    name: str, args: Sequence[str], config_dir: Path, env: dict[str, str], default_insecure: Sequence[str]
) -> list[str]:
    """The ``docker buildx create`` arguments for ``llbgen builder create NAME ARGS``."""
    rest: list[str] = []
    insecure: list[str] = []
    i = 0
    while i < len(args):
        if args[i] == "--insecure-registry":
            if i + 1 >= len(args):
                raise UsageError("--insecure-registry needs HOST:PORT")
            insecure.append(args[i + 1])
            i += 2
            continue
        rest.append(args[i])
        i += 1
    out = ["create", "--name", name]
    driver = "docker-container"
    for i, a in enumerate(rest):
        if a == "--driver" and i + 1 < len(rest):
            driver = rest[i + 1]
        elif a.startswith("--driver="):
            driver = a.split("=", 1)[1]
    if not _has(rest, "--driver"):
        out += ["--driver", driver]
    if driver == "docker-container":
        given = _driver_opts(rest)
        extra = []
        if "network=" not in given:
            extra.append("network=host")
        if "image=" not in given and env.get("LLBGEN_BUILDKIT_IMAGE"):
            extra.append(f"image={env['LLBGEN_BUILDKIT_IMAGE']}")
        if extra:
            out += ["--driver-opt", ",".join(extra)]
    if driver != "remote" and not _has(rest, "--buildkitd-config") and not _has(rest, "--config"):
        config = config_dir / "buildkitd.toml"
        config.write_text(buildkitd_config(insecure or list(default_insecure)))
        out += ["--buildkitd-config", str(config)]
    return out + rest


def buildkitd_config(insecure: Sequence[str]) -> str:
    """A buildkitd.toml allowing host networking and plain HTTP to ``insecure`` registries."""
    lines = [
        "# written by llbgen builder create",
        'insecure-entitlements = ["network.host"]',
    ]
    for host in insecure:
        lines += ["", f'[registry."{host}"]', "  http = true", "  insecure = true"]
    return "\n".join(lines) + "\n"


def create(name: str, args: Sequence[str], default_insecure: Sequence[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="llbgen-builder-") as tmp:
        # buildx copies the config's content into its store: the file may go afterwards.
        return _buildx(create_args(name, args, Path(tmp), dict(os.environ), default_insecure))


def _buildx(args: Sequence[str]) -> int:
    docker = "docker"
    try:
        return subprocess.run([docker, "buildx", *args]).returncode
    except FileNotFoundError:
        raise LLBGenError(f"llbgen builder needs docker with the buildx plugin ({docker!r} is not on PATH)") from None

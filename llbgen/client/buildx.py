"""The user's buildx builders: buildx's store, its current builder, and how to reach each node.

Builders are found the way buildx finds them, so that ``llbgen build`` runs where ``docker buildx
build`` would. The store is ``$BUILDX_CONFIG``, else the ``buildx`` directory beside
``$DOCKER_CONFIG/config.json``, else ``~/.docker/buildx``; it holds one JSON file per builder in
``instances/`` and the current builder in ``current`` (per docker endpoint, or global).

Where a build runs (:func:`choose`): ``--addr`` > ``$BUILDKIT_HOST`` > ``--builder`` /
``$BUILDX_BUILDER`` > buildx's current builder (unless it is the ``docker`` driver, whose BuildKit
lives inside dockerd and is not reachable over BuildKit's gRPC API) > llbgen's own daemon.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from llbgen.client.connection import Connection, TLSConfig
from llbgen.llb.errors import LLBGenError
from llbgen.llb.platform import Platform

#: The prefix of the container buildx's docker-container driver runs a node in.
CONTAINER_PREFIX = "buildx_buildkit_"
REACHABLE_DRIVERS = ("docker-container", "remote")


class BuilderError(LLBGenError):
    """A builder that does not exist or cannot be used; the message says what to do."""


@attrs.frozen
class Node:
    """One BuildKit daemon of a builder, as buildx recorded it."""

    name: str
    endpoint: str
    platforms: tuple[Platform, ...] = ()
    driver_opts: Mapping[str, str] = attrs.field(factory=dict)
    flags: tuple[str, ...] = ()

    @property
    def container(self) -> str:
        return CONTAINER_PREFIX + self.name

    def docker_flags(self) -> list[str]:
        """``docker`` options that reach the engine a docker-container node runs on."""
        if not self.endpoint:
            return []
        return ["-H", self.endpoint] if "://" in self.endpoint else ["--context", self.endpoint]


@attrs.frozen
class Builder:
    name: str
    driver: str
    nodes: tuple[Node, ...]

    def unusable(self) -> str | None:
        """Why llbgen cannot build on this builder (one line, with what to do), or None."""
        if self.driver == "docker":
            return (
                f"builder {self.name!r} uses the docker driver: its BuildKit is inside dockerd, which "
                "llbgen cannot reach; create a docker-container builder (llbgen builder create NAME)"
            )
        if self.driver == "kubernetes":
            return (
                f"builder {self.name!r} uses the kubernetes driver, which llbgen does not reach yet; "
                "expose the pod's buildkitd and add it as a remote builder "
                "(docker buildx create --driver remote tcp://HOST:PORT)"
            )
        if self.driver not in REACHABLE_DRIVERS:
            return (
                f"builder {self.name!r} uses the {self.driver} driver; llbgen reaches "
                f"{' and '.join(REACHABLE_DRIVERS)} builders"
            )
        if not self.nodes:
            return f"builder {self.name!r} has no nodes (docker buildx create --append --name {self.name})"
        return None


def _platforms(values: Sequence[Mapping[str, Any]] | None) -> tuple[Platform, ...]:
    out: list[Platform] = []
    for value in values or ():
        platform = Platform(value.get("os", ""), value.get("architecture", ""), value.get("variant", "")).normalized()
        if platform not in out:
            out.append(platform)
    return tuple(out)


def parse_builder(data: Mapping[str, Any]) -> Builder:
    """A builder from its store file (buildx's ``NodeGroup`` JSON)."""
    nodes = tuple(
        Node(
            name=n.get("Name", ""),
            endpoint=n.get("Endpoint", ""),
            platforms=_platforms(n.get("Platforms")),
            driver_opts=dict(n.get("DriverOpts") or {}),
            flags=tuple(n.get("Flags") or ()),
        )
        for n in data.get("Nodes") or ()
    )
    return Builder(name=data.get("Name", ""), driver=data.get("Driver", ""), nodes=nodes)


def docker_config_dir(env: Mapping[str, str]) -> Path:
    return Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else Path.home() / ".docker"


@attrs.frozen
class Store:
    """buildx's store directory, read only."""

    root: Path
    env: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def default(cls, env: Mapping[str, str] | None = None) -> Store:
        env = dict(os.environ if env is None else env)
        if env.get("BUILDX_CONFIG"):
            return cls(Path(env["BUILDX_CONFIG"]), env)
        return cls(docker_config_dir(env) / "buildx", env)

    def names(self) -> list[str]:
        try:
            return sorted(p.name for p in (self.root / "instances").iterdir() if p.is_file())
        except OSError:
            return []

    def get(self, name: str) -> Builder | None:
        try:
            data = json.loads((self.root / "instances" / name.lower()).read_text())
        except (OSError, ValueError):
            return None
        return parse_builder(data)

    def is_docker_context(self, name: str) -> bool:
        if name == "default":
            return True
        digest = hashlib.sha256(name.encode()).hexdigest()
        return (docker_config_dir(self.env) / "contexts" / "meta" / digest / "meta.json").is_file()

    def docker_endpoint(self) -> str:
        """The key buildx files the current builder under: the docker context, or the daemon's address."""
        context = self.env.get("DOCKER_CONTEXT")
        if not context:
            try:
                config = json.loads((docker_config_dir(self.env) / "config.json").read_text())
                context = config.get("currentContext") or ""
            except (OSError, ValueError):
                context = ""
        if context and context != "default":
            return context
        return self.env.get("DOCKER_HOST") or "unix:///var/run/docker.sock"

    def current_name(self) -> str | None:
        """The builder ``docker buildx use`` selected for the current docker endpoint, if any."""
        key = self.docker_endpoint()
        try:
            current = json.loads((self.root / "current").read_text())
        except (OSError, ValueError):
            current = {}
        name = current.get("Name") or ""
        if name and (current.get("Global") or current.get("Key") == key):
            return str(name) if self.get(name) is not None else None
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        try:
            name = (self.root / "defaults" / digest).read_text().strip()
        except OSError:
            return None
        return name if self.get(name) is not None else None


@attrs.frozen
class Choice:
    """Where a build runs and why: one address, or a builder's nodes."""

    reason: str
    address: str | None = None
    builder: Builder | None = None
    #: Builders passed over, with why (buildx's current builder on the docker driver, say).
    skipped: tuple[str, ...] = ()
    #: What the user should hear: a builder they named that is not used.
    notes: tuple[str, ...] = ()


def choose(
    address: str | None,
    builder_name: str | None,
    env: Mapping[str, str] | None = None,
    store: Store | None = None,
) -> Choice:
    """Applies the precedence (module docstring). ``Choice.address`` None with no builder: llbgen's own daemon."""
    env = dict(os.environ if env is None else env)
    wanted = builder_name or env.get("BUILDX_BUILDER")
    for given, reason in ((address, "--addr"), (env.get("BUILDKIT_HOST"), "$BUILDKIT_HOST")):
        if given:
            notes = (f"{reason} ({given}) takes precedence over builder {wanted!r}",) if wanted else ()
            return Choice(reason, address=given, notes=notes)
    store = store or Store.default(env)
    for name, reason in ((builder_name, "--builder"), (env.get("BUILDX_BUILDER"), "$BUILDX_BUILDER")):
        if name:
            builder = named(store, name)
            problem = builder.unusable()
            if problem:
                raise BuilderError(problem)
            return Choice(reason, builder=builder)
    current = store.current_name()
    selected = store.get(current) if current else None
    if selected is not None:
        problem = selected.unusable()
        if problem is None:
            return Choice("buildx's current builder (docker buildx use)", builder=selected)
        return Choice("llbgen's own daemon", skipped=(problem,))
    return Choice("llbgen's own daemon")


def named(store: Store, name: str) -> Builder:
    builder = store.get(name)
    if builder is None and store.is_docker_context(name):
        # buildx offers every docker context as a builder of the docker driver
        return Builder(name, "docker", (Node(name, name),))
    if builder is None:
        names = store.names()
        known = f"builders: {', '.join(names)}" if names else "there are none"
        raise BuilderError(f"no buildx builder named {name!r} in {store.root} ({known}; docker buildx ls)")
    return builder


# -- reaching a node --------------------------------------------------------------------------


@attrs.frozen
class Endpoint:
    """How to connect to one node: a BuildKit address for :class:`Connection`, and its TLS."""

    node: Node
    address: str
    tls: TLSConfig = TLSConfig()


def endpoint(builder: Builder, node: Node) -> Endpoint:
    if builder.driver == "docker-container":
        flags = node.docker_flags()
        query = f"?{'host' if flags[0] == '-H' else 'context'}={flags[1]}" if flags else ""
        return Endpoint(node, f"docker-container://{node.container}{query}")
    opts = node.driver_opts
    tls = TLSConfig(
        ca=Path(opts["cacert"]) if opts.get("cacert") else None,
        cert=Path(opts["cert"]) if opts.get("cert") else None,
        key=Path(opts["key"]) if opts.get("key") else None,
        server_name=opts.get("servername") or None,
    )
    return Endpoint(node, node.endpoint, tls)


def container_running(node: Node) -> bool | None:
    """Whether a node's container runs (None: there is no such container)."""
    docker = "docker"
    if shutil.which(docker) is None:
        raise BuilderError(f"docker-container builders need the {docker!r} command on PATH")
    proc = subprocess.run(
        [docker, *node.docker_flags(), "inspect", "--format", "{{.State.Running}}", node.container],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() == "true"


def boot(builder: Builder, env: Mapping[str, str] | None = None) -> None:
    """Starts a docker-container builder whose containers are stopped or missing, as
    ``docker buildx inspect --bootstrap`` does (buildx itself does it: it knows how the node was made)."""
    if builder.driver != "docker-container":
        return
    if all(container_running(n) for n in builder.nodes):
        return
    proc = subprocess.run(
        ["docker", "buildx", "inspect", "--bootstrap", builder.name],
        capture_output=True,
        text=True,
        env=dict(os.environ if env is None else env),
        timeout=600,
    )
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise BuilderError(
            f"cannot start builder {builder.name!r}: {lines[-1] if lines else 'docker buildx inspect --bootstrap failed'}"
        )


class NodeConnection(Connection):
    """A connection to one node of a builder; failures name the builder and the node."""

    def __init__(self, builder: Builder, node: Node) -> None:
        where = endpoint(builder, node)
        super().__init__(where.address, where.tls)
        self.builder = builder
        self.node = node

    def lost(self, details: str) -> str:
        """The one line for a node that went away during a build."""
        hint = (
            f"is its container {self.node.container} still running? (docker buildx inspect --bootstrap {self.builder.name})"
            if self.builder.driver == "docker-container"
            else f"is {self.node.endpoint} still up?"
        )
        return f"lost builder {self.builder.name!r} (node {self.node.name}) during the build: {details}; {hint}"


def connect_node(builder: Builder, node: Node) -> NodeConnection:
    """A connection to ``node``, its builder booted first if it is a stopped docker-container one."""
    boot(builder)
    return NodeConnection(builder, node)

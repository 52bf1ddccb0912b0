"""``llbgen build``: from image definitions to a finished build, with progress and clear failures."""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import attrs
import grpc

from llbgen.client.build import (
    BuildFailed,
    BuildRequest,
    Target,
    local_dirs_needed,
    resolve_locals,
    run_build,
)
from llbgen.client import buildx
from llbgen.client.connection import Connection, ConnectionError, TLSConfig
from llbgen.client.imageconfig import image_config
from llbgen.client.options import BuildOptions
from llbgen.client.outputs import CacheOption, Output
from llbgen.llb.definition import Definition, marshal
from llbgen.llb.errors import LLBGenError, UsageError
from llbgen.llb.platform import Platform
from llbgen.pb import ops_pb2
from llbgen.progress import Printer, StatusTracker, failure_summary, open_printer
from llbgen.project import Project
from llbgen.session.auth import Auth
from llbgen.session.core import Service
from llbgen.session.filesync import DirectoryTarget, FileSend, FileSync, StreamTarget

if TYPE_CHECKING:
    from llbgen.client.cachemounts import Transfer
    from llbgen.session.content import LocalCaches
    from llbgen.session.secrets import SecretSource


def connect(options: BuildOptions) -> Connection:
    """``--addr``, else ``$BUILDKIT_HOST``, else a buildx builder (``--builder``, ``$BUILDX_BUILDER``,
    buildx's current one: :mod:`llbgen.client.buildx`), else llbgen's own daemon (started if needed)."""
    return _connect(_choose(options), options)


def _choose(options: BuildOptions) -> buildx.Choice:
    choice = buildx.choose(options.address, options.builder)
    for note in choice.notes:
        print(f"llbgen: note: {note}", file=sys.stderr)
    return choice


def _connect(choice: buildx.Choice, options: BuildOptions) -> Connection:
    if choice.builder is not None:
        return buildx.connect_node(choice.builder, choice.builder.nodes[0])
    address = choice.address
    if not address:
        from llbgen.client.daemon import EmbeddedDaemon

        address = EmbeddedDaemon.default(options.daemon).ensure_running()
    return Connection(address, options.tls)


def build(
    project: Project,
    options: BuildOptions,
    connection: Connection | None = None,
    printer: Printer | None = None,
) -> dict[str, str]:
    """Builds ``options.image``; on a builder with several nodes, on each node its platforms.

    ``connection`` and ``printer``: given by :mod:`llbgen.client.multinode` for one node's part.
    """
    if connection is None:
        choice = _choose(options)
        if choice.builder is not None and len(choice.builder.nodes) > 1:
            from llbgen.client.multinode import build_on_nodes

            return build_on_nodes(project, options, choice.builder, build)
        connection = _connect(choice, options)
    try:
        probed = connection.start_probe()
        # While the daemon answers: the definition, and the session's HTTP/2 module (else loaded on
        # the session's thread when it attaches, the solve waiting behind it).
        definition = project.definition(options.image)
        importlib.import_module("llbgen.session.bridge")
        info = probed()
        native = info.platforms[0] if info.platforms else Platform.host()
        platforms = list(options.platforms or [definition.default_platform(native)])
        problem = unsupported_platforms(platforms, info.platforms)
        if problem:
            raise ConnectionError(f"BuildKit at {connection.address} {problem}")
        targets = make_targets(project, options.image, platforms, options.args, native, project.local_unique_id)
        definitions = [t.definition for t in targets]
        dirs = resolve_locals(local_dirs_needed(definitions), options.locals, Path.cwd())
        caches, cache_from = _local_caches(options)
        request = BuildRequest(
            targets=targets,
            outputs=options.outputs,
            cache_to=options.cache_to,
            cache_from=cache_from,
            no_cache=options.no_cache,
            entitlements=sorted(set(options.allow) | entitlements_used(definitions)),
            # what the exporters check the result against, as buildx sends it
            frontend_attrs=_frontend_attrs(platforms, options.args),
            shared_key=project.local_unique_id,
        )
        services = _services(options, dirs, caches)
        transfer = _cache_mounts(options, targets, native, project.local_unique_id)
        # The failure summary (below) shows the failed step's log, so the printer does not.
        own_printer = printer is None
        if printer is None:
            printer = open_printer(options.progress, sys.stderr)
        try:
            side = functools.partial(_side_build, connection, options, dirs, printer, caches, cache_from)
            if transfer is not None:
                transfer.seed(side)
            response = run_build(connection, request, services, printer.update)
            if transfer is not None:
                response.update(transfer.export(side))
        except BuildFailed as exc:
            if own_printer:
                printer.close()
            if isinstance(connection, buildx.NodeConnection) and exc.code == grpc.StatusCode.UNAVAILABLE:
                raise LLBGenError(connection.lost(str(exc))) from None
            raise LLBGenError(_explain_failure(exc, printer.tracker, definitions)) from None
        finally:
            if own_printer:
                printer.close()
        if caches is not None:
            _finish(caches, response)
        return response
    finally:
        connection.close()


def _cache_mounts(options: BuildOptions, targets: Sequence[Target], native: Platform, local_unique_id: str) -> Transfer | None:
    """What ``--cache-mounts-from``/``--cache-mounts-to`` do around the build (None: nothing)."""
    if options.cache_mounts_from is None and options.cache_mounts_to is None:
        return None
    if options.no_cache:
        raise UsageError(
            "--no-cache gives every step empty cache mounts (BuildKit's rule): there is nothing to seed or "
            "export; drop --no-cache or --cache-mounts-from/--cache-mounts-to"
        )
    from llbgen.client.cachemounts import Transfer

    definitions = [t.definition for t in targets]
    return Transfer.plan(options.cache_mounts_from, options.cache_mounts_to, definitions, native, local_unique_id)


def _side_build(
    connection: Connection,
    options: BuildOptions,
    dirs: Mapping[str, Path],
    printer: Printer,
    caches: LocalCaches | None,
    cache_from: Sequence[CacheOption],
    target: Target,
    outputs: Sequence[Output],
    flag: str,
) -> dict[str, str]:
    """A build of its own on the build's connection, for its cache mounts; a failure is one line.

    It imports the build's caches: its copy steps run on root filesystems of the build's, which a
    fresh daemon (a CI runner) then pulls from the registry cache rather than builds.
    """
    request = BuildRequest(
        targets=[target],
        outputs=outputs,
        cache_from=cache_from,
        entitlements=sorted(set(options.allow) | entitlements_used([target.definition])),
        # a fixed creation time for images: an unchanged cache mount pushes the same image again
        frontend_attrs={"platform": str(target.platform), "build-arg:SOURCE_DATE_EPOCH": "0"},
    )
    try:
        return run_build(connection, request, _services(attrs.evolve(options, outputs=outputs), dirs, caches), printer.update)
    except BuildFailed as exc:
        raise LLBGenError(f"{flag}: {_side_failure(printer.tracker, str(exc))}") from None


def _side_failure(tracker: StatusTracker, message: str) -> str:
    """One line for a failed copy step: the step, and what its script said (or why it could not run)."""
    failed = [v for v in tracker.failed() if not v.canceled]
    if not failed:
        return message.splitlines()[0]
    step = failed[-1]
    lines = step.tail(5)
    said = [line.removeprefix("llbgen: ") for line in lines if line.startswith("llbgen: ")]
    if said:
        return said[-1]
    if any("executable file not found" in line for line in lines):
        return (
            f"{step.name}: the root filesystem of the build step that uses the cache mount has no sh "
            "(the copy runs sh, cp and du there)"
        )
    return f"{step.name}: {(lines or [step.error])[-1]}"


def _services(options: BuildOptions, dirs: Mapping[str, Path], caches: LocalCaches | None) -> list[Service]:
    """The session's services: those any build may call on, and those of the features it uses
    (as buildctl attaches secrets and ssh only with --secret and --ssh; the daemon then says that
    none was given)."""
    services: list[Service] = [FileSync(dirs), FileSend(_export_targets(options.outputs)), Auth()]
    if options.secrets:
        from llbgen.session.secrets import Secrets

        services.append(Secrets(options.secrets))
    if options.ssh:
        from llbgen.session.sshforward import SSHForwarder

        services.append(SSHForwarder(options.ssh))
    content = caches.service() if caches is not None else None
    if content is not None:
        services.append(content)
    return services


def _local_caches(options: BuildOptions) -> tuple[LocalCaches | None, list[CacheOption]]:
    """Local cache directories, served as content stores; their imports resolved to a digest now.

    No content store (None) when the build names no local cache directory.
    """
    if all(option.type != "local" for option in (*options.cache_to, *options.cache_from)):
        return None, list(options.cache_from)
    from llbgen.session.content import LocalCacheError, LocalCaches

    caches = LocalCaches()
    cache_from: list[CacheOption] = []
    try:
        for option in options.cache_to:
            if option.type == "local":
                caches.add_export(option.attrs)
        for option in options.cache_from:
            resolved = caches.add_import(option.attrs) if option.type == "local" else dict(option.attrs)
            if resolved is not None:
                cache_from.append(CacheOption(option.type, resolved))
    except LocalCacheError as exc:
        raise LLBGenError(str(exc)) from None
    _warn(caches)
    return caches, cache_from


def _finish(caches: LocalCaches, response: Mapping[str, str]) -> None:
    """Writes index.json of --cache-to type=local directories."""
    from llbgen.session.content import LocalCacheError

    try:
        caches.finish(response)
    except LocalCacheError as exc:
        raise LLBGenError(str(exc)) from None
    _warn(caches)


def _warn(caches: LocalCaches) -> None:
    for warning in caches.warnings:
        print(f"llbgen: warning: {warning}", file=sys.stderr)
    caches.warnings.clear()


def _frontend_attrs(platforms: Sequence[Platform], args: Mapping[str, str]) -> dict[str, str]:
    """What the exporters read from the request, as buildx sends it.

    ``platform``: the platforms the result must have. ``SOURCE_DATE_EPOCH`` (``--arg`` or the
    environment, as buildx takes it) makes the daemon set every exporter's source-date-epoch.
    """
    attrs_ = {"platform": ",".join(str(p) for p in platforms)}
    epoch = args.get("SOURCE_DATE_EPOCH") or os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        attrs_["build-arg:SOURCE_DATE_EPOCH"] = epoch
    return attrs_


def unsupported_platforms(wanted: Sequence[Platform], supported: Sequence[Platform]) -> str | None:
    """Why the daemon cannot build ``wanted``, or None when it can."""
    missing = [p for p in wanted if p not in supported]
    if not missing:
        return None
    return (
        f"cannot build for {', '.join(map(str, missing))}: its workers support "
        f"{', '.join(map(str, supported))}. Emulated platforms need QEMU registered in binfmt_misc "
        "(qemu-user-static) before buildkitd starts"
    )


def make_targets(
    project: Project,
    image: str,
    platforms: Sequence[Platform],
    args: Mapping[str, str],
    native: Platform,
    local_unique_id: str,
) -> list[Target]:
    """The image's state for each platform, marshalled, with its image config."""
    targets = []
    for platform in platforms:
        state = project.state(image, project.context(platform, args, native))
        result = marshal(state, platform=platform, local_unique_id=local_unique_id)
        if not result.ops:
            raise LLBGenError(f"image {image!r} is empty (scratch): there is nothing to build")
        targets.append(Target(platform, result, image_config(state, platform)))
    return targets


def entitlements_used(definitions: Sequence[Definition]) -> set[str]:
    """Entitlements the graphs need: host networking and privileged steps, as they declare."""
    needed = set()
    for definition in definitions:
        for data in definition.ops:
            op = ops_pb2.Op.FromString(data)
            if op.WhichOneof("op") == "exec":
                if op.exec.network == ops_pb2.HOST:
                    needed.add("network.host")
                if op.exec.security == ops_pb2.INSECURE:
                    needed.add("security.insecure")
    return needed


def _export_targets(outputs: Sequence[Output]) -> dict[int, DirectoryTarget | StreamTarget]:
    targets: dict[int, DirectoryTarget | StreamTarget] = {}
    for index, output in enumerate(outputs):
        if output.dest is None:
            continue
        if output.type == "local":
            targets[index] = DirectoryTarget(Path(output.dest))
        else:
            targets[index] = StreamTarget(_opener(output.dest))
    return targets


def _opener(dest: str) -> Callable[[], BinaryIO]:
    def open_dest() -> BinaryIO:
        if dest == "-":
            return sys.stdout.buffer
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        return open(dest, "wb")

    return open_dest


def _explain_failure(exc: BuildFailed, tracker: StatusTracker, definitions: Sequence[Definition]) -> str:
    locations: dict[str, str] = {}
    for definition in definitions:
        for digest, where in definition.locations.items():
            locations.setdefault(digest, str(where[0]))
    report = failure_summary(tracker, locations) or exc.message
    if "401 Unauthorized" in report or "403 Forbidden" in report:
        report += (
            "\nthe registry refused the credentials: set <P>_USERNAME and <P>_PASSWORD (P is DOCKER_HUB, "
            "QUAY or ANY_REGISTRY) or log in with docker's config.json"
        )
    return report



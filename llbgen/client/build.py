"""Running definitions on a daemon: one solve in gateway-client mode, for one or more platforms.

``Control.Solve`` is opened with the exporters but no definition; on the same channel, llbgen then
acts as the build's frontend through ``LLBBridge`` (metadata ``buildkit-controlapi-buildid``): it
solves one definition per platform and returns them as one result, with ``refs.platforms`` and
the image config of each platform. A single platform takes the same path with a single ref, so
there is one way a build runs.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import attrs
import grpc

from llbgen.client import cachejoin
from llbgen.client.connection import POLL_INTERVAL, BlockingStub, Connection, wait
from llbgen.client.imageconfig import encode as encode_config
from llbgen.client.outputs import CacheOption, Output
from llbgen.llb.definition import Definition
from llbgen.llb.errors import LLBGenError
from llbgen.llb.platform import Platform
from llbgen.pb import control_pb2, gateway_pb2
from llbgen.session.core import Service, Session

_BUILD_ID = "buildkit-controlapi-buildid"
#: After the solve ends, how long the status stream may stay silent before it is given up on.
_STATUS_DRAIN = 5.0


@attrs.frozen
class Target:
    """One platform of the build: its marshalled definition and its image config."""

    platform: Platform
    definition: Definition
    config: Mapping[str, Any]


@attrs.frozen
class BuildRequest:
    targets: Sequence[Target]
    outputs: Sequence[Output] = ()
    cache_to: Sequence[CacheOption] = ()
    cache_from: Sequence[CacheOption] = ()
    no_cache: bool = False
    entitlements: Sequence[str] = ()
    frontend_attrs: Mapping[str, str] = attrs.field(factory=dict)
    #: Part of the daemon's key for its copies of local sources: stable, so later builds only
    #: transfer what changed.
    shared_key: str = ""


class BuildFailed(LLBGenError):
    """The daemon reported an error; ``status`` is the gRPC status for callers that need it."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class Cancelled(LLBGenError):
    exit_code = 130


def run_build(
    connection: Connection,
    request: BuildRequest,
    services: Sequence[Service],
    on_status: Callable[[control_pb2.StatusResponse], None],
) -> dict[str, str]:
    """Builds ``request`` and returns the exporter response (image digest, etc.).

    Raises BuildFailed with the daemon's message, or Cancelled on Ctrl-C after cancelling the
    build on the daemon and closing the session.
    """
    ref = secrets.token_hex(13)
    with Session(services, shared_key=request.shared_key) as session:
        # Session, status stream and solve all start at once: the daemon matches them up.
        attached = session.attach(connection.channel)
        status = _StatusReader(connection, ref, on_status)
        solve_request = _solve_request(request, ref, session.id)
        solve = connection.submit(lambda: connection.control.Solve(solve_request))
        # A session that could not start fails the build here, not after the daemon gave up on it.
        attached.add_done_callback(lambda done: done.exception() is None or solve.cancel())
        try:
            try:
                solve_and_return(BlockingStub(connection, connection.bridge), request, [(_BUILD_ID, ref)])
            except grpc.RpcError as exc:
                # The solve fails as well and says why, better than the bridge can.
                try:
                    wait(solve, timeout=10.0)
                except TimeoutError:
                    pass
                raise _failure(exc) from None
            response = wait(solve)
        except KeyboardInterrupt:
            solve.cancel()
            status.stop()
            raise Cancelled("interrupted: the build was cancelled on the daemon") from None
        except grpc.RpcError as exc:
            status.finish(_STATUS_DRAIN)
            raise _failure(exc) from None
        except futures.CancelledError:  # by the callback above: Ctrl-C is a KeyboardInterrupt
            status.stop()
            raise BuildFailed(f"could not open the session with BuildKit: {attached.exception()}") from None
        finally:
            if not solve.done():
                solve.cancel()
        status.finish(_STATUS_DRAIN)
        if status.error is not None:
            raise _failure(status.error)
        return dict(response.ExporterResponse)


def _failure(exc: BaseException) -> BuildFailed:
    if isinstance(exc, grpc.RpcError):
        code = exc.code()
        details = exc.details() or code.name
        if code == grpc.StatusCode.UNAVAILABLE:
            return BuildFailed(f"lost the connection to BuildKit: {details}", code)
        if code == grpc.StatusCode.CANCELLED:
            return BuildFailed("the build was cancelled", code)
        return BuildFailed(details, code)
    return BuildFailed(str(exc))


def _cache_entries(options: Sequence[CacheOption]) -> list[control_pb2.CacheOptionsEntry]:
    return [control_pb2.CacheOptionsEntry(Type=o.type, Attrs=dict(o.attrs)) for o in options]


def _solve_request(request: BuildRequest, ref: str, session_id: str) -> control_pb2.SolveRequest:
    exporters = [control_pb2.Exporter(Type=o.type, Attrs=dict(o.attrs)) for o in request.outputs]
    attrs_: dict[str, str] = dict(request.frontend_attrs)
    if request.cache_from:
        attrs_["cache-imports"] = json.dumps(
            [{"Type": o.type, "Attrs": dict(o.attrs)} for o in request.cache_from]
        )
    solve = control_pb2.SolveRequest(
        Ref=ref,
        Session=session_id,
        Exporters=exporters,
        FrontendAttrs=attrs_,
        Cache=control_pb2.CacheOptions(
            Exports=_cache_entries(request.cache_to), Imports=_cache_entries(request.cache_from)
        ),
        Entitlements=list(request.entitlements),
    )
    if exporters:  # older daemons read only the first exporter, from the deprecated fields
        solve.ExporterDeprecated = exporters[0].Type
        solve.ExporterAttrsDeprecated.update(exporters[0].Attrs)
    return solve


def solve_and_return(bridge: Any, request: BuildRequest, metadata: Sequence[tuple[str, str]] = ()) -> None:
    """The frontend side of a build: solve each platform's definition and return the result.

    ``llbgen build`` calls it in gateway-client mode (``metadata`` names the build), and llbgen's
    ``# syntax=`` frontend over its own LLBBridge connection.
    """
    # No Ping first: every LLBBridge call waits (up to 3 s) for the build it names to be registered.
    md = list(metadata)
    imports = [gateway_pb2.CacheOptionsEntry(Type=o.type, Attrs=dict(o.attrs)) for o in request.cache_from]

    def solve(definition: Definition) -> str:
        pb_definition = definition.to_pb()
        if request.no_cache:
            for meta in pb_definition.metadata.values():
                meta.ignore_cache = True
        solved = bridge.Solve(
            gateway_pb2.SolveRequest(
                Definition=pb_definition, allowResultReturn=True, allowResultArrayRef=True, CacheImports=imports
            ),
            metadata=md,
        )
        return str(solved.result.ref.id)

    refs = {str(target.platform): solve(target.definition) for target in request.targets}
    result = gateway_pb2.Result()
    if cachejoin.needed(len(request.targets), [o.type for o in request.cache_to]):
        result.refs.refs[cachejoin.JOIN_KEY].id = solve(cachejoin.join([t.definition for t in request.targets]))
    if len(request.targets) == 1:
        only = request.targets[0]
        result.ref.id = refs[str(only.platform)]
        result.metadata["containerimage.config"] = encode_config(dict(only.config))
    else:
        for target in request.targets:
            key = str(target.platform)
            result.refs.refs[key].id = refs[key]
            result.metadata[f"containerimage.config/{key}"] = encode_config(dict(target.config))
        platforms = [{"ID": str(t.platform), "Platform": t.platform.to_json()} for t in request.targets]
        result.metadata["refs.platforms"] = json.dumps({"Platforms": platforms}).encode()
    bridge.Return(gateway_pb2.ReturnRequest(result=result), metadata=md)


class _StatusReader:
    """Reads ``Control.Status`` for the build in a thread and hands every update on.

    A thread of its own, not the loop: the progress printer may block on the terminal, and the
    loop carries the session.
    """

    def __init__(
        self,
        connection: Connection,
        ref: str,
        on_status: Callable[[control_pb2.StatusResponse], None],
    ) -> None:
        self._connection = connection

        async def open_stream() -> Any:
            return connection.control.Status(control_pb2.StatusRequest(Ref=ref))

        self._call = connection.submit(open_stream)
        self._on_status = on_status
        self._last = time.monotonic()
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._read, name="status", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        eof = grpc.aio.EOF  # type: ignore[attr-defined]  # grpc-stubs lags grpcio
        try:
            call = self._call.result()
            while (response := self._connection.call(call.read)) is not eof:
                self._last = time.monotonic()
                self._on_status(response)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = exc
        except (asyncio.CancelledError, futures.CancelledError):
            pass

    def finish(self, idle: float) -> None:
        """Waits for the stream to end, giving up once it has been silent for ``idle`` seconds."""
        while self._thread.is_alive():
            self._thread.join(timeout=POLL_INTERVAL)
            if time.monotonic() - self._last > idle:
                self.stop()
        self._thread.join()

    def stop(self) -> None:
        def cancel(opened: futures.Future[Any]) -> None:
            if not opened.cancelled() and opened.exception() is None:
                self._connection.loop.call_soon_threadsafe(opened.result().cancel)

        self._call.add_done_callback(cancel)
        self._thread.join(timeout=5)


def local_dirs_needed(definitions: Sequence[Definition]) -> list[str]:
    """Names of the ``local://`` sources the definitions read."""
    from llbgen.pb import ops_pb2

    names: list[str] = []
    for definition in definitions:
        for data in definition.ops:
            op = ops_pb2.Op.FromString(data)
            if op.WhichOneof("op") == "source" and op.source.identifier.startswith("local://"):
                name = op.source.identifier[len("local://") :]
                if name not in names:
                    names.append(name)
    return names


def resolve_locals(names: Sequence[str], given: Mapping[str, Path], default_root: Path) -> dict[str, Path]:
    """Directories for the local sources: ``--local NAME=DIR``, and ``context`` defaults to the project."""
    dirs = {}
    for name in names:
        if name in given:
            dirs[name] = given[name]
        elif name == "context":
            dirs[name] = default_root
        else:
            raise LLBGenError(f"the definition reads local source {name!r}: pass --local {name}=DIR")
        if not dirs[name].is_dir():
            raise LLBGenError(f"local source {name!r}: {dirs[name]} is not a directory")
    return dirs

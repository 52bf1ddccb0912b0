"""Errors as the frontend returns them: ``Return{error: google.rpc.Status}``.

The client prints the status message (``buildctl``: ``error: failed to solve: MESSAGE``). A
definition's error starts with its ``file:line``, and carries BuildKit's ``errdefs.Source`` detail
with the file's text, so that buildctl and buildx also print the lines around it, as they do for
Dockerfiles. Errors of the daemon (a step that failed...) are passed on with their details.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import grpc
from google.protobuf import any_pb2
from google.rpc import status_pb2  # type: ignore[import-untyped]

from llbgen.llb import wire
from llbgen.llb.errors import LLBGenError
from llbgen.llb.location import Location, display_path, is_internal
from llbgen.pb import ops_pb2

_DETAILS_KEY = "grpc-status-details-bin"
#: The type URL BuildKit's grpcerrors gives an errdefs.Source detail (proto package ``errdefs``).
SOURCE_TYPE_URL = "type.googleapis.com/errdefs.Source"


def status_of(exc: BaseException) -> status_pb2.Status:
    """The status to return for ``exc``."""
    if isinstance(exc, grpc.RpcError):
        return _rpc_status(exc)
    if isinstance(exc, LLBGenError):
        location = exc.location or locate(exc)
        message = f"{location}: {exc.message}" if location else exc.message
        status = status_pb2.Status(code=grpc.StatusCode.UNKNOWN.value[0], message=message)
        if location is not None:
            detail = source_detail(location)
            if detail is not None:
                status.details.append(detail)
        return status
    traceback.print_exception(exc, file=sys.stderr)
    return status_pb2.Status(
        code=grpc.StatusCode.UNKNOWN.value[0],
        message=f"llbgen frontend: internal error: {type(exc).__name__}: {exc}",
    )


def locate(exc: BaseException) -> Location | None:
    """The innermost line of the user's code that ``exc`` passed through, if any."""
    location = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if not is_internal(frame.filename):
            location = Location(frame.filename, frame.lineno or 1)
    return location


def source_detail(location: Location) -> any_pb2.Any | None:
    """``errdefs.Source{info: SourceInfo, ranges: [Range]}`` for one line of a definition file."""
    try:
        data = Path(location.filename).read_bytes()
    except OSError:
        return None
    info = ops_pb2.SourceInfo(filename=display_path(location.filename), data=data, language="Python")
    line = ops_pb2.Position(line=location.line)
    span = ops_pb2.Range(start=line, end=line)
    body = wire.message_field(1, info.SerializeToString(deterministic=True)) + wire.message_field(
        2, span.SerializeToString(deterministic=True)
    )
    return any_pb2.Any(type_url=SOURCE_TYPE_URL, value=body)


def _rpc_status(exc: grpc.RpcError) -> status_pb2.Status:
    trailing = getattr(exc, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # noqa: BLE001 - a malformed detail: fall back to code and message
                break
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    return status_pb2.Status(code=code.value[0], message=details or code.name)

"""``FileSend``: the daemon pushes an export's result, and we write it where the caller said.

The service only picks the target from the call's headers; :mod:`.receiver` writes a directory
tree, :func:`write_stream` a tar, OCI or docker archive.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import BinaryIO

import grpc

from llbgen.pb import filesync_pb2
from llbgen.session.core import HandlerRegistry
from llbgen.session.filesync.receiver import Receiver
from llbgen.session.filesync.status import was_cancelled
from llbgen.session.filesync.targets import DirectoryTarget, ExportTarget, StreamTarget
from llbgen.session.filesync.wire import (
    FILESEND_METHODS,
    FILESEND_SERVICE,
    KEY_EXPORTER_ID,
    KEY_EXPORTER_META_PREFIX,
    KEY_MULTI_PLATFORM_TRANSFER,
    decode_metadata,
)


class FileSend:
    """Serves ``moby.filesync.v1.FileSend``: the daemon pushes exported results.

    ``targets`` maps exporter ids (the index of the exporter in ``SolveRequest.Exporters``) to
    where its output goes.
    """

    def __init__(self, targets: Mapping[int, ExportTarget]) -> None:
        self.targets = dict(targets)

    def register(self, server: HandlerRegistry) -> list[str]:
        # Raw bytes both ways: the messages are fsutil packets or BytesMessage depending on the
        # target, which is only known from the call's metadata.
        handlers = {"DiffCopy": grpc.stream_stream_rpc_method_handler(self._diff_copy)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(FILESEND_SERVICE, handlers),))
        return list(FILESEND_METHODS)

    def _diff_copy(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        md = decode_metadata(context.invocation_metadata())
        exporter_id = 0
        ids = md.get(KEY_EXPORTER_ID)
        if ids:
            try:
                exporter_id = int(ids[0], 10)
            except ValueError:
                exporter_id = 0
        target = self.targets.get(exporter_id)
        if target is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"exporter {exporter_id} not found: llbgen has no output for it"
            )
        if isinstance(target, DirectoryTarget):
            if target.delete and "1" not in md.get(KEY_MULTI_PLATFORM_TRANSFER, []):
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "local export with delete mode needs the exporter attribute mode=delete",
                )
            return Receiver(target).run(requests, context)
        return write_stream(target, md, requests, context)


def _is_stdout(stream: BinaryIO) -> bool:
    if stream is getattr(sys.stdout, "buffer", None):
        return True
    try:
        return stream.fileno() == 1
    except (OSError, ValueError, AttributeError):
        return False


def write_stream(
    target: StreamTarget,
    md: Mapping[str, list[str]],
    requests: Iterator[bytes],
    context: grpc.ServicerContext,
) -> Iterator[bytes]:
    status = target.status
    status._begin()
    with status._lock:
        for key, values in md.items():
            if key.startswith(KEY_EXPORTER_META_PREFIX):
                status.metadata[key[len(KEY_EXPORTER_META_PREFIX) :]] = ",".join(values)
    try:
        stream = target.open()
    except OSError as exc:
        status._fail(f"cannot open the export output: {exc}")
        context.abort(grpc.StatusCode.UNKNOWN, f"cannot open the export output: {exc}")
    close = target.close if target.close is not None else not _is_stdout(stream)
    error: str | None = None
    try:
        for raw in requests:
            data = filesync_pb2.BytesMessage.FromString(raw).data
            view = memoryview(data)
            while view:
                written = stream.write(view)
                if written is None:  # a non-blocking raw stream that is full: retry
                    continue
                view = view[written:]
            status._add(nbytes=len(data))
        # The end of the stream is the daemon's half-close after the last chunk, unless the
        # call was cancelled.
        if was_cancelled(context):
            error = "the export was cancelled before it finished"
    except grpc.RpcError:
        error = "the export was cancelled before it finished"
    except OSError as exc:
        error = f"writing the export output failed: {exc}"
    finally:
        try:
            if close:
                stream.close()
            else:
                stream.flush()
        except OSError as exc:
            error = error or f"writing the export output failed: {exc}"
    if error is not None:
        status._fail(error)
        context.abort(grpc.StatusCode.UNKNOWN, error)
    status._complete()
    return iter(())

"""The session's ``containerd.services.content.v1.Content``: the daemon reads and writes a
directory's blobs through it, the store being picked by the ``buildkit-attachable-store-id``
header.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import NoReturn

import grpc
from google.protobuf import empty_pb2

from llbgen.pb import content_pb2, content_pb2_grpc
from llbgen.session.content.errors import ContentError, invalid, not_found
from llbgen.session.content.store import OCIStore
from llbgen.session.content.times import timestamp
from llbgen.session.core import HandlerRegistry

CONTENT_SERVICE = "containerd.services.content.v1.Content"
CONTENT_METHODS = [
    f"/{CONTENT_SERVICE}/{name}"
    for name in ("Info", "Update", "List", "Delete", "Read", "Status", "ListStatuses", "Write", "Abort")
]
STORE_ID_HEADER = "buildkit-attachable-store-id"


class ContentStores:
    """The session's content service over ``stores`` (store id → store, ids ``local:<DIR>``)."""

    def __init__(self, stores: Mapping[str, OCIStore]) -> None:
        self.stores = dict(stores)

    def register(self, server: HandlerRegistry) -> list[str]:
        content_pb2_grpc.add_ContentServicer_to_server(_ContentServicer(self), server)  # type: ignore[no-untyped-call]
        return list(CONTENT_METHODS)

    def choose(self, metadata: Iterable[tuple[str, str | bytes]]) -> OCIStore:
        for key, value in metadata:
            if key.lower() == STORE_ID_HEADER and isinstance(value, str):
                store = self.stores.get(value)
                if store is None:
                    raise not_found(f"unknown content store {value}")
                return store
        raise invalid(f"request lacks metadata {STORE_ID_HEADER!r}")


@contextlib.contextmanager
def _store_errors(context: grpc.ServicerContext) -> Iterator[None]:
    """A store's error, or the file system's, ends the call with its gRPC status and message."""
    try:
        yield
    except ContentError as exc:
        _abort(context, exc)
    except OSError as exc:
        _abort(context, _os_error(exc))


def _abort(context: grpc.ServicerContext, exc: ContentError) -> NoReturn:
    context.abort(exc.code, exc.message)
    raise AssertionError("unreachable")  # context.abort raises


def _os_error(exc: OSError) -> ContentError:
    return ContentError(grpc.StatusCode.UNKNOWN, f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))


class _ContentServicer(content_pb2_grpc.ContentServicer):
    def __init__(self, service: ContentStores) -> None:
        self._service = service

    def _store(self, context: grpc.ServicerContext) -> OCIStore:
        try:
            return self._service.choose(context.invocation_metadata())
        except ContentError as exc:
            _abort(context, exc)

    def Info(self, request: content_pb2.InfoRequest, context: grpc.ServicerContext) -> content_pb2.InfoResponse:
        store = self._store(context)
        with _store_errors(context):
            return content_pb2.InfoResponse(info=store.info(request.digest).to_pb())

    def Update(self, request: content_pb2.UpdateRequest, context: grpc.ServicerContext) -> content_pb2.UpdateResponse:
        store = self._store(context)
        with _store_errors(context):
            info = store.update(request.info.digest, dict(request.info.labels), list(request.update_mask.paths))
            return content_pb2.UpdateResponse(info=info.to_pb())

    def List(
        self, request: content_pb2.ListContentRequest, context: grpc.ServicerContext
    ) -> Iterator[content_pb2.ListContentResponse]:
        store = self._store(context)
        with _store_errors(context):
            block: list[content_pb2.Info] = []
            for info in store.walk(list(request.filters)):
                block.append(info.to_pb())
                if len(block) >= 100:
                    yield content_pb2.ListContentResponse(info=block)
                    block = []
            if block:
                yield content_pb2.ListContentResponse(info=block)

    def Delete(self, request: content_pb2.DeleteContentRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        store = self._store(context)
        with _store_errors(context):
            store.delete(request.digest)
        return empty_pb2.Empty()

    def Read(
        self, request: content_pb2.ReadContentRequest, context: grpc.ServicerContext
    ) -> Iterator[content_pb2.ReadContentResponse]:
        store = self._store(context)
        with _store_errors(context):
            for offset, data in store.read(request.digest, request.offset, request.size):
                yield content_pb2.ReadContentResponse(offset=offset, data=data)

    def Status(self, request: content_pb2.StatusRequest, context: grpc.ServicerContext) -> content_pb2.StatusResponse:
        store = self._store(context)
        with _store_errors(context):
            return content_pb2.StatusResponse(status=store.status(request.ref).to_pb())

    def ListStatuses(
        self, request: content_pb2.ListStatusesRequest, context: grpc.ServicerContext
    ) -> content_pb2.ListStatusesResponse:
        store = self._store(context)
        with _store_errors(context):
            statuses = store.list_statuses(list(request.filters))
        return content_pb2.ListStatusesResponse(statuses=[s.to_pb() for s in statuses])

    def Abort(self, request: content_pb2.AbortRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        store = self._store(context)
        with _store_errors(context):
            store.abort(request.ref)
        return empty_pb2.Empty()

    def Write(
        self, request_iterator: Iterator[content_pb2.WriteContentRequest], context: grpc.ServicerContext
    ) -> Iterator[content_pb2.WriteContentResponse]:
        store = self._store(context)
        with _store_errors(context):
            yield from _write(store, request_iterator)


def _write(
    store: OCIStore, requests: Iterator[content_pb2.WriteContentRequest]
) -> Iterator[content_pb2.WriteContentResponse]:
    """One ``Write`` stream: the first message names the ref (and may give the expected total and
    digest); every message is answered; COMMIT ends the stream."""
    request = next(requests, None)
    if request is None:
        return
    if not request.ref:
        raise invalid("first message must have a reference")
    total = request.total
    expected = request.expected
    writer = store.writer(request.ref, total, expected)
    try:
        while True:
            action = request.action
            if request.expected:
                expected = request.expected
                if store.exists(expected):
                    writer.close()
                    with contextlib.suppress(ContentError):
                        store.abort(writer.ref)
                    raise ContentError(
                        grpc.StatusCode.ALREADY_EXISTS, f"blob with expected digest {expected} exists"
                    )
            if request.total > 0:
                total = request.total
            response = content_pb2.WriteContentResponse(action=action)
            if action == content_pb2.STAT:
                status = writer.status()
                response.offset = status.offset
                response.total = total or status.total
                response.digest = writer.digest()
                response.started_at.CopyFrom(timestamp(status.started_ns))
                response.updated_at.CopyFrom(timestamp(status.updated_ns))
            elif action in (content_pb2.WRITE, content_pb2.COMMIT):
                if request.offset > 0 and request.offset != writer.offset:
                    raise ContentError(
                        grpc.StatusCode.OUT_OF_RANGE,
                        f"write @{request.offset} must occur at current offset {writer.offset}",
                    )
                if request.offset == 0 and writer.offset > 0:
                    writer.truncate()
                if request.data:
                    writer.write(request.data)
                if action == content_pb2.COMMIT:
                    digest = writer.commit(total, expected, dict(request.labels))
                    status = writer.status()
                    response.digest = digest
                    response.total = total
                    response.started_at.CopyFrom(timestamp(status.started_ns))
                    response.updated_at.CopyFrom(timestamp(status.updated_ns))
                else:
                    response.digest = writer.digest()
                response.offset = writer.offset
            else:
                raise invalid(f"unknown write action {action}")
            yield response
            if action == content_pb2.COMMIT:
                return
            request = next(requests, None)
            if request is None:
                return
    finally:
        writer.close()

"""Synchronous gRPC handlers on the session's asyncio server.

The session runs on ``grpc.aio`` because a file transfer is tens of thousands of small messages,
and the asyncio server costs about half as much per message as the threaded one. Only the hot
path (sending local directories) is written as a coroutine; the other services stay plain
functions that block (on an ssh agent, a file, a queue), and this module runs them on worker
threads, with the ``grpc.ServicerContext`` they were written against: ``abort`` raises,
``is_active`` and ``add_callback`` follow the call's end, cancellation included (grpc.aio's own
support for sync handlers lacks both).
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent import futures
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

if TYPE_CHECKING:
    MethodHandler = grpc.RpcMethodHandler[Any, Any]
    GenericHandler = grpc.GenericRpcHandler[Any, Any]
else:
    MethodHandler = grpc.RpcMethodHandler
    GenericHandler = grpc.GenericRpcHandler

_END = object()
#: Requests buffered for a handler thread before the stream waits for it to catch up.
_REQUEST_BUFFER = 64


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class ThreadContext:
    """The synchronous ``ServicerContext`` API, for a handler running on a worker thread."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._context = context
        self._done = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self.code: grpc.StatusCode | None = None
        self.details: str | None = None
        context.add_done_callback(lambda _: self._finish())  # type: ignore[arg-type]

    def _finish(self) -> None:
        with self._lock:
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]]:
        return tuple(self._context.invocation_metadata() or ())

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise _Aborted(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def is_active(self) -> bool:
        return not self._done.is_set()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return True
        return False

    def peer(self) -> str:
        return self._context.peer()


def _requests(
    requests: AsyncIterator[Any], context: ThreadContext, loop: asyncio.AbstractEventLoop
) -> tuple[Iterator[Any], asyncio.Task[None]]:
    """The request stream as a blocking iterator; ends when the stream or the call does."""
    buffer: queue.Queue[Any] = queue.Queue(_REQUEST_BUFFER)

    async def put(item: Any) -> None:
        while True:
            try:
                buffer.put_nowait(item)
                return
            except queue.Full:  # the handler is behind: wait for it, in order
                await asyncio.sleep(0.001)

    async def feed() -> None:
        try:
            async for request in requests:
                await put(request)
            await put(_END)  # the client half-closed: the handler reads everything, then the end
        except (grpc.RpcError, asyncio.CancelledError):
            _put_end(buffer)  # the call is over: what the handler has not read no longer matters

    def iterate() -> Iterator[Any]:
        while True:
            item = buffer.get()
            if item is _END:
                return
            yield item

    context.add_callback(lambda: _put_end(buffer))
    return iterate(), loop.create_task(feed())


def _put_end(buffer: queue.Queue[Any]) -> None:
    """Ends the handler's request stream now, dropping a request if the buffer is full."""
    try:
        buffer.put_nowait(_END)
    except queue.Full:  # the reader is behind; make room: the call is over anyway
        try:
            buffer.get_nowait()
        except queue.Empty:
            pass
        buffer.put_nowait(_END)


def _wrap(
    function: Callable[..., Any], request_streaming: bool, response_streaming: bool, pool: futures.Executor
) -> Callable[..., Any]:
    async def handler(request: Any, aio_context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        loop = asyncio.get_running_loop()
        context = ThreadContext(aio_context)
        feeder = None
        if request_streaming:
            request, feeder = _requests(request, context, loop)

        def write(response: Any) -> None:
            asyncio.run_coroutine_threadsafe(aio_context.write(response), loop).result()

        def call() -> Any:
            result = function(request, context)
            if response_streaming:
                try:
                    for response in result:
                        if not context.is_active():
                            break
                        write(response)
                finally:
                    close = getattr(result, "close", None)  # a generator's clean-up, now rather than at GC
                    if close is not None:
                        close()
                return None
            return result

        try:
            result = await loop.run_in_executor(pool, call)
        except _Aborted as aborted:
            await aio_context.abort(aborted.code, aborted.details)
        finally:
            if feeder is not None:
                feeder.cancel()
        if context.code is not None:
            aio_context.set_code(context.code)
        if context.details is not None:
            aio_context.set_details(context.details)
        return result

    return handler


def adapt(handler: MethodHandler, pool: futures.Executor) -> MethodHandler:
    """``handler`` itself if it is a coroutine, else the same handler run on ``pool``'s threads."""
    kind = {
        (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
        (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
        (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
        (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
    }
    attribute, make = kind[(handler.request_streaming, handler.response_streaming)]
    function = getattr(handler, attribute)
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        return handler
    wrapped = _wrap(function, handler.request_streaming, handler.response_streaming, pool)
    return make(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class AdaptingHandler(GenericHandler):
    """A generic handler whose sync methods run through :func:`adapt`."""

    def __init__(self, handler: GenericHandler, pool: futures.Executor) -> None:
        self._handler = handler
        self._pool = pool

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> MethodHandler | None:
        found = self._handler.service(handler_call_details)
        return None if found is None else adapt(found, self._pool)

"""Synchronous handlers on the session's asyncio server (``llbgen.session.threaded``), over a real
unix socket: what they were written against (abort, status, is_active, add_callback) holds."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from llbgen.session.core import HandlerRegistry, ServiceServer

SERVICE = "llbgen.test.Echo"


class Echo:
    """A service in the style of the session's synchronous ones."""

    def __init__(self) -> None:
        self.ended = threading.Event()  # by add_callback
        self.finished = threading.Event()  # the handler's own clean-up ran
        self.context: Any = None

    def register(self, server: HandlerRegistry) -> list[str]:
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "Stream": grpc.stream_stream_rpc_method_handler(self.stream),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        return [f"/{SERVICE}/{name}" for name in handlers]

    def unary(self, request: bytes, context: Any) -> bytes:
        if request == b"abort":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        metadata = dict(context.invocation_metadata())
        return request + b"/" + metadata.get("x-who", "").encode()

    def stream(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        self.context = context
        context.add_callback(self.ended.set)
        try:
            for request in requests:
                if request == b"fail":
                    context.set_code(grpc.StatusCode.UNKNOWN)
                    context.set_details("failed on request")
                    return
                yield request.upper()
            if context.is_active():
                yield b"end"
        finally:
            self.finished.set()


@pytest.fixture
def served() -> Iterator[tuple[Echo, grpc.Channel]]:
    echo = Echo()
    with tempfile.TemporaryDirectory(prefix="threaded-", dir="/tmp") as tmp:
        server = ServiceServer([echo], Path(tmp) / "s.sock")
        channel = grpc.insecure_channel(f"unix:{server.path}")
        try:
            yield echo, channel
        finally:
            channel.close()
            server.close()


def test_unary_handlers_answer_abort_and_see_metadata(served: tuple[Echo, grpc.Channel]) -> None:
    _, channel = served
    call = channel.unary_unary(f"/{SERVICE}/Unary")
    assert call(b"hi", metadata=[("x-who", "me")]) == b"hi/me"
    with pytest.raises(grpc.RpcError) as raised:
        call(b"abort")
    assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.NOT_FOUND, "no such thing")


def test_streams_flow_both_ways_and_set_their_status(served: tuple[Echo, grpc.Channel]) -> None:
    echo, channel = served
    call = channel.stream_stream(f"/{SERVICE}/Stream")
    # more requests than the handler's buffer holds, so the stream must wait for the thread
    requests = [b"m%d" % i for i in range(500)]
    assert list(call(iter(requests))) == [r.upper() for r in requests] + [b"end"]
    assert echo.ended.wait(5)
    with pytest.raises(grpc.RpcError) as raised:
        list(call(iter([b"a", b"fail"])))
    assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.UNKNOWN, "failed on request")


def test_a_cancelled_stream_ends_the_handler_and_runs_its_callbacks(served: tuple[Echo, grpc.Channel]) -> None:
    echo, channel = served
    gate = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"first"
        gate.wait(10)  # keeps the stream open until the test cancels it

    call = channel.stream_stream(f"/{SERVICE}/Stream")(requests())
    assert next(call) == b"FIRST"
    start = time.monotonic()
    call.cancel()
    assert echo.ended.wait(5), "add_callback did not run when the call was cancelled"
    assert time.monotonic() - start < 5
    assert not echo.context.is_active()
    # the handler, blocked reading requests, is let go and runs its clean-up
    assert echo.finished.wait(5), "the handler did not end after the call was cancelled"
    gate.set()

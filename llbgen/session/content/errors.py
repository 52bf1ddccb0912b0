"""How the content service refuses a request: the gRPC status containerd's store would answer."""

from __future__ import annotations

import grpc


class ContentError(Exception):
    """A request the store refuses; ``code`` is the gRPC status the service answers with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def not_found(message: str) -> ContentError:
    return ContentError(grpc.StatusCode.NOT_FOUND, message)


def invalid(message: str) -> ContentError:
    return ContentError(grpc.StatusCode.INVALID_ARGUMENT, message)

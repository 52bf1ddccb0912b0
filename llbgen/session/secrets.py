"""Build secrets for the daemon: the session's ``moby.buildkit.secrets.v1.Secrets`` service.

A ``RUN --mount=type=secret,id=ID`` (or a git/http source needing a token) makes the daemon call
``GetSecret{ID}``; the answer's bytes become the file mounted in the container. Each secret comes
from a file or an environment variable of the client, read when the daemon asks, held in memory
only for the answer, and never logged.

An id we do not have is answered NOT_FOUND: the daemon (``session/secrets/secrets.go``) turns
NOT_FOUND and UNIMPLEMENTED into its ``ErrNotFound``, which fails the build unless the mount is
``required=false`` (``solver/llbsolver/mounts/mount.go``, ``ops/exec.go``); any other error fails
the build whatever the mount says. A source that has gone away since the build started (variable
unset, file deleted) is also NOT_FOUND, so an optional mount is then simply absent.

``--secret`` specs follow ``buildctl``'s parser (``cmd/buildctl/build/secret.go``): CSV fields
``key=value``, keys case-insensitive:

* ``id=ID`` (required), ``src=PATH`` or ``source=PATH``, ``env=VAR``, ``type=file|env``.
* ``type=env`` with ``src=X`` and no ``env`` means the variable ``X``.
* ``id=ID`` alone: the variable ``ID`` if it is set when the spec is parsed, else the file ``ID``.
* ``type=env,id=ID`` alone means the variable ``ID`` (buildctl would fall back to a file there).
* A file must exist, be readable and hold at most 500 KiB (BuildKit's limit) when the spec is
  parsed, so mistakes show up before the build starts. Relative paths are taken from the current
  directory at parse time.
* Giving both a file and a variable is an error (buildctl silently prefers the variable).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import attrs
import grpc

from llbgen.pb import secrets_pb2, secrets_pb2_grpc
from llbgen.session.core import HandlerRegistry

MAX_SECRET_SIZE = 500 * 1024
_METHOD = "/moby.buildkit.secrets.v1.Secrets/GetSecret"


class SecretMissing(Exception):
    """The source of a secret does not exist (any more)."""


@attrs.frozen
class SecretSource:
    """Where one secret's value is read from: a file, or an environment variable."""

    kind: Literal["file", "env"]
    target: str  # the file path, or the variable name

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SecretSource:
        return cls("file", os.fspath(path))

    @classmethod
    def from_env(cls, name: str) -> SecretSource:
        return cls("env", name)

    def describe(self) -> str:
        return f"file {self.target}" if self.kind == "file" else f"environment variable {self.target}"

    def read(self, environ: Mapping[str, str] | None = None) -> bytes:
        """The value now. Raises ``SecretMissing`` if the source is gone, ``OSError`` otherwise."""
        if self.kind == "env":
            value = (os.environ if environ is None else environ).get(self.target)
            if value is None:
                raise SecretMissing(f"environment variable {self.target} is not set")
            # os.environ decodes undecodable bytes with surrogateescape; this gives them back.
            return value.encode("utf-8", "surrogateescape")
        try:
            with open(self.target, "rb") as f:
                return f.read(MAX_SECRET_SIZE + 1)
        except (FileNotFoundError, NotADirectoryError):
            raise SecretMissing(f"file {self.target} does not exist") from None


def _fields(text: str) -> list[str]:
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise ValueError(f"invalid --secret {text!r}: {exc}") from None
    return rows[0] if rows else []


def parse_secret_spec(text: str, environ: Mapping[str, str] | None = None) -> tuple[str, SecretSource]:
    """Parses one ``--secret`` value into ``(id, source)``; ``ValueError`` has a one-line message."""
    env = os.environ if environ is None else environ
    secret_id: str | None = None
    kind: str | None = None
    src: str | None = None
    var: str | None = None
    fields = _fields(text)
    if not fields:
        raise ValueError("empty --secret: expected id=ID[,src=FILE|,env=VAR]")
    for field in fields:
        key, sep, value = field.partition("=")
        if not sep:
            raise ValueError(f"invalid --secret field {field!r}: expected key=value")
        key = key.strip().lower()
        if key == "id":
            secret_id = value
        elif key == "type":
            if value not in ("file", "env"):
                raise ValueError(f"unsupported secret type {value!r} in --secret (expected file or env)")
            kind = value
        elif key in ("src", "source"):
            src = value
        elif key == "env":
            var = value
        else:
            raise ValueError(f"unknown key {key!r} in --secret {text!r} (expected id, src, env or type)")
    if not secret_id:
        raise ValueError(f"--secret {text!r} has no id=")
    if kind == "env" and not var:
        var, src = src, None
    if src and var:
        raise ValueError(f"--secret {secret_id}: give either a file (src=) or a variable (env=), not both")
    if kind == "file" and var:
        raise ValueError(f"--secret {secret_id}: type=file takes src=FILE, not env=")
    if not src and not var:
        if kind == "env" or secret_id in env:
            var = secret_id
        else:
            src = secret_id
    if var:
        return secret_id, SecretSource.from_env(var)
    assert src is not None
    path = Path(src).absolute()
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ValueError(f"--secret {secret_id}: {src} is not a regular file")
        if not os.access(path, os.R_OK):
            raise ValueError(f"--secret {secret_id}: cannot read {src}: permission denied")
    except OSError as exc:
        raise ValueError(f"--secret {secret_id}: cannot read {src}: {exc.strerror}") from None
    if size > MAX_SECRET_SIZE:
        raise ValueError(f"--secret {secret_id}: {src} is {size} bytes, over the {MAX_SECRET_SIZE}-byte limit")
    return secret_id, SecretSource.from_file(path)


def parse_secret_specs(
    texts: Iterable[str], environ: Mapping[str, str] | None = None
) -> dict[str, SecretSource]:
    """Parses several ``--secret`` values; an id given twice is an error."""
    sources: dict[str, SecretSource] = {}
    for text in texts:
        secret_id, source = parse_secret_spec(text, environ)
        if secret_id in sources:
            raise ValueError(f"--secret {secret_id} is given more than once")
        sources[secret_id] = source
    return sources


class Secrets:
    """The ``Secrets`` session service over ``sources`` (id -> source). ``environ`` defaults to
    ``os.environ``, read at each request."""

    def __init__(self, sources: Mapping[str, SecretSource], environ: Mapping[str, str] | None = None) -> None:
        self._sources = dict(sources)
        self._environ = environ

    def register(self, server: HandlerRegistry) -> list[str]:
        secrets_pb2_grpc.add_SecretsServicer_to_server(_SecretsServicer(self), server)  # type: ignore[no-untyped-call]
        return [_METHOD]

    def get(self, secret_id: str) -> bytes:
        """The value of ``secret_id`` now. Raises ``KeyError`` (unknown id), ``SecretMissing``,
        ``OSError``, or ``ValueError`` (too big)."""
        source = self._sources[secret_id]
        data = source.read(self._environ)
        if len(data) > MAX_SECRET_SIZE:
            raise ValueError(f"secret {secret_id} ({source.describe()}) is over the {MAX_SECRET_SIZE}-byte limit")
        return data


class _SecretsServicer(secrets_pb2_grpc.SecretsServicer):
    def __init__(self, secrets: Secrets) -> None:
        self._secrets = secrets

    def GetSecret(
        self, request: secrets_pb2.GetSecretRequest, context: grpc.ServicerContext
    ) -> secrets_pb2.GetSecretResponse:
        secret_id = request.ID
        try:
            data = self._secrets.get(secret_id)
        except KeyError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"secret {secret_id} was not given to llbgen (--secret)")
        except SecretMissing as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, f"secret {secret_id}: {exc}")
        except ValueError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except OSError as exc:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"secret {secret_id}: cannot read {exc.filename or 'its source'}: {exc.strerror or type(exc).__name__}",
            )
        return secrets_pb2.GetSecretResponse(data=data)

"""Registry credentials for the daemon: the session's ``moby.filesync.v1.Auth`` service.

When the daemon pulls or pushes an image it asks the session ``Credentials{Host}`` for the
registry host it is talking to (``registry-1.docker.io``, ``ghcr.io``, ``127.0.0.1:5000``...) and
uses the answer for the registry's token exchange or basic auth. An empty answer means anonymous.

Where credentials come from, first match wins:

1. **Environment variables** in the scheme of ``docker-credential-env`` (the Go credential helper
   at github.com/errordeveloper/docker-credential-env, used by e.g. Cilium's CI images). The
   registry host picks a variable prefix ``P``:

   ==========================================================  ================
   registry host (port ignored, case-insensitive)              prefix ``P``
   ==========================================================  ================
   ``docker.io`` and any ``*.docker.io`` (``registry-1.``,     ``DOCKER_HUB``
   ``index.`` ...)
   ``quay.io`` and any ``*.quay.io``                           ``QUAY``
   anything else (``ghcr.io``, ``gcr.io``, ``*-docker.pkg.dev``,  ``ANY_REGISTRY``
   ``*.dkr.ecr.*.amazonaws.com``, ``*.azurecr.io``,
   ``127.0.0.1:5000``...)
   ==========================================================  ================

   The helper knows no other prefix: there is no ``GHCR_``, ``GCR_``, ``ECR_`` or ``ACR_``
   variable in it, so none is invented here. (The helper itself matches the URL host suffixes
   ``.docker.io`` / ``.quay.io`` only, so a bare ``quay.io`` reaches ``ANY_REGISTRY`` there; here
   the bare domains count too, which is what its prefixes plainly mean.)

   For that prefix: ``P_PUBLIC_ACCESS_ONLY=true`` (or ``1``, any case) means anonymous, and the
   docker config is not consulted either; otherwise ``P_USERNAME`` and ``P_PASSWORD`` give the
   credentials (both must be set; only one of them set is an error naming the missing variable).

   **Precedence between a host prefix and ANY_REGISTRY**: a host with its own prefix consults
   only that prefix, never ``ANY_REGISTRY_*``, exactly as the helper does. ``ANY_REGISTRY`` means
   "any registry without a prefix of its own"; letting Docker Hub or Quay fall back to it would
   send the credentials of some private registry to Docker Hub. If the host's own prefix has
   nothing set, the lookup goes on to the docker config.

2. **The docker CLI config**, ``config.json`` in ``$DOCKER_CONFIG`` or else ``~/.docker``, read at
   each request, with the docker CLI's rules. The config key of a host is the host itself
   (``127.0.0.1:5000`` keeps its port), except that ``docker.io``, ``index.docker.io`` and
   ``registry-1.docker.io`` use the historical key ``https://index.docker.io/v1/``.

   * ``credHelpers[key]`` names a helper, else ``credsStore`` does; the helper
     ``docker-credential-<name>`` (found on ``PATH``) is run as ``<helper> get`` with the key on
     stdin and prints ``{"ServerURL", "Username", "Secret"}`` as JSON. A ``Username`` of
     ``<token>`` means ``Secret`` is an identity token. The output ``credentials not found in
     native keychain`` with a failed exit means anonymous. When a helper is configured for the
     key, ``auths`` is not used for credentials (the docker CLI does the same).
   * Otherwise ``auths[key]`` (or a legacy key whose host part equals the key, such as
     ``https://127.0.0.1:5000/v2/``): ``auth`` is base64 ``user:password`` and wins over the
     ``username``/``password`` fields; an ``identitytoken`` is answered as
     ``{Username: "", Secret: token}``, as BuildKit's own client does.

3. Otherwise anonymous.

``FetchToken``, ``GetTokenAuthority`` and ``VerifyTokenAuthority`` answer UNIMPLEMENTED. The
daemon (``util/resolver/authorizer.go``) asks ``GetTokenAuthority`` first and, on UNIMPLEMENTED
(or UNAVAILABLE), has no token authority: it then calls ``Credentials`` and fetches the bearer
token from the registry itself. ``FetchToken`` is only called when an authority key was given, and
``VerifyTokenAuthority`` treats UNIMPLEMENTED as "not verified", so neither is ever needed.

Secrets stay in memory: they are never written to disk, never logged, and never put in an error
message. A failing helper yields an error that names the helper and the host and nothing of its
output. Helper answers are kept in memory for a few minutes (as BuildKit's client does) so that a
build does not spawn the helper for every blob.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import grpc

from llbgen.pb import auth_pb2, auth_pb2_grpc
from llbgen.session.core import HandlerRegistry

_log = logging.getLogger(__name__)

DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
HELPER_PREFIX = "docker-credential-"
HELPER_NOT_FOUND = "credentials not found in native keychain"
TOKEN_USERNAME = "<token>"
# The daemon gives a session 60 s to answer; a helper that hangs should fail before that, clearly.
HELPER_TIMEOUT = 45.0
# BuildKit's client keeps credentials this long (short-lived cloud tokens last 5 minutes).
HELPER_CACHE_SECONDS = 290.0

_METHODS = [
    "/moby.filesync.v1.Auth/Credentials",
    "/moby.filesync.v1.Auth/FetchToken",
    "/moby.filesync.v1.Auth/GetTokenAuthority",
    "/moby.filesync.v1.Auth/VerifyTokenAuthority",
]


@attrs.frozen
class RegistryCredentials:
    """What ``Credentials`` answers. Both empty means anonymous. The secret never shows in repr."""

    username: str = ""
    secret: str = attrs.field(default="", repr=False)

    @property
    def anonymous(self) -> bool:
        return not self.username and not self.secret


ANONYMOUS = RegistryCredentials()


class CredentialsError(Exception):
    """A credential source is broken. The message names things (host, helper, file), never values."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _hostname(host: str) -> str:
    """``host`` without its port, lowercased: ``Quay.IO:443`` -> ``quay.io``, ``[::1]:5000`` -> ``::1``."""
    name = host.strip().lower().rstrip(".")
    if name.startswith("["):
        return name[1:].split("]", 1)[0]
    head, sep, tail = name.rpartition(":")
    if sep and tail.isdigit() and ":" not in head:
        return head
    return name


def env_prefix(host: str) -> str:
    """The docker-credential-env variable prefix for a registry host (see the module docstring)."""
    name = _hostname(host)
    for domain, prefix in (("docker.io", "DOCKER_HUB"), ("quay.io", "QUAY")):
        if name == domain or name.endswith("." + domain):
            return prefix
    return "ANY_REGISTRY"


def from_environment(host: str, environ: Mapping[str, str]) -> RegistryCredentials | None:
    """The credentials ``environ`` gives for ``host`` (see the module docstring), ``ANONYMOUS`` for
    ``P_PUBLIC_ACCESS_ONLY``, or None when its prefix has nothing set. Raises ``CredentialsError``."""
    prefix = env_prefix(host)
    if _truthy(environ.get(f"{prefix}_PUBLIC_ACCESS_ONLY", "")):
        return ANONYMOUS
    username = environ.get(f"{prefix}_USERNAME")
    password = environ.get(f"{prefix}_PASSWORD")
    if username is None and password is None:
        return None
    if username is None or password is None:
        missing, present = (
            (f"{prefix}_USERNAME", f"{prefix}_PASSWORD") if username is None else (f"{prefix}_PASSWORD", f"{prefix}_USERNAME")
        )
        raise CredentialsError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"registry {host}: {present} is set but {missing} is not",
        )
    return RegistryCredentials(username, password)


def config_key(host: str) -> str:
    """The docker config key (``auths``/``credHelpers``, and what a helper is asked) for a host."""
    return DOCKER_HUB_CONFIG_KEY if host in DOCKER_HUB_HOSTS else host


def _legacy_hostname(key: str) -> str:
    """The host part of an ``auths`` key written as a URL (``https://h:5000/v2/`` -> ``h:5000``)."""
    _, sep, rest = key.partition("://")
    return (rest if sep else key).split("/", 1)[0]


def _truthy(value: str) -> bool:
    return value.strip().lower() in {"true", "1"}


class Auth:
    """The ``Auth`` session service. ``environ`` defaults to ``os.environ`` and is read per request;
    it is also the environment (and ``PATH``) credential helpers run with."""

    def __init__(
        self,
        config_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
        *,
        helper_timeout: float = HELPER_TIMEOUT,
    ) -> None:
        self._config_dir = config_dir
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._helper_timeout = helper_timeout
        self._helper_lock = threading.Lock()
        self._helper_cache: dict[tuple[str, str], tuple[float, RegistryCredentials]] = {}

    # -- the lookup -------------------------------------------------------------------------------

    def credentials(self, host: str) -> RegistryCredentials:
        """Credentials for ``host``, or ``ANONYMOUS``. Raises ``CredentialsError``."""
        found = self._from_environment(host)
        if found is not None:
            _log.debug("registry %s: credentials source: environment (%s_*)", host, env_prefix(host))
            return found
        return self._from_docker_config(host)

    def config_path(self) -> Path:
        if self._config_dir is not None:
            return self._config_dir / "config.json"
        configured = self._environ.get("DOCKER_CONFIG")
        if configured:
            return Path(configured) / "config.json"
        home = self._environ.get("HOME")
        return (Path(home) if home else Path.home()) / ".docker" / "config.json"

    def _from_environment(self, host: str) -> RegistryCredentials | None:
        return from_environment(host, self._environ)

    def _load_config(self) -> tuple[Path, dict[str, Any]]:
        path = self.config_path()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return path, {}
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise CredentialsError(
                grpc.StatusCode.FAILED_PRECONDITION, f"cannot read docker config {path}: {reason}"
            ) from None
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            # The position only: the text around it may be a password.
            raise CredentialsError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"docker config {path} is not valid JSON (line {exc.lineno}, column {exc.colno})",
            ) from None
        if not isinstance(data, dict):
            raise CredentialsError(
                grpc.StatusCode.FAILED_PRECONDITION, f"docker config {path} is not a JSON object"
            )
        return path, data

    def _from_docker_config(self, host: str) -> RegistryCredentials:
        path, config = self._load_config()
        key = config_key(host)
        helpers = config.get("credHelpers")
        helper = helpers.get(key) if isinstance(helpers, dict) else None
        if not helper:
            helper = config.get("credsStore")
        if helper:
            if not isinstance(helper, str):
                raise CredentialsError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"docker config {path}: the credential helper for {key} is not a string",
                )
            _log.debug("registry %s: credentials source: %s%s", host, HELPER_PREFIX, helper)
            return self._from_helper(helper, key, host)
        entry = self._auths_entry(config, key)
        if entry is None:
            _log.debug("registry %s: no credentials configured, anonymous", host)
            return ANONYMOUS
        _log.debug("registry %s: credentials source: %s auths", host, path)
        return self._decode_auths_entry(path, key, entry)

    @staticmethod
    def _auths_entry(config: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
        auths = config.get("auths")
        if not isinstance(auths, dict):
            return None
        entry = auths.get(key)
        if entry is None:
            for other, value in auths.items():
                if _legacy_hostname(other) == key:
                    entry = value
                    break
        return entry if isinstance(entry, dict) else None

    @staticmethod
    def _decode_auths_entry(path: Path, key: str, entry: Mapping[str, Any]) -> RegistryCredentials:
        def field(name: str) -> str:
            value = entry.get(name, "")
            if not isinstance(value, str):
                raise CredentialsError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"docker config {path}: auths[{key!r}].{name} is not a string",
                )
            return value

        username, password = field("username"), field("password")
        encoded = field("auth")
        if encoded:
            invalid = CredentialsError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"docker config {path}: auths[{key!r}].auth is not base64 of 'user:password'",
            )
            try:
                decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                raise invalid from None
            username, sep, password = decoded.partition(":")
            if not sep or not username:
                raise invalid
            password = password.strip("\x00")
        token = field("identitytoken")
        if token:
            return RegistryCredentials("", token)
        return RegistryCredentials(username, password)

    def _from_helper(self, helper: str, key: str, host: str) -> RegistryCredentials:
        name = HELPER_PREFIX + helper
        if "/" in helper or helper.startswith("-"):
            raise CredentialsError(
                grpc.StatusCode.FAILED_PRECONDITION, f"invalid credential helper name {name!r} for {host}"
            )
        with self._helper_lock:
            cached = self._helper_cache.get((helper, key))
            if cached is not None and time.monotonic() - cached[0] < HELPER_CACHE_SECONDS:
                return cached[1]
            found = self._run_helper(name, key, host)
            self._helper_cache[(helper, key)] = (time.monotonic(), found)
            return found

    def _run_helper(self, name: str, key: str, host: str) -> RegistryCredentials:
        executable = shutil.which(name, path=self._environ.get("PATH", os.defpath))
        if executable is None:
            raise CredentialsError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"credential helper {name} (configured for {host}) is not on PATH",
            )
        try:
            proc = subprocess.run(
                [executable, "get"],
                input=key.encode(),
                capture_output=True,
                env=dict(self._environ),
                timeout=self._helper_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CredentialsError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"credential helper {name} did not answer for {host} within {self._helper_timeout:g} s",
            ) from None
        except OSError as exc:
            raise CredentialsError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"credential helper {name} could not be run for {host}: {exc.strerror or type(exc).__name__}",
            ) from None
        if proc.returncode != 0:
            if HELPER_NOT_FOUND in (_safe_text(proc.stdout), _safe_text(proc.stderr)):
                return ANONYMOUS
            # Neither stdout nor stderr is quoted: a misbehaving helper may print a secret.
            raise CredentialsError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"credential helper {name} failed for {host} (exit status {proc.returncode})",
            )
        malformed = CredentialsError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"credential helper {name} gave malformed output for {host}",
        )
        try:
            answer = json.loads(proc.stdout)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise malformed from None
        if not isinstance(answer, dict):
            raise malformed
        # Go's JSON decoder, which real helpers are written against, matches field names
        # case-insensitively.
        fields = {str(k).lower(): v for k, v in answer.items()}
        username, secret = fields.get("username") or "", fields.get("secret") or ""
        if not isinstance(username, str) or not isinstance(secret, str):
            raise malformed
        if username == TOKEN_USERNAME:
            return RegistryCredentials("", secret)
        return RegistryCredentials(username, secret)

    # -- gRPC -------------------------------------------------------------------------------------

    def register(self, server: HandlerRegistry) -> list[str]:
        auth_pb2_grpc.add_AuthServicer_to_server(_AuthServicer(self), server)  # type: ignore[no-untyped-call]
        return list(_METHODS)


def _safe_text(data: bytes) -> str:
    return data.decode("utf-8", "replace").strip()


class _AuthServicer(auth_pb2_grpc.AuthServicer):
    def __init__(self, auth: Auth) -> None:
        self._auth = auth

    def Credentials(
        self, request: auth_pb2.CredentialsRequest, context: grpc.ServicerContext
    ) -> auth_pb2.CredentialsResponse:
        host = request.Host
        try:
            found = self._auth.credentials(host)
        except CredentialsError as exc:
            context.abort(exc.code, str(exc))
        except Exception as exc:  # noqa: BLE001 - the message of an unknown error could hold a secret
            context.abort(
                grpc.StatusCode.INTERNAL, f"resolving credentials for {host} failed ({type(exc).__name__})"
            )
        return auth_pb2.CredentialsResponse(Username=found.username, Secret=found.secret)

    def FetchToken(
        self, request: auth_pb2.FetchTokenRequest, context: grpc.ServicerContext
    ) -> auth_pb2.FetchTokenResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "llbgen does not fetch registry tokens; use Credentials")

    def GetTokenAuthority(
        self, request: auth_pb2.GetTokenAuthorityRequest, context: grpc.ServicerContext
    ) -> auth_pb2.GetTokenAuthorityResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "llbgen has no token authority")

    def VerifyTokenAuthority(
        self, request: auth_pb2.VerifyTokenAuthorityRequest, context: grpc.ServicerContext
    ) -> auth_pb2.VerifyTokenAuthorityResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "llbgen has no token authority")

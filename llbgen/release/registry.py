"""A small client of the registry HTTP API (OCI distribution): what the release workflow needs.

A manifest's digest (HEAD), blobs (HEAD, GET, monolithic upload) and manifests (PUT). Credentials
are the ones builds send the daemon (:class:`llbgen.session.auth.Auth`: docker-credential-env's
variables, then docker's config and helpers), answered to the registry's challenge: basic auth, or
a bearer token fetched from the realm the registry names. Loopback registries (``localhost``,
``127.0.0.0/8``, ``::1``) are spoken to over plain http, as docker and BuildKit allow by default;
every other one over https.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from collections.abc import Mapping

import attrs
import httpx

from llbgen.llb import reference
from llbgen.llb.errors import LLBGenError
from llbgen.session.auth import Auth, CredentialsError, RegistryCredentials

INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
ACCEPT = ", ".join(INDEX_TYPES + MANIFEST_TYPES)
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryError(LLBGenError):
    """A registry answered something else than expected, or could not be reached."""


@attrs.frozen
class Repository:
    """``host/path`` of a registry repository (``127.0.0.1:5000/llbgen/hello``)."""

    host: str
    path: str

    @classmethod
    def parse(cls, ref: str) -> tuple[Repository, str]:
        """The repository of an image reference and its tag or digest (``latest`` when neither)."""
        try:
            parsed = reference.parse(ref)
        except ValueError as exc:
            raise LLBGenError(str(exc)) from None
        host = "registry-1.docker.io" if parsed.domain == "docker.io" else parsed.domain
        return cls(host, parsed.path), parsed.digest or parsed.tag or "latest"

    def __str__(self) -> str:
        return f"{self.host}/{self.path}"


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host.strip("[]").rsplit("]:", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


class Registry:
    """Talks to any number of registries with one credential lookup and per-scope tokens."""

    def __init__(self, auth: Auth | None = None, transport: httpx.BaseTransport | None = None) -> None:
        self._auth = auth or Auth()
        self._client = httpx.Client(timeout=TIMEOUT, transport=transport, follow_redirects=True)
        self._tokens: dict[tuple[str, str], str] = {}
        self._basic: set[str] = set()

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ---------------------------------------------------------------------------------

    def _url(self, repo: Repository, path: str) -> str:
        scheme = "http" if is_loopback(repo.host) else "https"
        return f"{scheme}://{repo.host}/v2/{repo.path}/{path}"

    def _credentials(self, host: str) -> RegistryCredentials:
        try:
            return self._auth.credentials(host)
        except CredentialsError as exc:
            raise RegistryError(str(exc)) from None

    def request(
        self,
        method: str,
        repo: Repository,
        path: str,
        *,
        push: bool = False,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        url: str | None = None,
    ) -> httpx.Response:
        """One request; on a 401 answers the challenge (basic or bearer) and tries once more."""
        scope = f"repository:{repo.path}:{'pull,push' if push else 'pull'}"
        target = url or self._url(repo, path)
        for attempt in range(2):
            sent = dict(headers or {})
            token = self._tokens.get((repo.host, scope))
            if token:
                sent["Authorization"] = f"Bearer {token}"
            elif repo.host in self._basic:
                sent["Authorization"] = _basic(self._credentials(repo.host))
            try:
                response = self._client.request(method, target, headers=sent, content=content)
            except httpx.HTTPError as exc:
                raise RegistryError(f"registry {repo.host}: {method} {target}: {exc}") from None
            if response.status_code != 401 or attempt:
                return response
            self._answer_challenge(repo, scope, response.headers.get("WWW-Authenticate", ""))
        raise AssertionError("unreachable")

    def _answer_challenge(self, repo: Repository, scope: str, challenge: str) -> None:
        kind, _, rest = challenge.partition(" ")
        found = self._credentials(repo.host)
        if kind.lower() == "basic":
            if found.anonymous:
                raise RegistryError(_refused(repo.host))
            self._basic.add(repo.host)
            return
        if kind.lower() != "bearer":
            raise RegistryError(f"registry {repo.host} asks for {kind or 'an unknown'} authentication")
        params = dict(_CHALLENGE_PARAM.findall(rest))
        realm = params.pop("realm", "")
        if not realm:
            raise RegistryError(f"registry {repo.host}: its bearer challenge names no realm")
        query = {"scope": params.get("scope", scope)}
        if "service" in params:
            query["service"] = params["service"]
        auth = None if found.anonymous else (found.username or "<token>", found.secret)
        try:
            response = self._client.get(realm, params=query, auth=auth)
        except httpx.HTTPError as exc:
            raise RegistryError(f"registry {repo.host}: token from {realm}: {exc}") from None
        if response.status_code in (401, 403):
            raise RegistryError(_refused(repo.host))
        if response.status_code != 200:
            raise RegistryError(f"registry {repo.host}: token from {realm}: HTTP {response.status_code}")
        body = response.json()
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryError(f"registry {repo.host}: the token answer from {realm} holds no token")
        self._tokens[(repo.host, scope)] = token

    # -- operations -------------------------------------------------------------------------------

    def manifest_digest(self, ref: str) -> str | None:
        """The digest of the manifest (or index) ``ref`` names, or None when the registry has none."""
        repo, tag = Repository.parse(ref)
        response = self.request("HEAD", repo, f"manifests/{tag}", headers={"Accept": ACCEPT})
        if response.status_code == 404:
            return None
        _check(response, repo, f"manifest {tag}")
        digest = response.headers.get("Docker-Content-Digest")
        if digest:
            return str(digest)
        # A registry that does not send the header: the digest of the bytes it serves.
        body = self.request("GET", repo, f"manifests/{tag}", headers={"Accept": ACCEPT})
        _check(body, repo, f"manifest {tag}")
        return "sha256:" + hashlib.sha256(body.content).hexdigest()

    def has_blob(self, repo: Repository, digest: str) -> bool:
        response = self.request("HEAD", repo, f"blobs/{digest}")
        if response.status_code == 404:
            return False
        _check(response, repo, f"blob {digest}")
        return True

    def get_blob(self, repo: Repository, digest: str) -> bytes:
        response = self.request("GET", repo, f"blobs/{digest}")
        _check(response, repo, f"blob {digest}")
        return response.content

    def put_blob(self, repo: Repository, data: bytes) -> str:
        """Uploads ``data`` (unless the registry has it) in one request; its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.has_blob(repo, digest):
            return digest
        started = self.request("POST", repo, "blobs/uploads/", push=True, content=b"")
        _check(started, repo, "blob upload", expect=(202,))
        location = started.headers.get("Location", "")
        if not location:
            raise RegistryError(f"registry {repo.host}: the upload of a blob to {repo.path} got no Location")
        # the upload's URL keeps its own query (the registry's state), plus the digest
        url = str(httpx.URL(self._url(repo, "blobs/uploads/")).join(location).copy_merge_params({"digest": digest}))
        done = self.request(
            "PUT", repo, "", push=True, url=url, content=data,
            headers={"Content-Type": "application/octet-stream"},
        )  # fmt: skip
        _check(done, repo, f"blob {digest}", expect=(201,))
        return digest

    def put_manifest(self, repo: Repository, tag: str, body: bytes, media_type: str) -> str:
        response = self.request(
            "PUT", repo, f"manifests/{tag}", push=True, content=body, headers={"Content-Type": media_type}
        )
        _check(response, repo, f"manifest {tag}", expect=(201,))
        return response.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()


def _basic(found: RegistryCredentials) -> str:
    return "Basic " + base64.b64encode(f"{found.username}:{found.secret}".encode()).decode()


def _refused(host: str) -> str:
    return (
        f"registry {host} refused the credentials (or none were found): set <P>_USERNAME and "
        "<P>_PASSWORD (P is DOCKER_HUB, QUAY or ANY_REGISTRY) or log in with docker's config.json"
    )


def _check(response: httpx.Response, repo: Repository, what: str, expect: tuple[int, ...] = (200,)) -> None:
    if response.status_code in expect:
        return
    if response.status_code in (401, 403):
        raise RegistryError(_refused(repo.host))
    detail = ""
    try:
        errors = response.json().get("errors") or []
        detail = ": " + "; ".join(str(e.get("message") or e.get("code")) for e in errors) if errors else ""
    except ValueError:
        pass
    raise RegistryError(f"registry {repo.host}: {what} of {repo.path}: HTTP {response.status_code}{detail}")

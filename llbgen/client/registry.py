"""Just enough of the OCI distribution API to read and put manifests: assembling a multi-node build's index.

Registries on the loopback are spoken to over plain HTTP (as docker does for 127.0.0.0/8), others
over HTTPS. Credentials come from the same places the build session reads them
(:class:`llbgen.session.auth.Auth`), and answer the registry's Basic or Bearer challenge; they are
never logged.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping

import attrs

from llbgen.llb.errors import LLBGenError
from llbgen.session.auth import Auth, CredentialsError

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = (
    INDEX,
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
DOCKER_HUB = "registry-1.docker.io"


class RegistryError(LLBGenError):
    pass


@attrs.frozen
class Reference:
    """``host/repository[:tag][@digest]``, with docker's defaults for a short name."""

    host: str
    repository: str
    tag: str = ""
    digest: str = ""

    @classmethod
    def parse(cls, text: str) -> Reference:
        name, _, digest = text.partition("@")
        tag = ""
        slash = name.rfind("/")
        colon = name.rfind(":")
        if colon > slash:
            name, tag = name[:colon], name[colon + 1 :]
        first, sep, rest = name.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):
            host, repository = first, rest
        else:
            host, repository = DOCKER_HUB, name if sep else f"library/{name}"
        if not repository:
            raise RegistryError(f"invalid image name {text!r}")
        return cls(host, repository, tag, digest)

    @property
    def name(self) -> str:
        """Without tag or digest, as the exporter's ``push-by-digest`` takes it."""
        return f"{self.host}/{self.repository}"


def _loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]") if not host.startswith("[") else host[1:].split("]")[0]
    return name == "localhost" or name == "::1" or name.startswith("127.")


class Registry:
    """One registry host."""

    def __init__(self, host: str, auth: Auth | None = None) -> None:
        self.host = host
        self._base = f"{'http' if _loopback(host) else 'https'}://{host}/v2/"
        self._auth = auth or Auth()
        self._token: str | None = None

    def get_manifest(self, repository: str, reference: str) -> tuple[str, bytes]:
        """The manifest's media type and bytes."""
        body, headers = self._request(
            "GET", f"{repository}/manifests/{reference}", headers={"Accept": ", ".join(MANIFEST_TYPES)}
        )
        return headers.get("Content-Type", "").split(";")[0], body

    def put_manifest(self, repository: str, reference: str, media_type: str, body: bytes) -> None:
        self._request("PUT", f"{repository}/manifests/{reference}", body, {"Content-Type": media_type})

    def _request(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> tuple[bytes, Mapping[str, str]]:
        for attempt in range(2):
            request = urllib.request.Request(self._base + path, data=body, method=method, headers=dict(headers or {}))
            if self._token:
                request.add_header("Authorization", self._token)
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return response.read(), dict(response.headers)
            except urllib.error.HTTPError as exc:
                challenge = exc.headers.get("WWW-Authenticate", "")
                if exc.code == 401 and attempt == 0 and challenge:
                    self._token = self._answer(challenge)
                    continue
                detail = exc.read().decode(errors="replace").strip()[:200]
                raise RegistryError(f"{method} {self.host}/v2/{path}: {exc.code} {exc.reason} {detail}") from None
            except urllib.error.URLError as exc:
                raise RegistryError(f"cannot reach the registry {self.host}: {exc.reason}") from None
        raise RegistryError(f"{method} {self.host}/v2/{path}: the registry refused the credentials")

    def _answer(self, challenge: str) -> str:
        """The Authorization header answering a ``WWW-Authenticate`` challenge."""
        scheme, _, params_text = challenge.partition(" ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', params_text))
        try:
            creds = self._auth.credentials(self.host)
        except CredentialsError as exc:
            raise RegistryError(str(exc)) from None
        basic = base64.b64encode(f"{creds.username}:{creds.secret}".encode()).decode()
        if scheme.lower() == "basic":
            return f"Basic {basic}"
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        request = urllib.request.Request(f"{params.get('realm', '')}?{urllib.parse.urlencode(query)}")
        if not creds.anonymous:
            request.add_header("Authorization", f"Basic {basic}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.loads(response.read())
        except (urllib.error.URLError, ValueError) as exc:
            raise RegistryError(f"registry {self.host}: cannot get a token: {exc}") from None
        return f"Bearer {answer.get('token') or answer.get('access_token', '')}"

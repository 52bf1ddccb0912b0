"""``docker-credential-env``: a docker credential helper answering from the environment.

A docker config with ``"credsStore": "env"`` makes docker, buildx, crane and llbgen run
``docker-credential-env get`` for a registry's credentials; this answers with
docker-credential-env's variables, read as llbgen reads them itself (``llbgen.session.auth``):
``DOCKER_HUB_*`` for Docker Hub, ``QUAY_*`` for Quay, ``ANY_REGISTRY_*`` for any other registry;
``<P>_USERNAME`` and ``<P>_PASSWORD``, or ``<P>_PUBLIC_ACCESS_ONLY=true`` for anonymous access.
The maker image installs it as ``/usr/local/bin/docker-credential-env``.

Why not the Go helper image-tools' maker carries (github.com/errordeveloper/docker-credential-env):
the Go module proxy this project's machines reach does not serve it. The protocol is
docker-credential-helpers': ``get`` reads the server (a URL such as
``https://index.docker.io/v1/``, or a bare ``host:port``) on stdin and prints ``{"ServerURL",
"Username", "Secret"}``; an error is one line on stdout and exit status 1. Two differences, both
to the Go helper's disadvantage: a registry whose variables are not set answers ``credentials
not found in native keychain``, which docker-credential-helpers' clients take as "anonymous"
(the Go helper's "ANY_REGISTRY_USERNAME is not set" fails a pull of a public image instead); and
a bare ``host:port``, which docker and crane send for registries other than Docker Hub, is
understood (Go's URL parser rejects ``127.0.0.1:5000``). ``store`` and ``erase`` fail: the
environment cannot be written (``docker login`` says so). ``list`` prints ``{}``: the variables
name no registry.

Credentials go to stdout only, as the protocol has it: never to stderr, a file or an error message.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

from llbgen.session.auth import CredentialsError, from_environment

NOT_FOUND = "credentials not found in native keychain"
USAGE = "usage: docker-credential-env get|store|erase|list|version (a docker credential helper)"
VERSION = "docker-credential-env (llbgen)"


def registry_host(server: str) -> str:
    """The host[:port] of what docker asks for: ``https://index.docker.io/v1/`` -> ``index.docker.io``."""
    _, sep, rest = server.strip().partition("://")
    return (rest if sep else server.strip()).split("/", 1)[0]


def get(server: str, environ: Mapping[str, str]) -> tuple[int, str]:
    """The helper's answer to ``get`` for ``server``: (exit status, stdout)."""
    host = registry_host(server)
    if not host:
        return 1, "no server URL on stdin"
    try:
        found = from_environment(host, environ)
    except CredentialsError as exc:
        return 1, str(exc)
    if found is None:
        return 1, NOT_FOUND
    return 0, json.dumps({"ServerURL": server.strip(), "Username": found.username, "Secret": found.secret})


def main(argv: Sequence[str] | None = None, stdin: TextIO | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    stdin = sys.stdin if stdin is None else stdin
    environ = os.environ if environ is None else environ
    if len(args) != 1:
        print(USAGE, file=sys.stderr)
        return 2
    action = args[0]
    if action == "get":
        code, out = get(stdin.read(), environ)
    elif action in ("store", "erase"):
        stdin.read()
        code, out = 1, f"{action} is not supported: credentials come from <P>_USERNAME/<P>_PASSWORD variables"
    elif action == "list":
        code, out = 0, "{}"
    elif action == "version":
        code, out = 0, VERSION
    else:
        print(USAGE, file=sys.stderr)
        return 2
    print(out)
    return code


if __name__ == "__main__":
    sys.exit(main())

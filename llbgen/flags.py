"""Command-line flags that several commands share, and the parsing of their values.

``llbgen build`` and ``llbgen test`` take the same flags for what to build and where
(:func:`add_build_flags`), turned into one :class:`~llbgen.client.run.BuildOptions` by
:func:`build_options`. Every command imports this module, so the client is imported only by
:func:`build_options`, when a command builds.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from llbgen.llb.errors import UsageError
from llbgen.llb.platform import Platform

if TYPE_CHECKING:
    from llbgen.client.connection import TLSConfig
    from llbgen.client.options import BuildOptions
    from llbgen.config import Config

T = TypeVar("T")

PROGRESS_MODES = ("auto", "tty", "plain", "rawjson")


class Parser(argparse.ArgumentParser):
    """A parser whose errors are :class:`UsageError` (one line, exit code 2), not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def add_image_flags(parser: argparse.ArgumentParser, platform_help: str) -> None:
    """The image to build, its ``--platform`` and its ``--arg`` build arguments."""
    parser.add_argument("image", help="image name (a directory under --images)")
    parser.add_argument("--platform", help=platform_help)
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE", help="build argument (repeatable)")


def add_build_flags(parser: argparse.ArgumentParser, platform_help: str) -> None:
    """What ``llbgen build`` and ``llbgen test`` share: the image, the session, the daemon."""
    add_image_flags(parser, platform_help)
    parser.add_argument("--no-cache", action="store_true", help="run every step again")
    parser.add_argument("--progress", choices=PROGRESS_MODES, default="auto")
    parser.add_argument("--secret", action="append", default=[], metavar="id=ID,src=FILE|env=VAR")
    parser.add_argument("--ssh", action="append", default=[], metavar="ID[=SOCKET]")
    parser.add_argument(
        "--local", action="append", default=[], metavar="NAME=DIR", help="directory for a local source (context defaults to .)"
    )
    parser.add_argument("--allow", action="append", default=[], metavar="ENTITLEMENT", help="e.g. network.host, security.insecure")
    add_connection_flags(parser)


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """Where to build: ``--addr`` and the TLS files of a ``tcp://`` address."""
    parser.add_argument(
        "--addr", help="BuildKit address (default: $BUILDKIT_HOST, else a buildx builder, else llbgen's own daemon)"
    )
    parser.add_argument(
        "--builder", help="buildx builder to build on (default: $BUILDX_BUILDER, else buildx's current builder)"
    )
    parser.add_argument("--tlscacert", type=Path, help="CA certificate for tcp:// addresses")
    parser.add_argument("--tlscert", type=Path, help="client certificate")
    parser.add_argument("--tlskey", type=Path, help="client key")
    parser.add_argument("--tlsservername", help="server name to verify the certificate against")


def tls_config(ns: argparse.Namespace) -> TLSConfig:
    """The TLS files :func:`add_connection_flags` parsed into ``ns``."""
    from llbgen.client.connection import TLSConfig

    return TLSConfig(ns.tlscacert, ns.tlscert, ns.tlskey, ns.tlsservername)


def build_options(ns: argparse.Namespace, config: Config, **more: Any) -> BuildOptions:
    """The options :func:`add_build_flags` parsed into ``ns``, with ``more`` (outputs...)."""
    from llbgen.client.options import BuildOptions

    secrets, ssh = {}, {}
    if ns.secret:
        from llbgen.session.secrets import parse_secret_spec

        secrets = _specs(ns.secret, parse_secret_spec, "--secret")
    if ns.ssh:
        from llbgen.session.sshforward import parse_ssh_spec

        ssh = _specs(ns.ssh, parse_ssh_spec, "--ssh")
    return BuildOptions(
        image=ns.image,
        platforms=parse_platforms(ns.platform) if ns.platform is not None else None,
        args=parse_build_args(ns.arg),
        no_cache=ns.no_cache,
        progress=ns.progress,
        secrets=secrets,
        ssh=ssh,
        locals={k: Path(v) for k, v in parse_pairs(ns.local, "--local").items()},
        allow=ns.allow,
        address=ns.addr,
        tls=tls_config(ns),
        daemon=config.daemon,
        builder=ns.builder,
        **more,
    )


def parse_pairs(values: Sequence[str], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {value!r} must be KEY=VALUE")
        pairs[key] = val
    return pairs


def parse_build_args(values: Sequence[str]) -> dict[str, str]:
    return parse_pairs(values, "--arg")


def parse_platforms(value: str) -> list[Platform]:
    try:
        return [Platform.parse(p) for p in value.split(",")]
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _specs(values: Sequence[str], parse: Callable[[str], tuple[str, T]], flag: str) -> dict[str, T]:
    out = {}
    for value in values:
        try:
            key, item = parse(value)
        except ValueError as exc:
            raise UsageError(f"{flag} {value!r}: {exc}") from None
        out[key] = item
    return out

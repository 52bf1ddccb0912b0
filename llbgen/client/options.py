"""What a build is asked to do: the options every way of building shares (``llbgen build``,
``llbgen test``, ``publish``, one node's part of a multi-node build)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from llbgen.client.cachemountspec import CacheMountsRef
from llbgen.client.connection import TLSConfig
from llbgen.client.outputs import CacheOption, Output
from llbgen.config import DaemonSettings
from llbgen.llb.platform import Platform

if TYPE_CHECKING:
    from llbgen.session.secrets import SecretSource


@attrs.frozen(kw_only=True)
class BuildOptions:
    """What to build and where: ``llbgen build``'s options (``llbgen test`` runs its checks with them)."""

    image: str
    #: None: the image's platform for the daemon's (see ImageDefinition.default_platform).
    platforms: Sequence[Platform] | None = None
    args: Mapping[str, str] = attrs.field(factory=dict)
    outputs: Sequence[Output] = ()
    cache_to: Sequence[CacheOption] = ()
    cache_from: Sequence[CacheOption] = ()
    no_cache: bool = False
    #: ``--cache-mounts-from``: seeds the build's empty cache mounts before it (llbgen.client.cachemounts).
    cache_mounts_from: CacheMountsRef | None = None
    #: ``--cache-mounts-to``: pushes the build's cache mounts after it.
    cache_mounts_to: CacheMountsRef | None = None
    progress: str = "auto"
    secrets: Mapping[str, SecretSource] = attrs.field(factory=dict)
    ssh: Mapping[str, Path] = attrs.field(factory=dict)
    locals: Mapping[str, Path] = attrs.field(factory=dict)
    allow: Sequence[str] = ()
    #: The daemon: ``address``, else ``$BUILDKIT_HOST``, else llbgen's own, started with ``daemon``.
    address: str | None = None
    tls: TLSConfig = TLSConfig()
    daemon: DaemonSettings = DaemonSettings()
    #: A buildx builder by name (``--builder``); see :func:`llbgen.client.run.connect` for the precedence.
    builder: str | None = None

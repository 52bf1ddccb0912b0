"""What a ``run`` step mounts besides its root: binds, caches, tmpfs, secrets and ssh sockets.

These are small immutable values a definition passes to ``State.run(..., mounts=[...])``; each
constructor validates its arguments at the user's line, so a mistake is reported where it was made.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import attrs

from llbgen.llb.errors import invalid

if TYPE_CHECKING:
    from llbgen.llb.state import State


class CacheSharing(enum.IntEnum):
    """How concurrent builds share a cache mount (``pb.CacheSharingOpt``)."""

    SHARED = 0
    PRIVATE = 1
    LOCKED = 2


def _absolute(target: str, what: str) -> str:
    # Kept as written (not normalised): the path is part of the op's digest, as in Go.
    if not target or not target.startswith("/"):
        raise invalid(f"{what} target {target!r} must be an absolute path, e.g. /src")
    return target


@attrs.frozen
class Mount:
    """A filesystem mount of a run step: a bind of a state, a persistent cache, or a tmpfs."""

    target: str
    source: State | None = None
    readonly: bool = False
    selector: str = ""
    cache_id: str = ""
    sharing: CacheSharing = CacheSharing.SHARED
    tmpfs: bool = False
    tmpfs_size: int = 0

    @property
    def has_output(self) -> bool:
        """Writable binds produce an output state; readonly, cache and tmpfs mounts do not."""
        return not (self.readonly or self.cache_id or self.tmpfs)


@attrs.frozen
class Secret:
    """A secret from the client's session, as a file (``target``) and/or an environment variable."""

    id: str
    target: str | None
    env: str | None
    uid: int
    gid: int
    mode: int
    optional: bool


@attrs.frozen
class SSH:
    """An ssh-agent socket forwarded from the client's session."""

    id: str
    target: str | None
    uid: int
    gid: int
    mode: int
    optional: bool


def bind(target: str, source: State, *, path: str = "", readonly: bool = False) -> Mount:
    """Mounts ``source`` (its ``path`` subdirectory, if given) at ``target``.

    A writable bind has an output of its own: ``ExecState.mount(target)``.
    """
    from llbgen.llb.state import State

    if not isinstance(source, State):
        raise invalid(
            f"bind mount at {target!r} needs a State as its source, not {type(source).__name__}"
            + (" (use .root or .mount(path) of a run step)" if hasattr(source, "root") else "")
        )
    return Mount(_absolute(target, "bind mount"), source, readonly=readonly, selector=path)


def cache(
    target: str,
    id: str,
    *,
    sharing: CacheSharing | str = CacheSharing.SHARED,
    source: State | None = None,
) -> Mount:
    """A cache directory that persists across builds (apt caches, ccache), keyed by ``id``."""
    if not id:
        raise invalid(f"cache mount at {target!r} needs a non-empty id")
    if isinstance(sharing, str):
        try:
            sharing = CacheSharing[sharing.upper()]
        except KeyError:
            raise invalid(
                f"cache sharing {sharing!r} is not one of shared, private, locked"
            ) from None
    if source is not None and source.output is None:
        source = None
    return Mount(_absolute(target, "cache mount"), source, cache_id=id, sharing=sharing)


def tmpfs(target: str, *, size: int = 0) -> Mount:
    """A tmpfs at ``target``; ``size`` in bytes, 0 for the kernel's default."""
    if size < 0:
        raise invalid(f"tmpfs size must be zero (default) or positive, not {size}")
    return Mount(_absolute(target, "tmpfs mount"), tmpfs=True, tmpfs_size=size)


def secret(
    id: str,
    *,
    target: str | None = None,
    env: str | None = None,
    uid: int = 0,
    gid: int = 0,
    mode: int = 0o400,
    optional: bool = False,
) -> Secret:
    """Exposes secret ``id`` as a file (default ``/run/secrets/<id>``) or as env var ``env``.

    The value comes from the client at build time and never enters the LLB or an image layer.
    """
    if not id:
        raise invalid("a secret needs a non-empty id")
    if target is None and env is None:
        target = f"/run/secrets/{id}"
    if target is not None:
        target = _absolute(target, "secret")
    if env is not None and not env:
        raise invalid(f"secret {id!r}: env must name a variable")
    return Secret(id, target, env, uid, gid, mode, optional)


def ssh(
    id: str = "default",
    *,
    target: str | None = None,
    uid: int = 0,
    gid: int = 0,
    mode: int = 0o600,
    optional: bool = False,
) -> SSH:
    """Forwards the client's ssh agent ``id``; ``SSH_AUTH_SOCK`` points at the first one."""
    if not id:
        raise invalid("an ssh mount needs a non-empty id")
    if target is not None:
        target = _absolute(target, "ssh")
    return SSH(id, target, uid, gid, mode, optional)

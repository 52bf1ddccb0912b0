"""Cache mounts that travel through a registry: seeded before a build, exported after it.

BuildKit keeps cache mounts (ccache, apt caches) on the daemon; its registry cache carries layers
but not them, so a fresh daemon (a CI runner) compiles everything again. This module makes two
small graphs that run as builds of their own on the same daemon, around the build, and leave the
build's own definition (its cache keys, its result) untouched:

- the export graph: for each cache mount id, a step that mounts the cache (same id, same sharing
  mode, same base) and copies it into ``/<dir_name(id)>/`` of an empty output; their merge is an
  image of one layer per id, pushed to the registry. A cache mount that did not change gives the
  same layer (``cp -a`` keeps the files' times; the layer's tar is made from the files), whose blob
  the registry has: it is not uploaded again (and, with a fixed creation time, the same image);
- the seed graph: the same steps the other way, from the image (pinned by digest) mounted read-only
  into the cache mount, when that is empty; a daemon that already has the cache keeps its own
  (copying a large cache over itself on every build would cost more than it brings). A probe graph
  looks into the mounts first, so that the seed (gigabytes for a compiler's cache) is pulled only
  when one of them is empty.

The copy steps run on the root filesystem of a build step that uses the mount: it is an
environment where the mount's files make sense, and it has ``sh`` and ``cp`` whenever the build
step is a shell command. Those root filesystems are the build's own ops (same digests), so they
come from the daemon's cache or the build's ``--cache-from`` (the copy steps' builds import it
too), and a seed step builds, before the build, only what the build builds anyway. Each copy step
must run on every build (the mount's contents are not part of any cache
key), but not with ``ignore_cache``: BuildKit gives a step that ignores the cache fresh, empty
cache mounts (its rule for ``--no-cache``, which therefore makes seeding pointless). So each copy
step carries a random token in its environment: a new op every time, never found in the cache.

Concurrency. The copy steps mount the cache with the sharing mode the build declared, so BuildKit
applies the same rules to them as to the build's steps: a ``locked`` mount is waited for (an export
cannot read a cache a compile is writing, nor a seed write into it while a compile runs); a
``private`` mount is an instance no step is using (after the build, the one it released, unless
other builds left more than one); a ``shared`` mount may be
written by another build while it is copied: the copy then holds each file as it was when read,
which is what tools that write a cache entry to a temporary file and rename it (ccache) need.
The export only reads the mount and writes into a fresh output of its own, and the pushed image is
made from that output, so two builds exporting at once cannot mix their files: the registry keeps
whole images, the last one pushed under the tag.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from llbgen.client.build import Target
from llbgen.client.imageconfig import DEFAULT_PATH, image_config
from llbgen.client.outputs import Output
from llbgen.client.cachemountspec import CacheMountsRef, dir_name
from llbgen.llb.definition import Definition, marshal
from llbgen.llb.errors import LLBGenError
from llbgen.llb.existing import ExistingGraph
from llbgen.llb.merge import merge
from llbgen.llb.mounts import CacheSharing, Mount, bind, cache
from llbgen.llb.platform import Platform
from llbgen.llb.sources import image, scratch
from llbgen.llb.state import State
from llbgen.pb import ops_pb2

SEED = "/llbgen-seed"
CACHE = "/llbgen-cache"
OUT = "/llbgen-out"

# $1 id (for messages), $2 its directory in the image.
SEED_SCRIPT = f"""set -eu
if [ ! -d "{SEED}/$2" ]; then echo "llbgen: cache mount $1: not in the seed"; exit 0; fi
if [ -n "$(ls -A {CACHE})" ]; then echo "llbgen: cache mount $1: not empty, kept as it is"; exit 0; fi
cp -a "{SEED}/$2/." {CACHE}/
echo "llbgen: cache mount $1: seeded, $(du -sk {CACHE} | cut -f1) KiB"
"""

# $1 id, $2 its directory in the output: a file there when the mount is empty.
PROBE_SCRIPT = f"""set -eu
if [ -z "$(ls -A {CACHE})" ]; then : >"{OUT}/$2"; fi
"""

# $1 id, $2 its directory in the image, $3 the limit in KiB (0: none).
EXPORT_SCRIPT = f"""set -eu
size=$(du -sk {CACHE} | cut -f1)
if [ "$3" -gt 0 ] && [ "$size" -gt "$3" ]; then
    echo "llbgen: cache mount $1 holds $size KiB, over max-size ($3 KiB): not exported" >&2
    exit 1
fi
mkdir "{OUT}/$2"
cp -a {CACHE}/. "{OUT}/$2/"
echo "llbgen: cache mount $1: $size KiB"
"""


@attrs.frozen
class CacheMountUse:
    """A cache mount of the build, as the first step that uses it mounts it."""

    id: str
    sharing: CacheSharing
    #: Where that step runs.
    platform: Platform | None
    #: The definition holding the step; ``rootfs`` and ``base`` are (digest, output) in it.
    definition: Definition = attrs.field(repr=False)
    rootfs: tuple[str, int] = attrs.field(repr=False)
    #: The cache mount's own input (its initial contents): part of the cache's identity on the daemon.
    base: tuple[str, int] | None = attrs.field(repr=False, default=None)
    #: The step's PATH, where the copy steps find sh and cp.
    path: str = DEFAULT_PATH


def find_cache_mounts(definitions: Sequence[Definition]) -> dict[str, CacheMountUse]:
    """Every cache mount id of the definitions' run steps, with the first step (in op order) using it."""
    found: dict[str, CacheMountUse] = {}
    for definition in definitions:
        for data in definition.ops:
            op = ops_pb2.Op.FromString(data)
            if op.WhichOneof("op") != "exec":
                continue
            mounts = op.exec.mounts
            root = next((m for m in mounts if m.dest == "/"), None)
            if root is None or root.input < 0:
                continue  # a step on scratch has no shell to copy with
            for mount in mounts:
                if mount.mountType != ops_pb2.CACHE or mount.cacheOpt.ID in found:
                    continue
                base = None
                if mount.input >= 0:
                    base = (op.inputs[mount.input].digest, op.inputs[mount.input].index)
                platform = None
                if op.HasField("platform"):
                    platform = Platform(op.platform.OS, op.platform.Architecture, op.platform.Variant)
                path = next((e[5:] for e in op.exec.meta.env if e.startswith("PATH=")), DEFAULT_PATH)
                found[mount.cacheOpt.ID] = CacheMountUse(
                    mount.cacheOpt.ID,
                    CacheSharing(mount.cacheOpt.sharing),
                    platform,
                    definition,
                    (op.inputs[root.input].digest, op.inputs[root.input].index),
                    base,
                    path,
                )
    return found


def select(uses: Mapping[str, CacheMountUse], spec: CacheMountsRef, flag: str) -> list[CacheMountUse]:
    """The uses ``spec`` names; an id or pattern that matches none of the build's is an error."""
    for pattern in spec.ids:
        if not any(CacheMountsRef(spec.ref, (pattern,)).wants(id) for id in uses):
            known = ", ".join(sorted(uses)) or "none"
            raise LLBGenError(f"{flag}: the build uses no cache mount {pattern!r} (its cache mounts: {known})")
    return [use for id, use in sorted(uses.items()) if spec.wants(id)]


def _copy_step(
    use: CacheMountUse, graphs: dict[int, ExistingGraph], script: str, args: Sequence[str], mounts: Sequence[Mount], name: str
) -> State:
    token = secrets.token_hex(16)
    graph = graphs.setdefault(id(use.definition), ExistingGraph(use.definition))
    base = graph.state(*use.base) if use.base is not None else None
    return graph.state(*use.rootfs).run(
        ["sh", "-c", script, "llbgen-cache-mounts", use.id, dir_name(use.id), *args],
        mounts=[cache(CACHE, use.id, sharing=use.sharing, source=base), *mounts],
        env={"PATH": use.path, "LLBGEN_COPY_TOKEN": token},
        network="none",
        platform=use.platform,
        name=name,
    ).mount(OUT)


def export_state(uses: Sequence[CacheMountUse], max_size: int = 0) -> State:
    """One layer per cache mount: its files under ``/<dir_name(id)>/``."""
    graphs: dict[int, ExistingGraph] = {}
    limit = str(-(-max_size // 1024))
    return merge(
        [
            _copy_step(use, graphs, EXPORT_SCRIPT, [limit], [bind(OUT, scratch())], f"export cache mount {use.id}")
            for use in uses
        ],
        name="cache mounts",
    )


def probe_state(uses: Sequence[CacheMountUse]) -> State:
    """An empty file ``/<dir_name(id)>`` for each cache mount that is empty."""
    graphs: dict[int, ExistingGraph] = {}
    return merge(
        [_copy_step(use, graphs, PROBE_SCRIPT, [], [bind(OUT, scratch())], f"look into cache mount {use.id}") for use in uses],
        name="empty cache mounts",
    )


def seed_state(uses: Sequence[CacheMountUse], pinned: str) -> State:
    """Fills each empty cache mount from the image ``pinned`` (``REF@sha256:...``)."""
    graphs: dict[int, ExistingGraph] = {}
    steps = []
    for use in uses:
        seed = image(pinned, platform=use.platform)
        steps.append(
            _copy_step(
                use, graphs, SEED_SCRIPT, [], [bind(SEED, seed, readonly=True), bind(OUT, scratch())],
                f"seed cache mount {use.id} from {pinned.split('@')[0]}",
            )
        )  # fmt: skip
    return merge(steps, name="seeded cache mounts")


def resolve_seed(spec: CacheMountsRef) -> str | None:
    """``spec``'s image pinned by digest (the same seed for every step of this build), or None
    with a warning when the registry has none: a missing seed makes a cold build, not a failure."""
    from llbgen.release.registry import Registry, RegistryError

    if "@" in spec.ref:
        return spec.ref
    try:
        with Registry() as registry:
            digest = registry.manifest_digest(spec.ref)
    except RegistryError as exc:
        print(f"llbgen: warning: --cache-mounts-from {spec.ref}: {exc}; building without seeding", file=sys.stderr)
        return None
    if digest is None:
        print(f"llbgen: warning: --cache-mounts-from {spec.ref}: not in the registry; building without seeding", file=sys.stderr)
        return None
    return f"{spec.ref}@{digest}"


if TYPE_CHECKING:
    #: Runs a graph as a build of its own on the build's daemon and session: (target, outputs, flag)
    #: -> the exporter response; a failure is an LLBGenError naming ``flag``.
    SideBuild = Callable[[Target, Sequence[Output], str], Mapping[str, str]]


@attrs.frozen
class Transfer:
    """What one build seeds and exports, and the steps that do it."""

    seed_from: CacheMountsRef | None
    seed_uses: Sequence[CacheMountUse]
    export_to: CacheMountsRef | None
    export_uses: Sequence[CacheMountUse]
    #: The daemon's platform, for steps that name none; the build's local.unique.
    native: Platform
    local_unique_id: str

    @classmethod
    def plan(
        cls,
        seed_from: CacheMountsRef | None,
        export_to: CacheMountsRef | None,
        definitions: Sequence[Definition],
        native: Platform,
        local_unique_id: str,
    ) -> Transfer | None:
        """None when there is nothing to do; an id the build does not use is an error now, before
        anything runs."""
        if seed_from is None and export_to is None:
            return None
        uses = find_cache_mounts(definitions)
        if not uses:
            print("llbgen: warning: the build has no cache mounts: nothing to seed or export", file=sys.stderr)
            return None
        return cls(
            seed_from,
            select(uses, seed_from, "--cache-mounts-from") if seed_from is not None else (),
            export_to,
            select(uses, export_to, "--cache-mounts-to") if export_to is not None else (),
            native,
            local_unique_id,
        )

    def _target(self, state: State, uses: Sequence[CacheMountUse]) -> Target:
        platform = uses[0].platform or self.native
        return Target(
            platform, marshal(state, platform=platform, local_unique_id=self.local_unique_id), image_config(state, platform)
        )

    def seed(self, run: SideBuild) -> None:
        """Fills the empty ones of the cache mounts from the seed image, pulled only if one is."""
        if self.seed_from is None:
            return
        with tempfile.TemporaryDirectory(prefix="llbgen-cache-mounts-") as tmp:
            run(self._target(probe_state(self.seed_uses), self.seed_uses), [Output("local", {}, tmp)], "--cache-mounts-from")
            empty = [use for use in self.seed_uses if (Path(tmp) / dir_name(use.id)).exists()]
        if not empty:
            return  # the daemon has its own: nothing to pull
        pinned = resolve_seed(self.seed_from)
        if pinned is not None:
            run(self._target(seed_state(empty, pinned), empty), (), "--cache-mounts-from")

    def export(self, run: SideBuild) -> dict[str, str]:
        """Pushes the cache mounts; the pushed image's name and digest, for the build's metadata."""
        if self.export_to is None:
            return {}
        ref = self.export_to.ref
        pushed = run(
            self._target(export_state(self.export_uses, self.export_to.max_size), self.export_uses),
            [Output("image", {"name": ref, "push": "true"})],
            "--cache-mounts-to",
        )
        digest = pushed.get("containerimage.digest", "")
        print(f"llbgen: cache mounts pushed to {ref}@{digest}", file=sys.stderr)
        return {"llbgen.cache-mounts.name": ref, "llbgen.cache-mounts.digest": digest}

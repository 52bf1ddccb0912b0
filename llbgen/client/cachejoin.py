"""One extra result that depends on every platform's result, so that an exported cache has one leaf.

Why: BuildKit up to v0.32.2 (fixed upstream after it, moby/buildkit#7053) drops links when it
imports a cache whose records form several chains that share records. It walks the chains from
their leaves one after the other (in Go's random map order), and in every walk after the first a
record that an earlier walk stored is found only the first time it is reached; any later path to it
in that walk is skipped without a word. A multi-platform build exports one chain per platform, and
the chains share the records of their common steps (the compilers image, the sources): on import,
one platform's step that reaches a shared record second (bpftool's static libelf, reached through
the compilers image after bpftool's own compile reached it) loses that input's link, matches no
record, and runs again on the importing daemon. Which platform loses depends on the walk order.

With one more result that depends on every platform's (a MergeOp: it copies nothing, its layers are
the platforms' own), the exported records have one leaf, and the importer stores them in a single
walk, in which every record is stored before any path back to it is taken. The extra result is
only returned to the cache exporters: the image exporters read the platforms' refs named by
``refs.platforms`` and leave others alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from llbgen.llb.definition import Definition
from llbgen.llb.graph import Metadata
from llbgen.llb.location import Location
from llbgen.pb import ops_pb2

#: The key of the extra ref in the result's ``refs``: no platform has it (platforms have a "/").
JOIN_KEY = "llbgen-cache-join"

NAME = "[llbgen] join the platforms' results: one chain for --cache-to"


def needed(platforms: int, cache_types: Sequence[str]) -> bool:
    """Whether a build exports records of several chains (inline caches are written per image)."""
    return platforms > 1 and any(kind != "inline" for kind in cache_types)


def join(definitions: Sequence[Definition]) -> Definition:
    """A definition holding every op of ``definitions``, whose result merges their results.

    The ops are the very bytes of each definition (same digests, so the daemon solves nothing
    twice); only the MergeOp and the terminal op are new.
    """
    ops: list[bytes] = []
    digests: list[str] = []
    metadata: dict[str, Metadata] = {}
    locations: dict[str, tuple[Location, ...]] = {}
    heads: list[ops_pb2.Input] = []
    for definition in definitions:
        *body, (_, terminal) = list(definition)
        heads.append(ops_pb2.Op.FromString(terminal).inputs[0])
        for digest, data in body:
            if digest not in metadata:
                ops.append(data)
                digests.append(digest)
                metadata[digest] = definition.metadata[digest]
                if digest in definition.locations:
                    locations[digest] = definition.locations[digest]
    merge = ops_pb2.Op(
        inputs=heads,
        constraints=ops_pb2.WorkerConstraints(),
        merge=ops_pb2.MergeOp(inputs=[ops_pb2.MergeInput(input=i) for i in range(len(heads))]),
    )
    merge_digest = _append(ops, digests, merge)
    metadata[merge_digest] = Metadata(caps=frozenset({"mergeop"}), description={"llb.customname": NAME})
    terminal_digest = _append(ops, digests, ops_pb2.Op(inputs=[ops_pb2.Input(digest=merge_digest)]))
    metadata[terminal_digest] = Metadata(caps=frozenset({"constraints", "platform", "meta.description"}))
    return Definition(tuple(ops), tuple(digests), metadata, locations)


def _append(ops: list[bytes], digests: list[str], op: ops_pb2.Op) -> str:
    data = op.SerializeToString(deterministic=True)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    ops.append(data)
    digests.append(digest)
    return digest

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

from collections.abc import Sequence

from llbgen.llb.definition import Definition, marshal
from llbgen.llb.existing import ExistingGraph
from llbgen.llb.merge import merge
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
    heads = []
    for definition in definitions:
        head = ops_pb2.Op.FromString(definition.ops[-1]).inputs[0]
        heads.append(ExistingGraph(definition).state(head.digest, head.index))
    return marshal(merge(heads, name=NAME))

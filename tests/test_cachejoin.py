"""The definition that joins every platform's result for a cache export (llbgen/client/cachejoin.py)."""

from __future__ import annotations

import hashlib

import llbgen
from llbgen.client import cachejoin
from llbgen.pb import ops_pb2
from tests.graphs import DEB


def platform_definitions() -> list[llbgen.Definition]:
    """Two platforms' graphs sharing a step on the build platform, as bpftool's do."""
    shared = llbgen.image(DEB, platform="linux/amd64").run("sh -c 'echo shared >/s'").root
    definitions = []
    for arch in ("amd64", "arm64"):
        built = shared.run(f"sh -c 'echo {arch} >/out/a'", mounts=[llbgen.bind("/out", llbgen.scratch())])
        state = llbgen.scratch().file(llbgen.copy(built.mount("/out"), "/a", "/a"))
        definitions.append(llbgen.marshal(state, platform=f"linux/{arch}"))
    return definitions


def test_join_keeps_every_op_and_merges_the_results() -> None:
    amd64, arm64 = platform_definitions()
    joined = cachejoin.join([amd64, arm64])
    # every op but the terminal ones, once, as the platforms' definitions have it (same bytes)
    platform_ops = dict(list(amd64)[:-1]) | dict(list(arm64)[:-1])
    assert len(set(joined.digests)) == len(joined.digests)
    assert dict(list(joined)[:-2]) == platform_ops
    assert all(hashlib.sha256(op).hexdigest() == d.split(":")[1] for d, op in joined)
    *_, (merge_digest, merge_bytes), (_, terminal_bytes) = list(joined)
    merge = ops_pb2.Op.FromString(merge_bytes)
    assert [(i.digest, i.index) for i in merge.inputs] == [
        (ops_pb2.Op.FromString(d.ops[-1]).inputs[0].digest, 0) for d in (amd64, arm64)
    ]
    assert [m.input for m in merge.merge.inputs] == [0, 1]
    assert ops_pb2.Op.FromString(terminal_bytes).inputs[0].digest == merge_digest
    assert joined.metadata[merge_digest].description["llb.customname"].startswith("[llbgen]")


def test_join_is_for_several_platforms_and_exported_caches() -> None:
    assert cachejoin.needed(2, ["registry"])
    assert cachejoin.needed(2, ["local"])
    assert not cachejoin.needed(1, ["registry"])
    assert not cachejoin.needed(2, [])
    assert not cachejoin.needed(2, ["inline"])

"""Properties of marshalling that must hold for any graph, not only the reference vectors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import given, reject, settings

import llbgen
from llbgen.pb import ops_pb2
from tests import graphs
from tests.graphs import recipes

ROOT = Path(__file__).resolve().parent.parent
# Timing is not what these tests check (and the machine is shared): no deadline.
untimed = settings(deadline=None)


def marshal(recipe: list[dict[str, Any]]) -> llbgen.Definition:
    """The recipe's definition; recipes llbgen refuses (test_go_parity checks those) are skipped."""
    try:
        return graphs.marshal(recipe)
    except llbgen.LLBGenError:
        reject()


@untimed
@given(recipes)
def test_same_graph_built_twice_marshals_to_the_same_bytes(recipe: list[dict[str, Any]]) -> None:
    first = marshal(recipe)
    second = marshal(recipe)
    assert first.ops == second.ops
    assert first.serialize() == second.serialize()


@settings(max_examples=15, deadline=None)
@given(recipes)
def test_another_process_marshals_the_same_bytes(recipe: list[dict[str, Any]]) -> None:
    here = marshal(recipe)
    there = subprocess.run(
        [sys.executable, "-m", "tests.graphs"],
        input=json.dumps(recipe),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONHASHSEED": "random", "PATH": "/usr/bin:/bin"},
    ).stdout.split()
    assert [op.hex() for op in here.ops] == there


@untimed
@given(recipes)
def test_every_input_is_the_sha256_of_an_earlier_op(recipe: list[dict[str, Any]]) -> None:
    definition = marshal(recipe)
    seen: dict[str, ops_pb2.Op] = {}
    for digest, data in definition:
        assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
        op = ops_pb2.Op.FromString(data)
        for inp in op.inputs:
            assert inp.digest in seen, "an input refers to an op that is not before it"
        seen[digest] = op
    terminal = ops_pb2.Op.FromString(definition.ops[-1])
    assert len(terminal.inputs) == 1 and terminal.WhichOneof("op") is None
    assert terminal.inputs[0].digest == definition.head


@untimed
@given(recipes)
def test_op_bytes_are_valid_protobuf_with_nothing_lost(recipe: list[dict[str, Any]]) -> None:
    """Python's parser reads every op back, and re-serialising yields the same message."""
    for data in marshal(recipe).ops:
        op = ops_pb2.Op.FromString(data)
        assert ops_pb2.Op.FromString(op.SerializeToString()) == op
        assert len(op.SerializeToString()) == len(data)


@untimed
@given(recipes)
def test_every_op_has_metadata_with_caps(recipe: list[dict[str, Any]]) -> None:
    definition = marshal(recipe).to_pb()
    for data in getattr(definition, "def"):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        assert definition.metadata[digest].caps

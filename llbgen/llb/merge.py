"""Merge and diff: layering states without copying (BuildKit's MergeOp and DiffOp)."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from llbgen.llb import wire
from llbgen.llb.errors import invalid
from llbgen.llb.graph import (
    SCRATCH_INPUT,
    MarshalContext,
    Metadata,
    Output,
    StepOptions,
    Vertex,
    op_bytes,
)
from llbgen.llb.location import Location, caller
from llbgen.llb.state import State


@attrs.frozen(eq=False)
class MergeOp(Vertex):
    sources: tuple[Output, ...]
    options: StepOptions
    location: Location | None

    def inputs(self) -> Sequence[Output]:
        return self.sources

    def encode(self, ctx: MarshalContext) -> tuple[bytes, Metadata]:
        body = wire.repeated_message_field(1, (wire.int_field(1, i) for i in range(len(self.sources))))
        inputs = [ctx.input(o) for o in self.sources]
        return op_bytes(ctx, inputs, 6, body, None), Metadata.for_step({"mergeop"}, self.options)


@attrs.frozen(eq=False)
class DiffOp(Vertex):
    lower: Output | None
    upper: Output | None
    options: StepOptions
    location: Location | None

    def inputs(self) -> Sequence[Output]:
        return [o for o in (self.lower, self.upper) if o is not None]

    def encode(self, ctx: MarshalContext) -> tuple[bytes, Metadata]:
        inputs = [ctx.input(o) for o in self.inputs()]
        lower = SCRATCH_INPUT if self.lower is None else 0
        upper = SCRATCH_INPUT if self.upper is None else len(inputs) - 1
        body = wire.message_field(1, wire.int_field(1, lower)) + wire.message_field(
            2, wire.int_field(1, upper)
        )
        return op_bytes(ctx, inputs, 7, body, None), Metadata.for_step({"diffop"}, self.options)


def _states(values: Sequence[object], what: str) -> list[State]:
    for value in values:
        if not isinstance(value, State):
            hint = " (use .root of a run step)" if hasattr(value, "root") else ""
            raise invalid(f"{what} takes States, not {type(value).__name__}{hint}")
    return list(values)  # type: ignore[arg-type]


def merge(states: Sequence[State], *, name: str | None = None) -> State:
    """The states layered in order, later ones on top; scratch inputs are dropped, as in Go."""
    layers = [s for s in _states(states, "merge") if s.output is not None]
    if not layers:
        return State()
    if len(layers) == 1:
        return layers[0]
    op = MergeOp(tuple(s.output for s in layers if s.output), StepOptions(name=name), caller())
    return layers[0].with_output(Output(op))


def diff(lower: State, upper: State, *, name: str | None = None) -> State:
    """What ``upper`` changed relative to ``lower``, as a state that can be merged elsewhere."""
    _states([lower, upper], "diff")
    if lower.output is None:
        return upper
    op = DiffOp(lower.output, upper.output, StepOptions(name=name), caller())
    return lower.with_output(Output(op))

"""The vertices of an LLB graph and what they share: outputs, step options, the marshal context."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

import attrs

from llbgen.llb import wire
from llbgen.llb.location import Location
from llbgen.llb.platform import Platform

# Input/output index sentinels of BuildKit's ops.
SCRATCH_INPUT = -1
NO_OUTPUT = -1


@attrs.frozen
class ProgressGroup:
    """Steps that share a group are shown together by progress UIs (buildx's ``--progress``)."""

    id: str
    name: str
    weak: bool = False

    def encode(self) -> bytes:
        return wire.str_field(1, self.id) + wire.str_field(2, self.name) + wire.bool_field(3, self.weak)


@attrs.frozen
class StepOptions:
    """Per-op constraints of BuildKit's client: name, cache control, progress group, platform."""

    name: str | None = None
    ignore_cache: bool = False
    progress_group: ProgressGroup | None = None
    description: Mapping[str, str] = attrs.field(factory=dict)

    def descriptions(self) -> dict[str, str]:
        out = dict(self.description)
        if self.name is not None:
            out["llb.customname"] = self.name
        return out


@attrs.frozen
class Metadata:
    """``pb.OpMetadata``: what the daemon needs to know about an op without being part of its digest."""

    caps: frozenset[str] = frozenset()
    ignore_cache: bool = False
    description: Mapping[str, str] = attrs.field(factory=dict)
    progress_group: ProgressGroup | None = None

    @classmethod
    def for_step(cls, caps: set[str], options: StepOptions) -> Metadata:
        return cls(
            caps=frozenset(caps),
            ignore_cache=options.ignore_cache,
            description=options.descriptions(),
            progress_group=options.progress_group,
        )


@attrs.frozen
class MarshalContext:
    """What ``llb.State.Marshal``'s constraints give every op: the default platform and local id."""

    platform: Platform
    local_unique_id: str
    digests: dict[int, str] = attrs.field(factory=dict, eq=False, repr=False)

    def input(self, output: Output) -> bytes:
        """``pb.Input`` of an already-marshalled output: digest = 1, index = 2."""
        return wire.str_field(1, self.digests[id(output.vertex)]) + wire.int_field(2, output.index)


class Vertex(abc.ABC):
    """An op of the graph. Subclasses are ``attrs.frozen(eq=False)``: immutable, compared by identity."""

    options: StepOptions
    location: Location | None

    @abc.abstractmethod
    def inputs(self) -> Sequence[Output]:
        """The outputs this op reads, in the order Go's client/llb visits them when marshalling."""

    @abc.abstractmethod
    def encode(self, ctx: MarshalContext) -> tuple[bytes, Metadata]:
        """The op's bytes exactly as Go marshals them, and its metadata."""

    def output_platform(self) -> Platform | None:
        """The platform a state on one of this op's outputs takes (Go's ``output.platform``).

        Sources and run steps given a platform of their own set it; other ops leave the state's.
        """
        return None


@attrs.frozen
class Output:
    """One output of a vertex: what a state points at and what an op input references.

    Vertices compare and hash by identity, so two outputs are equal when they are the same output
    of the same op object, as in Go.
    """

    vertex: Vertex
    index: int = 0


def op_bytes(
    ctx: MarshalContext,
    inputs: Sequence[bytes],
    body_field: int,
    body: bytes,
    platform: Platform | None,
) -> bytes:
    """``pb.Op`` in Go's order: inputs = 1, platform = 10, constraints = 11, then the oneof body."""
    return (
        wire.repeated_message_field(1, inputs)
        + wire.message_field(10, platform.encode() if platform is not None else None)
        + b"\x5a\x00"  # constraints = 11: an empty WorkerConstraints, as Go always sets it
        + wire.message_field(body_field, body)
    )

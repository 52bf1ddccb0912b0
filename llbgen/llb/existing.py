"""States on ops of a definition that is already marshalled (Go's ``llb.NewDefinitionOp``).

A new graph can then build on a step of another build's graph: its ops are marshalled again byte
for byte, so they keep their digests, and the daemon takes them from the cache that build filled.
:mod:`llbgen.client.cachemounts` builds its copy steps this way on the root filesystem of a build
step that uses the cache mount.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from llbgen.llb.definition import Definition
from llbgen.llb.errors import LLBGenError
from llbgen.llb.graph import MarshalContext, Metadata, Output, StepOptions, Vertex
from llbgen.llb.location import Location
from llbgen.llb.platform import Platform
from llbgen.llb.state import State
from llbgen.pb import ops_pb2


@attrs.frozen(eq=False)
class ExistingOp(Vertex):
    """An op as another definition holds it: its bytes, its metadata, its inputs as vertices."""

    data: bytes
    metadata: Metadata
    sources: tuple[Output, ...]
    platform: Platform | None
    options: StepOptions = StepOptions()
    location: Location | None = None

    def inputs(self) -> Sequence[Output]:
        return self.sources

    def encode(self, ctx: MarshalContext) -> tuple[bytes, Metadata]:
        # The bytes name their inputs by digest already; marshalling the inputs (same bytes) first
        # gives those digests again.
        return self.data, self.metadata

    def output_platform(self) -> Platform | None:
        return self.platform


class ExistingGraph:
    """The ops of ``definition``, turned into vertices when a state needs them (each once)."""

    def __init__(self, definition: Definition) -> None:
        self._ops = dict(zip(definition.digests, definition.ops))
        self._metadata = definition.metadata
        self._vertices: dict[str, ExistingOp] = {}

    def state(self, digest: str, index: int = 0) -> State:
        """The state on output ``index`` of the op ``digest``, with that op's platform."""
        return State().with_output(Output(self._vertex(digest), index))

    def _vertex(self, digest: str) -> ExistingOp:
        # Iterative, inputs first: a definition can be a chain of thousands of ops.
        pending = [digest]
        while pending:
            current = pending[-1]
            if current in self._vertices:
                pending.pop()
                continue
            data = self._ops.get(current)
            if data is None:
                raise LLBGenError(f"op {current} is not in the definition")
            op = ops_pb2.Op.FromString(data)
            missing = [i.digest for i in op.inputs if i.digest not in self._vertices]
            if missing:
                pending.extend(missing)
                continue
            pending.pop()
            platform = None
            if op.HasField("platform"):
                platform = Platform(op.platform.OS, op.platform.Architecture, op.platform.Variant)
            self._vertices[current] = ExistingOp(
                data,
                self._metadata.get(current, Metadata()),
                tuple(Output(self._vertices[i.digest], i.index) for i in op.inputs),
                platform,
            )
        return self._vertices[digest]

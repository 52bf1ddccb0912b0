"""Marshalling a state's graph into a ``pb.Definition``, op for op as BuildKit's Go client does.

Ops are visited depth first, inputs before the op that reads them, in the order Go's
``State.Marshal`` visits them, so the list of ops (and with it every digest) is the same as Go's.
The walk is iterative: image builds can be chains of thousands of steps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import attrs

from llbgen.llb import wire
from llbgen.llb.errors import DefinitionError
from llbgen.llb.graph import MarshalContext, Metadata, Vertex
from llbgen.llb.location import Location, display_path
from llbgen.llb.platform import Platform
from llbgen.llb.state import State
from llbgen.pb import ops_pb2

#: The ``local.unique`` attribute of local sources when the caller does not choose one.
DEFAULT_LOCAL_UNIQUE_ID = "llbgen"

_VISITING, _DONE = 1, 2


@attrs.frozen
class Definition:
    """A marshalled graph: op bytes in order (the terminal op last), with metadata and sources."""

    ops: tuple[bytes, ...]
    digests: tuple[str, ...]
    metadata: Mapping[str, Metadata]
    locations: Mapping[str, tuple[Location, ...]]

    @property
    def head(self) -> str | None:
        """Digest of the op whose output is the result (the terminal op's input)."""
        return self.digests[-2] if len(self.digests) >= 2 else None

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        return iter(zip(self.digests, self.ops))

    def to_pb(self) -> ops_pb2.Definition:
        definition = ops_pb2.Definition()
        getattr(definition, "def").extend(self.ops)
        for digest, meta in self.metadata.items():
            entry = definition.metadata[digest]
            entry.ignore_cache = meta.ignore_cache
            entry.description.update(meta.description)
            for cap in meta.caps:
                entry.caps[cap] = True
            if meta.progress_group is not None:
                entry.progress_group.id = meta.progress_group.id
                entry.progress_group.name = meta.progress_group.name
                entry.progress_group.weak = meta.progress_group.weak
        self._add_source_map(definition.Source)
        return definition

    def serialize(self) -> bytes:
        """The binary ``pb.Definition`` that ``buildctl build`` reads from stdin."""
        return self.to_pb().SerializeToString(deterministic=True)

    def _add_source_map(self, source: ops_pb2.Source) -> None:
        files: dict[str, int] = {}
        for digest, locations in self.locations.items():
            for location in locations:
                index = files.get(location.filename)
                if index is None:
                    index = files[location.filename] = len(source.infos)
                    info = source.infos.add(filename=display_path(location.filename), language="Python")
                    try:
                        info.data = Path(location.filename).read_bytes()
                    except OSError:
                        pass  # the file is gone (e.g. code typed at a prompt): lines only
                loc = source.locations[digest].locations.add(sourceIndex=index)
                loc.ranges.add().start.line = location.line
                loc.ranges[-1].end.line = location.line


def marshal(
    state: State,
    *,
    platform: Platform | str | None = None,
    local_unique_id: str = DEFAULT_LOCAL_UNIQUE_ID,
) -> Definition:
    """Marshals everything ``state`` depends on.

    ``platform`` is what ``llb.Platform`` is to Go's Marshal: the platform of ops that do not set
    their own (default: this machine's). A scratch state marshals to an empty definition.
    """
    if isinstance(platform, str):
        platform = Platform.parse(platform)
    ctx = MarshalContext(platform or Platform.host(), local_unique_id)
    if state.output is None:
        return Definition((), (), {}, {})

    ops: list[bytes] = []
    digests: list[str] = []
    metadata: dict[str, Metadata] = {}
    locations: dict[str, tuple[Location, ...]] = {}
    for vertex in _post_order(state.output.vertex):
        data, meta = vertex.encode(ctx)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        ctx.digests[id(vertex)] = digest
        if vertex.location is not None and vertex.location not in locations.get(digest, ()):
            locations[digest] = (*locations.get(digest, ()), vertex.location)
        if digest in metadata:
            metadata[digest] = _merged(metadata[digest], meta)
            continue
        metadata[digest] = meta
        ops.append(data)
        digests.append(digest)

    terminal = wire.message_field(1, ctx.input(state.output))
    terminal_digest = "sha256:" + hashlib.sha256(terminal).hexdigest()
    caps = {"constraints", "platform"}
    if any(m.ignore_cache for m in metadata.values()):
        caps.add("meta.ignorecache")
    if any(m.description for m in metadata.values()):
        caps.add("meta.description")
    metadata[terminal_digest] = Metadata(caps=frozenset(caps))
    ops.append(terminal)
    digests.append(terminal_digest)
    return Definition(tuple(ops), tuple(digests), metadata, locations)


def _merged(a: Metadata, b: Metadata) -> Metadata:
    return Metadata(
        caps=a.caps | b.caps,
        ignore_cache=a.ignore_cache or b.ignore_cache,
        description={**a.description, **b.description},
        progress_group=b.progress_group or a.progress_group,
    )


def _post_order(root: Vertex) -> list[Vertex]:
    """Vertices reachable from ``root``, each after its inputs; raises on a cycle."""
    order: list[Vertex] = []
    marks: dict[int, int] = {id(root): _VISITING}
    stack = [(root, iter(root.inputs()))]
    while stack:
        vertex, pending = stack[-1]
        for output in pending:
            child = output.vertex
            mark = marks.get(id(child))
            if mark is None:
                marks[id(child)] = _VISITING
                stack.append((child, iter(child.inputs())))
                break
            if mark == _VISITING:
                raise DefinitionError("the graph has a cycle: a step depends on itself", child.location)
        else:
            stack.pop()
            marks[id(vertex)] = _DONE
            order.append(vertex)
    return order

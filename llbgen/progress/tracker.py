"""The state of a build as reported by the daemon's ``Control.Status`` stream.

``StatusTracker`` folds ``StatusResponse`` messages into per-vertex records. The daemon sends a
vertex again, complete, whenever anything about it changes, so each vertex message replaces the
previous one. Status rows (pull and transfer progress) are keyed by their id within a vertex; logs
arrive as byte chunks that are split into lines here. Times are kept as integer nanoseconds since
the Unix epoch, exactly as the daemon stamped them.
"""

from __future__ import annotations

import codecs
import collections
from collections.abc import Iterable, Iterator

import attrs
from google.protobuf.message import Message

from llbgen.pb import control_pb2

# Errors with this suffix are steps stopped because something else failed (or the user gave up).
CANCELED_SUFFIX = "context canceled"

DEFAULT_MAX_LOG_LINES = 100

Interval = tuple[int, int | None]


def timestamp_ns(message: Message, field: str) -> int | None:
    """``message.field`` (a ``google.protobuf.Timestamp``) in nanoseconds, or None when unset."""
    if not message.HasField(field):
        return None
    ts = getattr(message, field)
    return int(ts.seconds) * 1_000_000_000 + int(ts.nanos)


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Overlapping (start, stop) spans joined; a span that never stopped swallows later ones."""
    ordered = sorted(intervals, key=lambda ival: ival[0])
    merged: list[Interval] = []
    for start, stop in ordered:
        if not merged:
            merged.append((start, stop))
            continue
        cur_start, cur_stop = merged[-1]
        if cur_stop is None:
            break
        if cur_stop < start:
            merged.append((start, stop))
        elif stop is None:
            merged[-1] = (cur_start, None)
            break
        elif stop > cur_stop:
            merged[-1] = (cur_start, stop)
    return merged


def intervals_ns(intervals: Iterable[Interval], now_ns: int | None = None) -> int:
    """Total length of merged spans; an open span counts up to ``now_ns`` (or not at all)."""
    total = 0
    for start, stop in intervals:
        if stop is None:
            if now_ns is not None:
                total += max(0, now_ns - start)
        else:
            total += stop - start
    return total


@attrs.frozen
class ProgressGroupInfo:
    id: str
    name: str
    weak: bool = False


@attrs.define
class StatusInfo:
    """One progress row of a vertex (``resolve ...``, ``sha256:... 12MB / 30MB``...)."""

    id: str
    name: str = ""
    current: int = 0
    total: int = 0
    timestamp: int = 0
    started: int | None = None
    completed: int | None = None


@attrs.frozen
class LogLine:
    """A line of a step's output. ``offset`` is nanoseconds since the step's latest start."""

    text: str
    stream: int
    timestamp: int
    offset: int


@attrs.frozen
class WarningInfo:
    vertex: str
    level: int
    short: str
    detail: tuple[str, ...] = ()
    url: str = ""


@attrs.define(eq=False)
class VertexInfo:
    """Everything known about one vertex (one op of the solved graph, or a daemon-side step)."""

    digest: str
    name: str = ""
    inputs: tuple[str, ...] = ()
    started: int | None = None
    completed: int | None = None
    cached: bool = False
    error: str = ""
    progress_group: ProgressGroupInfo | None = None
    # Every (start, stop) the daemon reported, by start time: a vertex can run more than once.
    spans: dict[int, int | None] = attrs.field(factory=dict)
    statuses: dict[str, StatusInfo] = attrs.field(factory=dict)
    logs: collections.deque[LogLine] = attrs.field(factory=collections.deque)
    log_count: int = 0
    log_bytes: int = 0
    warnings: list[WarningInfo] = attrs.field(factory=list)
    # The start of a line still being written, per stream: (text, timestamp, offset).
    _partial: dict[int, tuple[str, int, int]] = attrs.field(factory=dict, alias="_partial")
    _decoders: dict[int, codecs.IncrementalDecoder] = attrs.field(factory=dict, alias="_decoders")

    @property
    def intervals(self) -> list[Interval]:
        return merge_intervals(self.spans.items())

    @property
    def is_started(self) -> bool:
        return bool(self.spans)

    @property
    def is_completed(self) -> bool:
        ivals = self.intervals
        return bool(ivals) and ivals[-1][1] is not None

    @property
    def canceled(self) -> bool:
        return bool(self.error) and self.error.endswith(CANCELED_SUFFIX)

    @property
    def failed(self) -> bool:
        return bool(self.error)

    @property
    def state(self) -> str:
        """pending, running, cached, done, error or canceled."""
        if self.error:
            return "canceled" if self.canceled else "error"
        if not self.is_started:
            return "pending"
        if not self.is_completed:
            return "running"
        return "cached" if self.cached else "done"

    def duration_ns(self, now_ns: int | None = None) -> int:
        return intervals_ns(self.intervals, now_ns)

    def partial_lines(self) -> list[str]:
        """Output not ended by a newline yet, one entry per stream."""
        return [line.text for line in self.partial_log_lines()]

    def partial_log_lines(self) -> list[LogLine]:
        return [
            LogLine(text, stream, ts, offset)
            for stream, (text, ts, offset) in sorted(self._partial.items())
            if text
        ]

    def tail(self, n: int) -> list[str]:
        """The last ``n`` lines of output, counting a line still being written."""
        if n <= 0:
            return []
        lines = [line.text for line in self.logs] + self.partial_lines()
        return lines[-n:]


@attrs.define(eq=False)
class Step:
    """What progress UIs show as one row: a vertex, or the vertices of one progress group."""

    key: str
    name: str
    members: list[VertexInfo]
    group: ProgressGroupInfo | None = None

    @property
    def spans(self) -> list[Interval]:
        return [ival for v in self.members for ival in v.spans.items()]

    @property
    def intervals(self) -> list[Interval]:
        return merge_intervals(self.spans)

    @property
    def is_started(self) -> bool:
        return any(v.is_started for v in self.members)

    @property
    def is_completed(self) -> bool:
        ivals = self.intervals
        return bool(ivals) and ivals[-1][1] is not None

    @property
    def cached(self) -> bool:
        return bool(self.members) and all(v.cached for v in self.members)

    @property
    def error(self) -> str:
        return next((v.error for v in self.members if v.error), "")

    @property
    def canceled(self) -> bool:
        return bool(self.error) and self.error.endswith(CANCELED_SUFFIX)

    @property
    def visible(self) -> bool:
        """Groups stay hidden until a non-weak member starts (or a member fails)."""
        if self.group is None:
            return self.is_started
        started = any(v.is_started and not _weak(v) for v in self.members)
        return started or any(v.error for v in self.members)

    def duration_ns(self, now_ns: int | None = None) -> int:
        return intervals_ns(self.intervals, now_ns)

    @property
    def statuses(self) -> list[StatusInfo]:
        return [s for v in self.members for s in v.statuses.values()]

    @property
    def warnings(self) -> list[WarningInfo]:
        return [w for v in self.members for w in v.warnings]

    @property
    def log_bytes(self) -> int:
        return sum(v.log_bytes for v in self.members)

    def tail(self, n: int) -> list[str]:
        if len(self.members) == 1:
            return self.members[0].tail(n)
        lines = sorted(
            (line for v in self.members for line in v.logs), key=lambda line: line.timestamp
        )
        texts = [line.text for line in lines]
        for v in self.members:
            texts.extend(v.partial_lines())
        return texts[-n:] if n > 0 else []


def _weak(v: VertexInfo) -> bool:
    return v.progress_group is not None and v.progress_group.weak


class StatusTracker:
    """Folds a build's status stream into per-vertex state.

    Steps are numbered ``#1, #2...`` the way buildctl numbers them. By default a step gets its
    number when it first starts; a printer that shows numbers itself (the plain printer) calls
    ``defer_numbering()`` and then numbers steps as it prints them, so that the numbers in a
    failure summary are the ones the user saw.
    """

    def __init__(self, *, max_log_lines: int = DEFAULT_MAX_LOG_LINES) -> None:
        self.max_log_lines = max_log_lines
        self.vertices: dict[str, VertexInfo] = {}
        self.warnings: list[WarningInfo] = []
        self._steps: dict[str, Step] = {}
        self._step_of: dict[str, str] = {}
        self._started_order: list[str] = []
        self._started_keys: set[str] = set()
        self._unnumbered: list[str] = []  # started steps waiting for a number
        self._numbers: dict[str, int] = {}
        self._number_on_start = True
        self.first_started: int | None = None

    # -- ingestion --------------------------------------------------------------------------

    def update(self, status: control_pb2.StatusResponse) -> None:
        for pv in status.vertexes:
            self._update_vertex(pv)
        for ps in status.statuses:
            self._update_status(ps)
        for pl in status.logs:
            self._update_log(pl)
        for pw in status.warnings:
            info = WarningInfo(
                vertex=pw.vertex,
                level=int(pw.level),
                short=bytes(pw.short).decode("utf-8", "replace"),
                detail=tuple(bytes(d).decode("utf-8", "replace") for d in pw.detail),
                url=pw.url,
            )
            self.warnings.append(info)
            vtx = self.vertices.get(pw.vertex)
            if vtx is not None:
                vtx.warnings.append(info)
        if self._number_on_start and self._unnumbered:
            waiting = []
            for key in self._unnumbered:
                if key in self._numbers:
                    continue
                if self._steps[key].visible:
                    self.assign_number(key)
                else:
                    waiting.append(key)
            self._unnumbered = waiting

    def _update_vertex(self, pv: control_pb2.Vertex) -> None:
        started = timestamp_ns(pv, "started")
        completed = timestamp_ns(pv, "completed")
        vtx = self.vertices.get(pv.digest)
        if vtx is None:
            vtx = self.vertices[pv.digest] = VertexInfo(pv.digest)
        elif vtx.is_started and started is None:
            # A repeated announcement of a vertex that already ran must not reset it.
            return
        vtx.name = pv.name
        vtx.inputs = tuple(pv.inputs)
        vtx.started = started
        vtx.completed = completed
        vtx.cached = bool(pv.cached)
        vtx.error = pv.error
        if pv.HasField("progressGroup") and pv.progressGroup.id:
            pg = pv.progressGroup
            vtx.progress_group = ProgressGroupInfo(pg.id, pg.name, bool(pg.weak))
        else:
            vtx.progress_group = None
        if started is not None:
            if self.first_started is None:
                self.first_started = started
            vtx.spans[started] = completed
        self._place(vtx)

    def _place(self, vtx: VertexInfo) -> None:
        key = vtx.progress_group.id if vtx.progress_group is not None else vtx.digest
        old = self._step_of.get(vtx.digest)
        if old is not None and old != key:
            self._steps[old].members.remove(vtx)
        step = self._steps.get(key)
        if step is None:
            group = vtx.progress_group
            step = self._steps[key] = Step(key, group.name if group else vtx.name, [], group)
        if vtx not in step.members:
            step.members.append(vtx)
        if step.group is None:
            step.name = vtx.name
        self._step_of[vtx.digest] = key
        if vtx.is_started and key not in self._started_keys:
            self._started_keys.add(key)
            self._started_order.append(key)
            self._unnumbered.append(key)

    def _update_status(self, ps: control_pb2.VertexStatus) -> None:
        vtx = self.vertices.get(ps.vertex)
        if vtx is None:
            return
        row = vtx.statuses.get(ps.ID)
        if row is None:
            row = vtx.statuses[ps.ID] = StatusInfo(ps.ID)
        row.name = ps.name
        row.current = int(ps.current)
        row.total = int(ps.total)
        row.timestamp = timestamp_ns(ps, "timestamp") or 0
        row.started = timestamp_ns(ps, "started")
        row.completed = timestamp_ns(ps, "completed")

    def _update_log(self, pl: control_pb2.VertexLog) -> None:
        vtx = self.vertices.get(pl.vertex)
        if vtx is None:
            return
        data = bytes(pl.msg)
        stream = int(pl.stream)
        ts = timestamp_ns(pl, "timestamp") or 0
        ivals = vtx.intervals
        offset = ts - ivals[-1][0] if ivals else 0
        vtx.log_bytes += len(data)
        decoder = vtx._decoders.get(stream)
        if decoder is None:
            decoder = vtx._decoders[stream] = codecs.getincrementaldecoder("utf-8")("replace")
        head, head_ts, head_offset = vtx._partial.pop(stream, ("", ts, offset))
        *lines, rest = (head + decoder.decode(data)).split("\n")
        for i, line in enumerate(lines):
            # A line keeps the time of its first byte, as buildctl shows it.
            if i == 0:
                vtx.logs.append(LogLine(line, stream, head_ts, head_offset))
            else:
                vtx.logs.append(LogLine(line, stream, ts, offset))
            vtx.log_count += 1
        while len(vtx.logs) > self.max_log_lines:
            vtx.logs.popleft()
        if rest:
            if lines:
                head_ts, head_offset = ts, offset
            vtx._partial[stream] = (rest, head_ts, head_offset)

    # -- numbering --------------------------------------------------------------------------

    def defer_numbering(self) -> None:
        """Stop numbering steps as they start; the caller numbers them with ``assign_number``."""
        self._number_on_start = False

    def assign_number(self, key: str) -> int:
        """The number of step ``key`` (a digest or progress group id), given one if it has none."""
        key = self._step_of.get(key, key)
        if key not in self._numbers:
            self._numbers[key] = len(self._numbers) + 1
        return self._numbers[key]

    def number(self, digest: str) -> int | None:
        """The ``#N`` of the step that shows ``digest`` (its progress group, if it is in one)."""
        return self._numbers.get(self._step_of.get(digest, digest))

    # -- queries ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[VertexInfo]:
        return iter(self.vertices.values())

    def __getitem__(self, digest: str) -> VertexInfo:
        return self.vertices[digest]

    def steps(self) -> list[Step]:
        """The visible steps in the order they started."""
        steps = [self._steps[key] for key in self._started_order]
        return [s for s in steps if s.visible]

    def failed(self) -> list[VertexInfo]:
        """Vertices that reported an error (including ones canceled because another failed)."""
        order = {key: i for i, key in enumerate(self._started_order)}
        failed = [v for v in self.vertices.values() if v.error]
        return sorted(failed, key=lambda v: order.get(self._step_of[v.digest], len(order)))

    def log_tail(self, digest: str, n: int = 20) -> list[str]:
        """The last ``n`` output lines of a vertex (at most ``max_log_lines`` are kept)."""
        vtx = self.vertices.get(digest)
        return [] if vtx is None else vtx.tail(n)

    @property
    def done(self) -> bool:
        return bool(self.vertices) and all(
            v.is_completed or not v.is_started for v in self.vertices.values()
        )

    def counts(self) -> tuple[int, int]:
        """(completed, total) steps, as the tty header shows them."""
        steps = [s for s in self._steps.values() if s.group is None or s.visible]
        return sum(1 for s in steps if s.is_completed), len(steps)

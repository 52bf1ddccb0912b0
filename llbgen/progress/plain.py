"""``--progress plain``: the line format of ``buildctl build --progress plain``.

The output is meant to be byte-for-byte what buildctl prints for the same status stream, so this
module follows the behaviour of BuildKit's progressui text display (v0.32) closely:

* a step's lines are grouped under ``#N name``; when another step needs the screen the current
  one is left with ``#N ...`` and picked up again later under a repeated ``#N name`` header;
* log lines are ``#N <seconds since the step started> text``; status rows are printed again only
  when they advanced by 5% or 5 seconds passed;
* output is refreshed at most every 100 ms, plus 150 ms after the last message (buildctl's rate
  limiter and ticker), which decides how messages arriving close together are grouped;
* on close, the last 10 output lines of every failed step are repeated between ``------`` rules.

Where buildctl picks among equals by Go's random map order, this printer picks the step that was
updated last, then the one that started first.
"""

from __future__ import annotations

import codecs
import math
import os
import threading
import time
from collections.abc import Callable
from typing import TextIO

import attrs

from llbgen.pb import control_pb2
from llbgen.progress.tracker import (
    CANCELED_SUFFIX,
    Interval,
    StatusTracker,
    merge_intervals,
    timestamp_ns,
)

ANTI_FLICKER = 5.0  # seconds a busy step keeps the screen before others get a turn
MAX_DELAY = 10.0  # seconds after which a step that waits for the screen gets it regardless
MIN_TIME_DELTA = 5_000_000_000  # ns between repeated prints of an unfinished status row
MIN_PROGRESS_DELTA = 0.05  # fraction of a status row's total that forces a new print
LOGS_BUFFER_SIZE = 10  # output lines of a failed step repeated at the end
RATE_LIMIT = 0.1  # seconds between refreshes caused by messages
TICK = 0.15  # seconds after the last message when the display refreshes by itself

_SECOND = 1_000_000_000
_BYTE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def go_seconds(ns: int) -> float:
    """``time.Duration(ns).Seconds()``: whole seconds plus the fraction, as Go computes it."""
    sec = abs(ns) // _SECOND
    if ns < 0:
        sec = -sec
    return float(sec) + float(ns - sec * _SECOND) / 1e9


def format_bytes(n: int) -> str:
    """A byte count with a decimal unit and two decimals (``590.06kB``); plain bytes below 1 kB."""
    if -1000 < n < 1000:
        return f"{n}B"
    unit = 0
    base = 1
    while abs(n) >= base * 1000 and unit < len(_BYTE_UNITS) - 1:
        base *= 1000
        unit += 1
    return f"{n / base:.2f}{_BYTE_UNITS[unit]}"


def log_prefix(ns: int) -> str:
    """Seconds since a step started, with 3 decimals below 10s, 2 below 100s, else 1."""
    sec = go_seconds(ns)
    prec = 3 if sec < 10 else 2 if sec < 100 else 1
    return f"{sec:.{prec}f}"


@attrs.define(eq=False)
class _Status:
    id: str
    current: int = 0
    total: int = 0
    timestamp: int = 0
    started: int | None = None
    completed: int | None = None


@attrs.define(eq=False)
class _Vertex:
    """One printed step: a vertex, or a progress group standing for its members."""

    digest: str
    name: str = ""
    started: int | None = None
    completed: int | None = None
    cached: bool = False
    error: str = ""
    prev: tuple[str, int | None, int | None, bool, str] | None = None
    index: int = 0
    statuses: list[_Status] = attrs.field(factory=list)
    by_id: dict[str, _Status] = attrs.field(factory=dict)
    status_updates: dict[str, None] = attrs.field(factory=dict)
    logs: list[bytes] = attrs.field(factory=list)
    logs_partial: bool = False
    logs_offset: int = 0
    ring: list[bytes | None] | None = None
    ring_pos: int = 0
    last_block_time: float | None = None
    block_seq: int = 0  # orders equal block times: which one the clock saw last
    count: int = 0
    warnings: list[bytes] = attrs.field(factory=list)
    warning_idx: int = 0
    spans: dict[int, int | None] = attrs.field(factory=dict)
    merged: list[Interval] = attrs.field(factory=list)
    hidden: bool = False
    # Only for groups: the latest message of each member.
    members: dict[str, control_pb2.Vertex] | None = None

    def bump(self, now: float, seq: int) -> None:
        if self.count == 0:
            self.last_block_time = now
            self.block_seq = seq
        self.count += 1

    def remerge(self) -> None:
        self.merged = merge_intervals(self.spans.items())

    @property
    def is_started(self) -> bool:
        return bool(self.merged)

    @property
    def is_completed(self) -> bool:
        return bool(self.merged) and self.merged[-1][1] is not None

    def last_stop(self) -> int:
        stop = self.merged[-1][1] if self.merged else None
        return stop if stop is not None else 0

    def remember_log(self, line: bytes) -> None:
        if self.ring is None:
            self.ring = [None] * LOGS_BUFFER_SIZE
        self.ring[self.ring_pos] = line
        if not self.logs_partial:
            self.ring_pos = (self.ring_pos + 1) % LOGS_BUFFER_SIZE

    def remembered_logs(self) -> list[bytes]:
        if self.ring is None:
            return []
        order = self.ring[self.ring_pos :] + self.ring[: self.ring_pos]
        return [line for line in order if line is not None]


class _Trace:
    """The display state: what each step has that is not printed yet."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.by_digest: dict[str, _Vertex] = {}
        self.vertexes: list[_Vertex] = []
        self.updates: dict[str, None] = {}
        self.groups: dict[str, _Vertex] = {}
        self._seq = 0

    def _bump(self, v: _Vertex) -> None:
        self._seq += 1
        v.bump(self.clock(), self._seq)

    def update(self, status: control_pb2.StatusResponse) -> None:
        changed_groups: list[str] = []
        for pv in status.vertexes:
            if pv.HasField("progressGroup") and pv.progressGroup.id:
                gid = pv.progressGroup.id
                group = self.groups.get(gid)
                if group is None:
                    group = _Vertex(gid, pv.progressGroup.name, hidden=True, members={})
                    self.groups[gid] = group
                    self.by_digest[gid] = group
                if gid not in changed_groups:
                    changed_groups.append(gid)
                assert group.members is not None
                group.members[pv.digest] = pv
                self.by_digest[pv.digest] = group
                continue
            self._update_vertex(pv)
        for gid in changed_groups:
            self._refresh_group(self.groups[gid])
        for ps in status.statuses:
            v = self.by_digest.get(ps.vertex)
            if v is None:
                continue
            row = v.by_id.get(ps.ID)
            started = timestamp_ns(ps, "started")
            if row is None:
                row = v.by_id[ps.ID] = _Status(ps.ID)
                if started is not None:
                    v.statuses.append(row)
            elif started is not None and row.started is None:
                v.statuses.append(row)
            row.current = int(ps.current)
            row.total = int(ps.total)
            row.timestamp = timestamp_ns(ps, "timestamp") or 0
            row.started = started
            row.completed = timestamp_ns(ps, "completed")
            v.status_updates[ps.ID] = None
            self.updates[v.digest] = None
            self._bump(v)
        for pw in status.warnings:
            v = self.by_digest.get(pw.vertex)
            if v is None:
                continue
            v.warnings.append(bytes(pw.short))
            self._bump(v)
        for pl in status.logs:
            v = self.by_digest.get(pl.vertex)
            if v is None:
                continue
            self._add_log(v, bytes(pl.msg), timestamp_ns(pl, "timestamp") or 0)
            self.updates[v.digest] = None
            self._bump(v)

    def _update_vertex(self, pv: control_pb2.Vertex) -> None:
        started = timestamp_ns(pv, "started")
        completed = timestamp_ns(pv, "completed")
        v = self.by_digest.get(pv.digest)
        was_started = v is not None and v.is_started
        if v is None:
            v = self.by_digest[pv.digest] = _Vertex(pv.digest)
        if started is not None:
            # A message counts as news when anything shown changed; a completion always does.
            now = (pv.name, started, completed, bool(pv.cached), pv.error)
            old = v.prev
            if (
                old is None
                or completed is not None
                or old[0] != now[0]
                or old[1] != now[1]
                or old[3] != now[3]
                or old[4] != now[4]
            ):
                self._bump(v)
                self.updates[v.digest] = None
            v.prev = now
            if not was_started:
                self.vertexes.append(v)
        if not was_started or started is not None:
            v.name = pv.name
            v.started = started
            v.completed = completed
            v.cached = bool(pv.cached)
            v.error = pv.error
        if started is not None:
            v.spans[started] = completed
            v.remerge()

    def _refresh_group(self, group: _Vertex) -> None:
        assert group.members is not None
        was_hidden = group.hidden
        changed = False
        cached = True
        error = ""
        for member in group.members.values():
            started = timestamp_ns(member, "started")
            if started is not None:
                stop = timestamp_ns(member, "completed")
                if started not in group.spans or group.spans[started] != stop:
                    changed = True
                group.spans[started] = stop
                if not member.progressGroup.weak:
                    group.hidden = False
            cached = cached and bool(member.cached)
            if not error:
                error = member.error
            else:
                group.hidden = False
        if group.cached != cached or group.error != error:
            changed = True
        group.cached = cached
        group.error = error
        newly_revealed = was_hidden and not group.hidden
        if newly_revealed:
            changed = True
        group.remerge()
        if group.hidden:
            return
        if newly_revealed:
            self.vertexes.append(group)
        if changed:
            self._bump(group)
            self.updates[group.digest] = None

    def _add_log(self, v: _Vertex, data: bytes, ts: int) -> None:
        if not data:
            v.logs_partial = True
            return
        pieces = data.split(b"\n")
        complete = pieces[-1] == b""
        if complete:
            pieces.pop()
        for i, piece in enumerate(pieces):
            if i == 0 and v.logs_partial and v.logs:
                v.logs[-1] += piece
                continue
            rel = ts - v.merged[-1][0] if v.merged else 0
            v.logs.append(log_prefix(rel).encode() + b" " + piece)
        v.logs_partial = not complete


class _TextMux:
    """Decides what to print for the pending updates, and prints it."""

    def __init__(self, trace: _Trace, write: Callable[[bytes], None], tracker: StatusTracker):
        self.t = trace
        self.write = write
        self.tracker = tracker
        self.current: str = ""
        self.last: dict[str, tuple[int, int]] = {}  # status id -> (current, timestamp)
        self.not_first = False
        self.truncate = os.environ.get("PROGRESS_NO_TRUNC") == "0"

    def line(self, text: str | bytes = b"") -> None:
        self.write((text.encode() if isinstance(text, str) else text) + b"\n")

    def print_vertex(self, dgst: str) -> None:
        t = self.t
        v = t.by_digest.get(dgst)
        if v is None:
            return
        if v.index == 0:
            v.index = self.tracker.assign_number(v.digest)
        if dgst != self.current:
            if self.current:
                old = t.by_digest[self.current]
                if old.logs_partial:
                    self.line()
                old.logs_offset = 0
                old.count = 0
                self.line(f"#{old.index} ...")
            if self.not_first:
                self.line()
            self.not_first = True
            name = v.name
            if self.truncate and len(name) > 72:
                name = name[:72] + "..."
            self.line(f"#{v.index} {name}")

        open_status = False
        for s in v.statuses:
            if s.id not in v.status_updates:
                continue
            last = self.last.get(s.id)
            if last is not None and s.completed is None:
                progress = (s.current - last[0]) / s.total if s.total > 0 else 0.0
                if progress < MIN_PROGRESS_DELTA and s.timestamp - last[1] < MIN_TIME_DELTA:
                    continue
            self.last[s.id] = (s.current, s.timestamp)
            size = ""
            if s.total != 0:
                size = f" {format_bytes(s.current)} / {format_bytes(s.total)}"
            elif s.current != 0:
                size = f" {format_bytes(s.current)}"
            took = ""
            end = s.completed if s.completed is not None else s.timestamp
            if s.started is not None:
                diff = go_seconds(end - s.started)
                if diff > 0.01:
                    took = f" {diff:.1f}s"
            if s.completed is not None:
                took += " done"
            else:
                open_status = True
            self.line(f"#{v.index} {s.id}{size}{took}")
        v.status_updates = {}

        for short in v.warnings[v.warning_idx :]:
            self.line(f"#{v.index} WARN: ".encode() + short)
            v.warning_idx += 1

        for i, text in enumerate(v.logs):
            if i == 0 and v.logs_offset != 0:
                text = text[v.logs_offset :]
                self.write(text)
            else:
                self.write(f"#{v.index} ".encode() + text)
            if i != len(v.logs) - 1 or not v.logs_partial:
                self.line()
            v.remember_log(text)
        if v.logs:
            if v.logs_partial:
                v.logs = v.logs[-1:]
                v.logs_offset = len(v.logs[0])
            else:
                v.logs = []
                v.logs_offset = 0

        self.current = dgst
        if v.is_completed and not open_status:
            self.current = ""
            v.count = 0
            if v.logs_partial:
                self.line()
            if v.error:
                if v.error.endswith(CANCELED_SUFFIX):
                    self.line(f"#{v.index} CANCELED")
                else:
                    self.line(f"#{v.index} ERROR: {v.error}")
            elif v.cached:
                self.line(f"#{v.index} CACHED")
            else:
                took = ""
                if v.merged:
                    total = sum(go_seconds(stop - start) for start, stop in v.merged if stop)
                    took = f" {total:.1f}s"
                self.line(f"#{v.index} DONE{took}")
        t.updates.pop(dgst, None)

    def print(self) -> None:
        t = self.t
        completed: list[str] = []
        rest: list[str] = []
        for dgst in t.updates:
            v = t.by_digest.get(dgst)
            if v is None or v.hidden:
                continue
            (completed if v.is_completed else rest).append(dgst)

        current = self.current
        if current in completed:
            self.print_vertex(current)
        order = {v.digest: i for i, v in enumerate(t.vertexes)}
        completed.sort(key=lambda d: (t.by_digest[d].last_stop(), order.get(d, 0)))
        for dgst in completed:
            if dgst != current:
                self.print_vertex(dgst)

        if not rest:
            if current:
                cur = t.by_digest[current]
                if cur.is_started and not cur.is_completed:
                    return
            for v in t.vertexes:
                if v.is_started and not v.is_completed and not v.hidden:
                    self.print_vertex(v.digest)
                    return
            return

        if current in rest:
            self.print_vertex(current)

        now = t.clock()
        candidates = list(rest)
        if current and current not in candidates:
            candidates.append(current)
        # Among steps that are equally busy, the one whose wait began last wins: buildctl reads
        # the clock for each step in turn, so the later reading gives it the higher rate.
        candidates.sort(key=lambda d: t.by_digest[d].block_seq if d in t.by_digest else 0)
        stats: dict[str, tuple[float, float, bool]] = {}  # block time, speed, over limit
        total_speed = 0.0
        best: str | None = None
        for dgst in candidates:
            v = t.by_digest.get(dgst)
            if v is None or v.last_block_time is None:
                continue
            block = now - v.last_block_time
            speed = _divide(float(v.count), block)
            over = block > MAX_DELAY and dgst != current
            stats[dgst] = (block, speed, over)
            total_speed += speed
            if over or best is None or stats[best][1] <= speed:
                best = dgst

        if current in completed or not current:
            if best is not None:
                self.print_vertex(best)
            return

        for dgst in rest:
            if dgst in stats and stats[dgst][2]:
                self.print_vertex(dgst)
                return

        if current in stats:
            block, speed, _ = stats[current]
            share = _divide(speed, total_speed)
            if _divide(1.0, 1.0 - share) * ANTI_FLICKER < block and best is not None:
                self.print_vertex(best)

    def error_logs(self) -> None:
        for v in self.t.vertexes:
            if not v.error or v.error.endswith(CANCELED_SUFFIX):
                continue
            self.line("------")
            self.line(f" > {v.name}:")
            for text in v.logs:
                self.line(text)
            for text in v.remembered_logs():
                self.line(text)
            self.line("------")


def _divide(a: float, b: float) -> float:
    """Float division with IEEE results for a zero divisor, as Go gives them."""
    if b == 0:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


class PlainPrinter:
    """Prints a build's progress as buildctl's ``--progress plain`` does.

    ``update`` may be called from any one thread at a time. Unless ``ticker=False``, a daemon
    thread refreshes the output 150 ms after the last update, like buildctl; tests drive
    ``refresh`` themselves with a fake ``clock`` instead.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        tracker: StatusTracker | None = None,
        error_logs: bool = True,
        clock: Callable[[], float] = time.monotonic,
        ticker: bool = True,
    ) -> None:
        self.stream = stream
        self.tracker = tracker if tracker is not None else StatusTracker()
        self.tracker.defer_numbering()
        self.error_logs = error_logs
        self.clock = clock
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._trace = _Trace(clock)
        self._mux = _TextMux(self._trace, self._write, self.tracker)
        self._lock = threading.RLock()
        self._last_refresh: float | None = None
        self._next_tick = clock() + TICK
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if ticker:
            self._thread = threading.Thread(target=self._tick, name="llbgen-progress", daemon=True)
            self._thread.start()

    def _write(self, data: bytes) -> None:
        self.stream.write(self._decoder.decode(data))

    def update(self, status: control_pb2.StatusResponse) -> None:
        with self._lock:
            if self._closed:
                return
            self.tracker.update(status)
            self._trace.update(status)
            now = self.clock()
            self._next_tick = now + TICK
            if self._last_refresh is None or now - self._last_refresh >= RATE_LIMIT:
                self._last_refresh = now
                self._print()

    def refresh(self) -> None:
        """Prints what is pending (buildctl's ticker does this 150 ms after the last message)."""
        with self._lock:
            if not self._closed:
                self._print()

    def next_tick(self) -> float:
        """When the ticker refreshes next, on ``clock``'s scale."""
        return self._next_tick

    def _print(self) -> None:
        self._mux.print()
        self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(max(0.0, self._next_tick - self.clock())):
            with self._lock:
                if self._closed:
                    return
                if self.clock() >= self._next_tick:
                    try:
                        self._print()
                    except (OSError, ValueError):  # the stream went away (closed pipe...)
                        return
                    self._next_tick += TICK

    def close(self) -> None:
        """Prints what is pending, then the output of failed steps. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._mux.print()
            if self.error_logs:
                self._mux.error_logs()
            self.stream.write(self._decoder.decode(b"", final=True))
            self.stream.flush()
            self._closed = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1)

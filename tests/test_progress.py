"""Build progress: the status tracker, the plain/tty/rawjson printers and the failure summary.

The plain printer is checked against buildctl itself: tests/data/progress holds status streams
recorded from buildkitd v0.32.2 with ``buildctl build --progress plain --trace FILE`` (the trace
file is buildctl's rawjson encoding of every status message; stderr is buildctl's plain rendering
of those same messages). See tests/data/progress/capture.py to record them again.
"""

from __future__ import annotations

import io
import re
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from rich.console import Console

from llbgen.pb import control_pb2
from llbgen.progress import (
    PlainPrinter,
    RawJSONPrinter,
    StatusTracker,
    TtyPrinter,
    failure_summary,
    make_printer,
    rawjson,
)
from llbgen.progress.plain import TICK, format_bytes, log_prefix
from llbgen.progress.tracker import timestamp_ns

DATA = Path(__file__).resolve().parent / "data" / "progress"
CASES = sorted(p.name.removesuffix(".rawjson") for p in DATA.glob("*.rawjson"))

SEC = 1_000_000_000
T0 = 1_790_000_000 * SEC  # an arbitrary epoch for constructed streams


# -- recorded streams ---------------------------------------------------------------------------


def load(case: str) -> list[control_pb2.StatusResponse]:
    return [rawjson.decode(line) for line in (DATA / f"{case}.rawjson").read_text().splitlines()]


def buildctl_progress(case: str) -> str:
    """buildctl's stderr without what is not the progress display.

    Dropped: logrus lines (``time="..." level=info msg="tracing logs to ..."``) and, after a
    failure, the source excerpt and ``error: failed to solve: ...`` that buildctl's main prints
    from the returned error once the display is closed.
    """
    lines = (DATA / f"{case}.stderr").read_text().splitlines(keepends=True)
    lines = [line for line in lines if not line.startswith('time="')]
    for i, line in enumerate(lines):
        if line.startswith("error: "):
            end = i
            rule = "-" * 20 + "\n"
            if i >= 1 and lines[i - 1] == rule:
                start = lines.index(rule)  # the excerpt: "file:line", rule, code, rule
                end = start - 1
            return "".join(lines[:end])
    return "".join(lines)


def stamps(msg: control_pb2.StatusResponse) -> list[int]:
    out: list[int | None] = []
    for v in msg.vertexes:
        out += [timestamp_ns(v, "started"), timestamp_ns(v, "completed")]
    for s in msg.statuses:
        out += [timestamp_ns(s, f) for f in ("timestamp", "started", "completed")]
    for log in msg.logs:
        out.append(timestamp_ns(log, "timestamp"))
    return [t for t in out if t]


def arrivals(msgs: list[control_pb2.StatusResponse]) -> list[float]:
    """When each message reached buildctl, in seconds, as far as the stream itself tells.

    buildctl groups messages by when they arrive (it redraws at most every 100 ms, and 150 ms
    after the last message), which the trace does not record. The model: a message arrives 2 ms
    after its latest timestamp, 4 ms for messages carrying logs; a message with no timestamp
    (vertices announced before they run) arrives with its neighbour; arrivals never go back.
    This reproduces every recording here exactly.
    """
    base = min(t for m in msgs for t in stamps(m))
    times: list[float | None] = []
    last: float | None = None
    for m in msgs:
        ts = stamps(m)
        if ts:
            at = (max(ts) - base) / SEC + (0.004 if len(m.logs) else 0.002)
            last = at if last is None else max(last, at)
        times.append(last)
    first = next(t for t in times if t is not None)
    return [first if t is None else t for t in times]


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def replay_plain(
    msgs: list[control_pb2.StatusResponse], at: Iterable[float], **kw: object
) -> tuple[str, PlainPrinter]:
    """Feeds messages to a plain printer at the given times, running its ticker on the way."""
    clock = Clock()
    out = io.StringIO()
    printer = PlainPrinter(out, clock=clock, ticker=False, **kw)  # type: ignore[arg-type]
    for msg, when in zip(msgs, at, strict=True):
        while printer.next_tick() <= when:
            clock.now = printer.next_tick()
            printer.refresh()
            printer._next_tick += TICK
        clock.now = when
        printer.update(msg)
    printer.close()
    return out.getvalue(), printer


def test_recordings_are_present() -> None:
    assert {"fail", "cancel", "dockerfile", "files", "files-cached", "interleave"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_plain_output_equals_buildctl(case: str) -> None:
    msgs = load(case)
    text, _ = replay_plain(msgs, arrivals(msgs))
    assert text == buildctl_progress(case)


@pytest.mark.parametrize("case", CASES)
def test_rawjson_lines_are_byte_identical_to_buildctl(case: str) -> None:
    lines = (DATA / f"{case}.rawjson").read_text().splitlines(keepends=True)
    out = io.StringIO()
    printer = RawJSONPrinter(out)
    for line in lines:
        printer.update(rawjson.decode(line))
    printer.close()
    assert out.getvalue() == "".join(lines)


def test_rawjson_shape() -> None:
    line = (DATA / "fail.rawjson").read_text().splitlines()[-1]
    obj = rawjson.to_json(rawjson.decode(line))
    (vertex,) = obj["vertexes"]
    assert list(vertex) == ["digest", "inputs", "name", "started", "completed", "error"]
    assert vertex["error"].endswith("did not complete successfully: exit code: 3")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", vertex["started"])
    assert "\\u003e\\u00262" in line  # '>&2' in the command, escaped as Go escapes HTML
    # Warnings (here the dockerfile frontend's lint rules) keep their source info and ranges.
    warnings = [
        w for ln in (DATA / "dockerfile.rawjson").read_text().splitlines()
        for w in rawjson.to_json(rawjson.decode(ln)).get("warnings", [])
    ]
    assert len(warnings) == 3
    assert set(warnings[0]) == {"vertex", "level", "short", "detail", "url", "sourceInfo", "range"}
    assert warnings[0]["range"][0]["start"]["line"] == 1
    assert warnings[0]["sourceInfo"]["filename"] == "Dockerfile"


def test_rawjson_times_and_empty_values() -> None:
    msg = control_pb2.StatusResponse()
    v = msg.vertexes.add(digest="sha256:aa", name="x")
    v.started.seconds, v.started.nanos = 1_700_000_000, 120_000_000
    log = msg.logs.add(vertex="sha256:aa", stream=2)
    log.timestamp.seconds = 1_700_000_001
    assert rawjson.encode(msg) == (
        '{"vertexes":[{"digest":"sha256:aa","name":"x","started":"2023-11-14T22:13:20.12Z"}],'
        '"logs":[{"vertex":"sha256:aa","stream":2,"data":null,'
        '"timestamp":"2023-11-14T22:13:21Z"}]}\n'
    )
    assert rawjson.parse_time("2023-11-14T23:13:20.12+01:00") == 1_700_000_000_120_000_000
    assert rawjson.encode(rawjson.decode(rawjson.encode(msg))) == rawjson.encode(msg)


# -- the tracker on recorded streams -------------------------------------------------------------


def test_tracker_on_a_failed_exec() -> None:
    msgs = load("fail")
    _, printer = replay_plain(msgs, arrivals(msgs))
    tracker = printer.tracker
    (failed,) = tracker.failed()
    assert failed.name.startswith("/bin/sh -c echo hi;")
    assert failed.error.endswith("did not complete successfully: exit code: 3")
    assert failed.state == "error"
    assert tracker.number(failed.digest) == 2  # as buildctl printed it: "#2 ERROR: ..."
    assert tracker.log_tail(failed.digest, 10) == ["hi", "err", "partial line"]
    assert tracker.log_tail(failed.digest, 1) == ["partial line"]
    assert [line.stream for line in failed.logs] == [1, 2, 1]
    (local,) = [v for v in tracker if v.name == "local://context"]
    assert local.state == "done" and tracker.number(local.digest) == 1
    assert len(local.spans) == 2  # the local source ran twice (buildctl sums both)
    row = local.statuses["transferring context:"]
    assert row.current == 1983047 and row.completed is not None


def test_numbering_follows_what_plain_printed() -> None:
    msgs = load("cancel")
    text, printer = replay_plain(msgs, arrivals(msgs))
    numbers = {
        name: int(n) for n, name in re.findall(r"^#(\d+) (/bin/sh -c .*)$", text, re.M)
    }
    for vtx in printer.tracker:
        if vtx.name in numbers:
            assert printer.tracker.number(vtx.digest) == numbers[vtx.name]


def test_tracker_numbers_by_start_without_a_plain_printer() -> None:
    tracker = StatusTracker()
    for msg in load("parallel"):
        tracker.update(msg)
    started = sorted((v for v in tracker if v.started), key=lambda v: v.started or 0)
    assert [tracker.number(v.digest) for v in started] == list(range(1, len(started) + 1))
    assert tracker.done and not tracker.failed()


def test_failure_summary_of_a_recorded_failure() -> None:
    msgs = load("cancel")
    _, printer = replay_plain(msgs, arrivals(msgs))
    tracker = printer.tracker
    assert len(tracker.failed()) == 2  # the failing step and the one canceled because of it
    (bad,) = [v for v in tracker.failed() if not v.canceled]
    summary = failure_summary(tracker, {bad.digest: "images/app/image.py:12"}, tail=5)
    assert summary == (
        "failed: #3 /bin/sh -c echo about to fail; sleep 0.5; echo oops >&2; exit 7\n"
        "  at images/app/image.py:12\n"
        '  process "/bin/sh -c echo about to fail; sleep 0.5; echo oops >&2; exit 7" did not'
        " complete successfully: exit code: 7\n"
        "  output (2 lines):\n"
        "  | about to fail\n"
        "  | oops\n"
    )


def test_groups_are_one_step() -> None:
    tracker = StatusTracker()
    for msg in load("groups"):
        tracker.update(msg)
    names = [s.name for s in tracker.steps()]
    assert names.count("my group") == 1
    (group,) = [s for s in tracker.steps() if s.name == "my group"]
    assert len(group.members) == 2 and group.is_completed
    assert group.tail(5) == ["in group a", "in group b"]


# -- constructed streams ------------------------------------------------------------------------


def at(seconds: float) -> int:
    return T0 + round(seconds * SEC)


def _set(ts: object, ns: int) -> None:
    ts.seconds, ts.nanos = divmod(ns, SEC)  # type: ignore[attr-defined]


def vertex(
    digest: str,
    name: str,
    started: float | None = None,
    completed: float | None = None,
    *,
    cached: bool = False,
    error: str = "",
    group: tuple[str, str, bool] | None = None,
) -> control_pb2.StatusResponse:
    msg = control_pb2.StatusResponse()
    v = msg.vertexes.add(digest=digest, name=name, cached=cached, error=error)
    if started is not None:
        _set(v.started, at(started))
    if completed is not None:
        _set(v.completed, at(completed))
    if group is not None:
        v.progressGroup.id, v.progressGroup.name, v.progressGroup.weak = group
    return msg


def log(digest: str, data: bytes, when: float, stream: int = 1) -> control_pb2.StatusResponse:
    msg = control_pb2.StatusResponse()
    entry = msg.logs.add(vertex=digest, msg=data, stream=stream)
    _set(entry.timestamp, at(when))
    return msg


def status(
    digest: str,
    id: str,
    when: float,
    started: float,
    completed: float | None = None,
    current: int = 0,
    total: int = 0,
) -> control_pb2.StatusResponse:
    msg = control_pb2.StatusResponse()
    row = msg.statuses.add(ID=id, vertex=digest, current=current, total=total)
    _set(row.timestamp, at(when))
    _set(row.started, at(started))
    if completed is not None:
        _set(row.completed, at(completed))
    return msg


def warning(digest: str, short: bytes) -> control_pb2.StatusResponse:
    msg = control_pb2.StatusResponse()
    msg.warnings.add(vertex=digest, level=1, short=short)
    return msg


EXEC_ERROR = 'process "/bin/sh -c false" did not complete successfully: exit code: 1'


def test_plain_format_by_hand() -> None:
    stream = [
        (0.0, vertex("a", "step a"), ),
        (0.0, vertex("a", "step a", 0.0)),
        (0.2, log("a", b"hello\n", 0.2)),
        (0.4, status("a", "resolve thing", 0.4, 0.3)),
        (0.6, status("a", "resolve thing", 0.56, 0.3, 0.56, current=1500, total=3000)),
        (0.8, vertex("a", "step a", 0.0, 0.8)),
        (1.0, vertex("b", "step b", 1.0, 1.0, cached=True)),
        (1.2, vertex("c", "step c", 1.2)),
        (1.4, warning("c", b"careful")),
        (1.6, log("c", b"boom\n", 1.6, stream=2)),
        (1.8, vertex("c", "step c", 1.2, 1.8, error=EXEC_ERROR)),
    ]
    text, printer = replay_plain([m for _, m in stream], [t for t, _ in stream])
    assert text == (
        "#1 step a\n"
        "#1 0.200 hello\n"
        "#1 resolve thing 0.1s\n"
        "#1 resolve thing 1.50kB / 3.00kB 0.3s done\n"
        "#1 DONE 0.8s\n"
        "\n"
        "#2 step b\n"
        "#2 CACHED\n"
        "\n"
        "#3 step c\n"
        "#3 WARN: careful\n"
        "#3 0.400 boom\n"
        f"#3 ERROR: {EXEC_ERROR}\n"
        "------\n"
        " > step c:\n"
        "0.400 boom\n"
        "------\n"
    )
    summary = failure_summary(printer.tracker, {"c": "image.py:7"})
    assert summary == (
        f"failed: #3 step c\n  at image.py:7\n  {EXEC_ERROR}\n  output (1 line):\n  | boom\n"
    )


def test_plain_switches_between_parallel_steps() -> None:
    """A busy step keeps the screen; one that waited 10 s takes it, with ``#N ...`` left behind."""
    msgs = [vertex("a", "step a", 0.0), vertex("b", "step b", 0.05)]
    times = [0.0, 0.05]
    for i in range(1, 25):
        msgs.append(log("a", f"a{i}\n".encode(), 0.5 * i))
        times.append(0.5 * i)
    msgs.insert(3, log("b", b"b1\npartial", 0.7))
    times.insert(3, 0.7)
    text, _ = replay_plain(msgs, times, error_logs=False)
    head, _, tail = text.partition("#1 ...\n")
    assert head.splitlines()[:3] == ["#1 step a", "#1 0.500 a1", "#1 1.000 a2"]
    assert "b1" not in head
    # b took over once it had waited 10 s; its unfinished line was ended with a newline.
    assert tail.startswith("\n#2 step b\n#2 0.650 b1\n#2 0.650 partial\n")


def test_plain_rate_limit_and_ticker() -> None:
    clock = Clock()
    out = io.StringIO()
    printer = PlainPrinter(out, clock=clock, ticker=False)
    printer.update(vertex("a", "step a", 0.0))
    assert out.getvalue() == "#1 step a\n"
    clock.now = 0.05  # within 100 ms of the last print: held back
    printer.update(log("a", b"one\n", 0.05))
    assert out.getvalue() == "#1 step a\n"
    assert printer.next_tick() == pytest.approx(0.2)
    clock.now = 0.2
    printer.refresh()
    assert out.getvalue() == "#1 step a\n#1 0.050 one\n"
    printer.close()
    printer.close()


def test_plain_ticker_thread_flushes_held_back_lines() -> None:
    """The ticker thread prints a held-back line when no message follows it. A fake clock says which
    lines are held back (two updates within RATE_LIMIT), so a slow moment of the machine cannot
    print the line early; only the ticker thread can print it once the clock passes the next tick."""
    clock = Clock()
    out = io.StringIO()
    printer = PlainPrinter(out, clock=clock)
    try:
        printer.update(vertex("a", "step a", 0.0))
        printer.update(log("a", b"held back\n", 0.01))
        assert out.getvalue() == "#1 step a\n"
        assert printer.next_tick() > clock.now
        clock.now = printer.next_tick()
        deadline = time.monotonic() + 30  # how long the thread may take to wake, not a measurement
        while "held back" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert out.getvalue() == "#1 step a\n#1 0.010 held back\n"
    finally:
        printer.close()


def test_plain_progress_rows_are_throttled() -> None:
    msgs = [vertex("a", "pull", 0.0)]
    times = [0.0]
    for i in range(1, 11):  # 1% steps every 0.2 s: printed again only at +5% or after 5 s
        msgs.append(status("a", "sha256:abc", 0.2 * i, 0.0, current=10_000 * i, total=1_000_000))
        times.append(0.2 * i)
    msgs.append(status("a", "sha256:abc", 2.2, 0.0, 2.2, current=1_000_000, total=1_000_000))
    times.append(2.2)
    msgs.append(vertex("a", "pull", 0.0, 2.3))
    times.append(2.3)
    text, _ = replay_plain(msgs, times)
    assert text == (
        "#1 pull\n"
        "#1 sha256:abc 10.00kB / 1.00MB 0.2s\n"
        "#1 sha256:abc 60.00kB / 1.00MB 1.2s\n"
        "#1 sha256:abc 1.00MB / 1.00MB 2.2s done\n"
        "#1 DONE 2.3s\n"
    )


def test_plain_canceled_and_groups() -> None:
    group = ("g1", "my group", False)
    msgs = [
        vertex("x", "x1", 0.0, group=group),
        vertex("x", "x1", 0.0, 0.5, group=group),
        vertex("y", "x2", 0.6, group=group),
        vertex("y", "x2", 0.6, 0.9, group=group),
        vertex("z", "slow", 1.0),
        vertex("z", "slow", 1.0, 1.2, error="rpc error: code = Canceled desc = context canceled"),
    ]
    text, printer = replay_plain(msgs, [0.0, 0.5, 0.6, 0.9, 1.0, 1.2])
    assert text == (
        "#1 my group\n#1 DONE 0.5s\n\n#1 my group\n#1 DONE 0.8s\n\n#2 slow\n#2 CANCELED\n"
    )
    assert printer.tracker.number("y") == 1
    assert failure_summary(printer.tracker).startswith("failed: #2 slow\n  rpc error")


def test_plain_undecodable_bytes_and_split_characters() -> None:
    char = "é".encode()
    msgs = [vertex("a", "s", 0.0), log("a", char[:1], 0.2), log("a", char[1:] + b"\n", 0.4)]
    text, printer = replay_plain(msgs, [0.0, 0.2, 0.4])
    assert "#1 0.200 é\n" in text  # the halves of a character meet again in the output
    assert printer.tracker.log_tail("a", 1) == ["é"]


def test_formatting_helpers() -> None:
    assert [format_bytes(n) for n in (0, 50, 999, 1000, 590_059, 1_982_840, 3 * 10**9)] == [
        "0B", "50B", "999B", "1.00kB", "590.06kB", "1.98MB", "3.00GB"
    ]
    assert log_prefix(166_900_000) == "0.167"
    assert log_prefix(10_004_000_000) == "10.00"
    assert log_prefix(123_460_000_000) == "123.5"
    assert log_prefix(-1_000_000) == "-0.001"


# -- tracker, constructed -----------------------------------------------------------------------


def test_tracker_vertex_updates_replace_but_announcements_do_not_reset() -> None:
    tracker = StatusTracker()
    tracker.update(vertex("a", "step", 1.0))
    tracker.update(vertex("a", "step", 1.0, 2.0, cached=True))
    tracker.update(vertex("a", "step"))  # announced again, without times
    (v,) = tracker
    assert v.started == at(1.0) and v.completed == at(2.0) and v.cached
    assert v.state == "cached" and v.duration_ns() == SEC


def test_tracker_keeps_the_last_lines_and_counts_all() -> None:
    tracker = StatusTracker(max_log_lines=100)
    tracker.update(vertex("a", "noisy", 0.0))
    data = "".join(f"line {i}\n" for i in range(250)).encode()
    for i in range(0, len(data), 7):  # arbitrary chunking, lines split across messages
        tracker.update(log("a", data[i : i + 7], 0.1))
    tracker.update(log("a", b"no newline yet", 0.2))
    tracker.update(log("a", b"err 1\nerr", 0.3, stream=2))
    v = tracker["a"]
    assert len(v.logs) == 100 and v.log_count == 251
    assert v.logs[0].text == "line 151"
    assert tracker.log_tail("a", 3) == ["err 1", "no newline yet", "err"]
    assert tracker.log_tail("missing", 3) == []


def test_tracker_statuses_are_keyed_by_vertex_and_id() -> None:
    tracker = StatusTracker()
    tracker.update(vertex("a", "a", 0.0))
    tracker.update(vertex("b", "b", 0.0))
    tracker.update(status("a", "resolve", 0.1, 0.0, current=1))
    tracker.update(status("b", "resolve", 0.1, 0.0, current=2))
    tracker.update(status("a", "resolve", 0.2, 0.0, 0.2, current=3))
    assert tracker["a"].statuses["resolve"].current == 3
    assert tracker["a"].statuses["resolve"].completed == at(0.2)
    assert tracker["b"].statuses["resolve"].current == 2
    tracker.update(warning("b", b"deprecated"))
    assert [w.short for w in tracker["b"].warnings] == ["deprecated"]
    assert len(tracker.warnings) == 1


def test_failure_summary_cuts_long_output_and_names() -> None:
    tracker = StatusTracker()
    long_name = "/bin/sh -c " + "x" * 300
    tracker.update(vertex("a", long_name, 0.0))
    tracker.update(log("a", "".join(f"out {i}\n" for i in range(30)).encode(), 0.5))
    tracker.update(log("a", b"\x1b[31mred\x1b[0m\rprogress 100%\n", 0.6))
    tracker.update(vertex("a", long_name, 0.0, 1.0, error="exit code: 2"))
    summary = failure_summary(tracker, tail=3)
    lines = summary.splitlines()
    assert lines[0] == "failed: #1 /bin/sh -c " + "x" * 106 + "..."
    assert lines[1:] == [
        "  exit code: 2",
        "  last 3 of 31 lines of output:",
        "  | out 28",
        "  | out 29",
        "  | progress 100%",
    ]
    assert failure_summary(StatusTracker()) == ""


# -- tty ----------------------------------------------------------------------------------------


def tty_printer(width: int = 100, height: int = 30) -> tuple[TtyPrinter, io.StringIO, Clock]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=width, height=height)
    clock = Clock(100.0)
    return TtyPrinter(console=console, clock=clock, live=False), out, clock


def feed(printer: TtyPrinter, clock: Clock, msgs: list[control_pb2.StatusResponse]) -> None:
    for msg, when in zip(msgs, arrivals(msgs), strict=True):
        clock.now = 100.0 + when
        printer.update(msg)


def plain_lines(printer: TtyPrinter, width: int = 100, height: int = 30) -> list[str]:
    return [line.plain for line in printer.render_lines(width, height)]


def test_tty_shows_running_steps_with_their_last_lines() -> None:
    printer, _, clock = tty_printer()
    msgs = load("parallel")
    feed(printer, clock, msgs[:11])  # both commands running, each with output
    lines = plain_lines(printer)
    assert re.fullmatch(r"\[\+\] Building \d+\.\ds \(1/4\)", lines[0])
    assert lines[1].startswith(" => local://context ") and lines[1].endswith("s")
    assert " => => transferring context: 1.98MB " in lines[2]
    running = [i for i, ln in enumerate(lines) if ln.startswith(" => /bin/sh -c")]
    assert len(running) == 2
    assert " => => # line 1" in lines and " => => # other" in lines
    assert all(len(line) <= 99 for line in lines)


def test_tty_final_summary_and_error_output() -> None:
    printer, out, clock = tty_printer()
    feed(printer, clock, load("fail"))
    printer.close()
    text = out.getvalue()
    assert "\x1b[31m" in text  # the failed step is red
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert re.search(r"^\[\+\] Building \d+\.\ds \(2/2\) FINISHED$", plain, re.M)
    assert re.search(r"^ => ERROR /bin/sh -c echo hi;.* \d\.\ds$", plain, re.M)
    assert plain.endswith(
        "------\n > /bin/sh -c echo hi; sleep 0.3; echo err >&2; sleep 0.3; printf 'partial';"
        " sleep 0.3; echo ' line'; exit 3:\n0.067 hi\n0.368 err\n0.670 partial line\n------\n"
    )


def test_tty_states_of_finished_steps() -> None:
    printer, _, clock = tty_printer()
    feed(printer, clock, load("files-cached"))
    lines = plain_lines(printer)
    assert any(line.startswith(" => CACHED write a ") for line in lines)
    assert any(line.startswith(" => mkdir /d ") for line in lines)
    printer, _, clock = tty_printer()
    feed(printer, clock, load("cancel"))
    lines = plain_lines(printer)
    assert any(line.startswith(" => CANCELED /bin/sh -c echo slow start") for line in lines)
    printer, _, clock = tty_printer()
    feed(printer, clock, load("dockerfile"))
    lines = plain_lines(printer)
    assert " => WARN: StageNameCasing: Stage name 'Build' should be lowercase (line 1)" in [
        line[: len(" => WARN: StageNameCasing: Stage name 'Build' should be lowercase (line 1)")]
        for line in lines
    ]


def test_tty_small_terminals() -> None:
    printer, _, clock = tty_printer()
    msgs = load("interleave")
    feed(printer, clock, msgs[:30])
    short = plain_lines(printer, 100, 8)
    assert len(short) <= 7
    # The running steps stay in view even when finished ones scroll away.
    assert sum(line.startswith(" => /bin/sh -c for i") for line in short) == 2
    assert not any(line.startswith(" => => #") for line in short)  # no room for output
    tall = plain_lines(printer, 100, 40)
    assert any(line.startswith(" => => # fast") for line in tall)
    narrow = plain_lines(printer, 30, 30)
    assert all(len(line) <= 29 for line in narrow)
    assert len(plain_lines(printer, 12, 30)) == 1  # no room for names: header only


def test_tty_live_leaves_a_static_summary() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, height=30)
    printer = TtyPrinter(console=console)
    for msg in load("files"):
        printer.update(msg)
    printer.close()
    printer.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    final = text[text.rindex("[+] Building") :]
    assert re.match(r"\[\+\] Building \d+\.\ds \(3/3\) FINISHED\n", final)
    assert " => write a " in final and " => => copying files 80B " in final


# -- make_printer -------------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_make_printer_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(make_printer("auto", io.StringIO()), PlainPrinter)
    assert isinstance(make_printer("rawjson", io.StringIO()), RawJSONPrinter)
    monkeypatch.setenv("TERM", "dumb")
    assert isinstance(make_printer("auto", FakeTerminal()), PlainPrinter)
    monkeypatch.setenv("TERM", "xterm")
    printer = make_printer("auto", FakeTerminal())
    assert isinstance(printer, TtyPrinter)
    printer.close()
    with pytest.raises(ValueError, match="needs a terminal"):
        make_printer("tty", io.StringIO())
    with pytest.raises(ValueError, match="unknown progress mode"):
        make_printer("fancy", io.StringIO())
    for printer in (make_printer("plain", io.StringIO()), make_printer("rawjson", io.StringIO())):
        printer.close()


# -- against a live daemon ----------------------------------------------------------------------


@pytest.mark.buildkit
def test_plain_matches_buildctl_on_a_live_build(tmp_path: Path, stack: dict[str, str]) -> None:
    """Builds a failing exec on the stack's daemon and compares, ignoring timing-dependent grouping."""
    import json

    import llbgen
    from tests.conftest import STACK_DIR

    addr = stack["BUILDKIT_HOST"]
    base = json.loads((STACK_DIR / "bases.json").read_text())["debian:trixie"]
    script = "echo hi; sleep 0.3; echo err >&2; printf 'partial'; sleep 0.3; echo ' line'; exit 3"
    state = llbgen.image(base, platform="linux/amd64").run(["/bin/sh", "-c", script], ignore_cache=True).root
    trace = tmp_path / "trace.json"
    proc = subprocess.run(
        ["buildctl", "--addr", addr, "build", "--progress", "plain", "--trace", str(trace)],
        input=llbgen.marshal(state, platform="linux/amd64").serialize(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    msgs = [rawjson.decode(line) for line in trace.read_text().splitlines()]
    text, _ = replay_plain(msgs, arrivals(msgs))

    def content(s: str) -> list[str]:
        return sorted(ln for ln in s.splitlines() if re.match(r"#\d+ (\d|DONE|ERROR|CACHED)", ln))

    theirs = proc.stderr.decode().split("\nerror: ")[0]
    assert content(text) == content(theirs)

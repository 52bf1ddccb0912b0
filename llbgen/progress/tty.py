"""``--progress tty``: a live view of the build, in the style of buildctl's and buildx's tty mode.

::

    [+] Building 3.4s (4/6)
     => local://context                                                     0.1s
     => => transferring context: 1.98MB                                     0.0s
     => /bin/sh -c make                                                     2.9s
     => => # cc -c main.c
     => => # cc -o app main.o
     => copy /app /usr/bin/app                                              0.0s

Finished steps are blue, failed ones red, canceled ones and warnings yellow; running steps with
output show their last lines (6, or ``BUILDKIT_TTY_LOG_LINES``) while the screen has room. When
the terminal is too short the view keeps the newest lines and the running steps; when it is too
narrow names are cut and, below 12 columns for a name, rows are left out. On close the whole list
is printed once more as a static summary, followed by the output of the failed steps.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TextIO

import attrs
from rich.cells import cell_len, set_cell_size
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.style import Style
from rich.text import Text

from llbgen.pb import control_pb2
from llbgen.progress.plain import format_bytes, log_prefix
from llbgen.progress.tracker import (
    Interval,
    StatusTracker,
    Step,
    intervals_ns,
    merge_intervals,
)

TERM_HEIGHT_MIN = 6
STYLE_DONE = Style(color="blue")
STYLE_ERROR = Style(color="red")
STYLE_CANCELED = Style(color="yellow")
STYLE_LOG = Style(dim=True)


def _log_lines_setting() -> int:
    try:
        value = int(os.environ.get("BUILDKIT_TTY_LOG_LINES", ""))
    except ValueError:
        return TERM_HEIGHT_MIN
    return value if value > 0 else TERM_HEIGHT_MIN


@attrs.define(eq=False)
class _Job:
    name: str
    intervals: list[Interval]
    completed: bool
    status: str = ""
    style: Style | None = None
    step: Step | None = None
    show_logs: bool = False


def _jobs(tracker: StatusTracker) -> list[_Job]:
    jobs: list[_Job] = []
    for step in tracker.steps():
        name = step.name.replace("\t", " ")
        style = STYLE_DONE
        if step.error:
            if step.canceled:
                name = "CANCELED " + name
                style = STYLE_CANCELED
            else:
                name = "ERROR " + name
                style = STYLE_ERROR
        if step.cached:
            name = "CACHED " + name
        spans = step.spans
        completed = all(stop is not None for _, stop in spans)
        jobs.append(_Job(name, merge_intervals(spans), completed, style=style, step=step))
        for row in step.statuses:
            if row.started is None:
                continue
            status = ""
            if row.total:
                status = f"{format_bytes(row.current)} / {format_bytes(row.total)}"
            elif row.current:
                status = format_bytes(row.current)
            jobs.append(
                _Job(
                    "=> " + row.id,
                    [(row.started, row.completed)],
                    row.completed is not None,
                    status=status,
                    style=STYLE_DONE,
                )
            )
        ivals = step.intervals
        for warning in step.warnings:
            jobs.append(
                _Job(
                    "WARN: " + warning.short,
                    ivals[-1:],
                    True,
                    style=STYLE_CANCELED,
                )
            )
    return jobs


def _wrap_height(jobs: list[_Job], limit: int) -> list[_Job]:
    """The last ``limit`` rows, with running rows that would scroll away moved into view."""
    if limit < 0:
        return []
    if len(jobs) <= limit:
        return list(jobs)
    cut = len(jobs) - limit
    wrapped = jobs[cut:]
    invisible = [j for j in jobs[:cut] if not j.completed]
    if not invisible:
        return wrapped
    budget = len(invisible)
    kept: list[_Job] = []
    for job in wrapped:
        if not job.completed or budget <= 0:
            kept.append(job)
        budget -= 1
    free = len(wrapped) - len(kept)
    return invisible[len(invisible) - free :] + kept


def _clean(line: str) -> Text:
    """A log line as the terminal would leave it: after the last carriage return, ANSI applied."""
    line = line.rstrip("\r")
    if "\r" in line:
        line = line.rsplit("\r", 1)[1]
    return Text.from_ansi(line.expandtabs(8), no_wrap=True, end="")


class _View:
    """The renderable that Live draws; it reads the printer's state under the printer's lock."""

    def __init__(self, printer: TtyPrinter) -> None:
        self.printer = printer

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        with self.printer._lock:
            lines = self.printer.render_lines(options.max_width, options.height or console.height)
        for line in lines:
            yield line


class TtyPrinter:
    """A live progress view drawn with ``rich.live.Live``.

    ``update`` is cheap and thread-safe; Live redraws from its own thread 10 times a second.
    ``close`` stops the live view and leaves the full list of steps on screen.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        console: Console | None = None,
        tracker: StatusTracker | None = None,
        error_logs: bool = True,
        phase: str = "Building",
        clock: Callable[[], float] = time.monotonic,
        live: bool = True,
    ) -> None:
        if console is None:
            console = Console(file=stream, highlight=False)
        self.console = console
        self.tracker = tracker if tracker is not None else StatusTracker()
        self.error_logs = error_logs
        self.phase = phase
        self.clock = clock
        self.log_lines = _log_lines_setting()
        self._lock = threading.RLock()
        self._start = clock()
        self._end: float | None = None
        self._offset_ns: int | None = None  # local clock minus the daemon's, in ns
        self._shown: dict[str, int] = {}  # step key -> times its output was shown
        self._closed = False
        self._live: Live | None = None
        if live:
            self._live = Live(
                _View(self),
                console=console,
                refresh_per_second=10,
                transient=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start(refresh=True)

    def update(self, status: control_pb2.StatusResponse) -> None:
        with self._lock:
            if self._closed:
                return
            self.tracker.update(status)
            if self._offset_ns is None and self.tracker.first_started is not None:
                self._offset_ns = int(self.clock() * 1e9) - self.tracker.first_started

    def _daemon_now(self) -> int | None:
        if self._offset_ns is None:
            return None
        now = self._end if self._end is not None else self.clock()
        return int(now * 1e9) - self._offset_ns

    def _log_priority(self, job: _Job) -> int:
        """Steps with more output, and steps whose output was already shown, keep the space."""
        if job.step is None:
            return 0
        return job.step.log_bytes + self._shown.get(job.step.key, 0) * 50

    def render_lines(self, width: int, height: int, final: bool | None = None) -> list[Text]:
        """The view as lines of text for a screen of ``width`` x ``height`` cells."""
        if final is None:
            final = self._end is not None
        now_ns = self._daemon_now()
        end = self._end if self._end is not None else self.clock()
        done, total = self.tracker.counts()
        header = f"[+] {self.phase} {end - self._start:.1f}s ({done}/{total})"
        if final and total and done == total:
            header += " FINISHED"
        lines = [Text(set_cell_size(header, max(0, width - 1)).rstrip(), no_wrap=True, end="")]

        jobs = _jobs(self.tracker)
        term_height = max(TERM_HEIGHT_MIN, min(self.log_lines, height - TERM_HEIGHT_MIN - 1))
        running = [j for j in jobs if not j.completed]
        candidates = [j for j in running if j.step is not None and j.step.log_bytes > 0]
        candidates.sort(key=self._log_priority, reverse=True)
        free = height - 2 - len(running)
        reserved = 0
        for job in candidates:
            if free <= term_height + 3:
                break
            job.show_logs = True
            assert job.step is not None
            reserved += len(job.step.tail(term_height))
            free -= term_height + 3
        if not final:
            jobs = _wrap_height(jobs, height - 2 - reserved)

        for job in jobs:
            if not job.intervals:
                continue
            seconds = intervals_ns(job.intervals, now_ns) / 1e9
            if seconds < 0.05:
                seconds = 0.0
            timer = f" {seconds:3.1f}s"
            prefix = " => "
            left = width - 1 - len(prefix) - len(timer) - 1
            status = job.status
            show_status = bool(status) and left + len(status) > 20
            if show_status:
                left -= len(status) + 1
            if left < 12:
                continue
            name = job.name.replace("\n", " ")
            if cell_len(name) > left:
                name = set_cell_size(name, left)
            body = prefix + name + (" " + status if show_status else "")
            body = set_cell_size(body, max(0, width - 1 - len(timer) - 1))
            line = Text(body + " " + timer, no_wrap=True, end="")
            if job.completed and job.style is not None:
                line.stylize(job.style)
            lines.append(line)
            if job.show_logs and job.step is not None:
                self._shown[job.step.key] = self._shown.get(job.step.key, 0) + 1
                for log in job.step.tail(term_height):
                    text = Text(" => => # ", no_wrap=True, end="")
                    text.append_text(_clean(log))
                    text.truncate(max(0, width - 1), overflow="crop")
                    text.stylize(STYLE_LOG)
                    lines.append(text)
        joined: list[Text] = []
        for i, line in enumerate(lines):
            line.end = "\n" if i < len(lines) - 1 else ""
            joined.append(line)
        return joined

    def close(self) -> None:
        """Stops the live view, leaving the final list of steps; then prints failed steps' logs."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._end = self.clock()
        if self._live is not None:
            self._live.stop()
        else:
            self.console.print(_View(self))
            self.console.line()
        if self.error_logs:
            self.console.out(self.error_log_text(), highlight=False, end="")
        self.console.file.flush()

    def error_log_text(self) -> str:
        """The output kept for each failed step, between ``------`` rules like buildctl's."""
        out: list[str] = []
        for vtx in self.tracker.failed():
            if vtx.canceled:
                continue
            out.append("------")
            out.append(f" > {vtx.name}:")
            for line in [*vtx.logs, *vtx.partial_log_lines()]:
                out.append(f"{log_prefix(line.offset)} {line.text}")
            out.append("------")
        return "".join(line + "\n" for line in out)

"""Build progress: the daemon's status stream shown as buildctl shows it.

Every printer takes the ``StatusResponse`` messages of ``Control.Status`` one at a time::

    printer = make_printer("auto", sys.stderr)
    try:
        for response in control.Status(StatusRequest(Ref=ref)):
            printer.update(response)
    finally:
        printer.close()
    if failed:
        sys.stderr.write(failure_summary(printer.tracker, locations))

Modes: ``plain`` (buildctl's ``--progress plain`` lines), ``tty`` (a live view drawn with rich),
``rawjson`` (one JSON object per message) and ``auto`` (tty on a terminal unless TERM=dumb,
else plain). Printers only print what the daemon sends.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from llbgen.llb.errors import UsageError
from llbgen.pb import control_pb2
from llbgen.progress.plain import PlainPrinter
from llbgen.progress.rawjson import RawJSONPrinter
from llbgen.progress.summary import failure_summary
from llbgen.progress.tracker import (
    LogLine,
    StatusInfo,
    StatusTracker,
    Step,
    VertexInfo,
    WarningInfo,
)

if TYPE_CHECKING:
    from rich.console import Console

    from llbgen.progress.tty import TtyPrinter

MODES = ("auto", "tty", "plain", "rawjson")

__all__ = [
    "MODES",
    "LogLine",
    "PlainPrinter",
    "Printer",
    "RawJSONPrinter",
    "StatusInfo",
    "StatusTracker",
    "Step",
    "TtyPrinter",
    "VertexInfo",
    "WarningInfo",
    "failure_summary",
    "is_terminal",
    "make_printer",
]


class Printer(Protocol):
    """What every progress mode offers. ``tracker`` holds the state for ``failure_summary``."""

    tracker: StatusTracker

    def update(self, status: control_pb2.StatusResponse) -> None: ...

    def close(self) -> None: ...


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal that can take a live display."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return bool(tty) and os.environ.get("TERM", "") != "dumb"


def open_printer(progress: str, stream: TextIO) -> Printer:
    """The printer of a build's ``--progress``, without the logs of failed steps (the build's failure
    summary shows them); an unknown or impossible mode is a usage error."""
    try:
        return make_printer(progress, stream, error_logs=False)
    except ValueError as exc:
        raise UsageError(f"--progress {progress}: {exc}") from None


def make_printer(
    mode: str,
    stream: TextIO,
    *,
    tracker: StatusTracker | None = None,
    error_logs: bool = True,
    console: Console | None = None,
) -> Printer:
    """A printer for ``mode`` writing to ``stream``.

    ``error_logs``: whether plain and tty repeat the output of failed steps on close, as buildctl
    does (turn it off when ``failure_summary`` is printed instead). ``console``: a rich console
    for the tty view (by default one on ``stream``). ``tty`` on a stream that is not a terminal
    is an error unless a console is given, as in buildctl.
    """
    if mode == "auto":
        mode = "tty" if console is not None or is_terminal(stream) else "plain"
    if mode == "plain":
        return PlainPrinter(stream, tracker=tracker, error_logs=error_logs)
    if mode == "tty":
        if console is None and not is_terminal(stream):
            raise ValueError("progress mode tty needs a terminal; use plain or rawjson")
        from llbgen.progress.tty import TtyPrinter  # rich costs a fifth of llbgen's start-up

        return TtyPrinter(stream, console=console, tracker=tracker, error_logs=error_logs)
    if mode == "rawjson":
        return RawJSONPrinter(stream, tracker=tracker)
    raise ValueError(f"unknown progress mode {mode!r}: use one of {', '.join(MODES)}")


def __getattr__(name: str) -> Any:
    if name == "TtyPrinter":
        from llbgen.progress.tty import TtyPrinter

        return TtyPrinter
    raise AttributeError(name)

"""A short account of why a build failed, for the end of ``llbgen build``'s output."""

from __future__ import annotations

import re
from collections.abc import Mapping

from llbgen.progress.tracker import StatusTracker, VertexInfo

NAME_WIDTH = 120
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")


def _clean(line: str) -> str:
    """A log line as a terminal would leave it: colours dropped, the text after the last ``\\r``."""
    line = _ANSI.sub("", line).rstrip("\r")
    return line.rsplit("\r", 1)[-1].rstrip()


def _one_line(text: str, width: int = NAME_WIDTH) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= width else text[: width - 3] + "..."


def _describe(tracker: StatusTracker, vtx: VertexInfo) -> str:
    number = tracker.number(vtx.digest)
    name = _one_line(vtx.name) or vtx.digest
    return f"#{number} {name}" if number is not None else name


def failure_summary(
    tracker: StatusTracker,
    locations: Mapping[str, str] | None = None,
    tail: int = 20,
) -> str:
    """What failed, where it was defined, the daemon's error and the end of the step's output.

    ``locations`` maps vertex digests to ``file:line`` of the definition that made the op.
    Steps canceled because another one failed are left out when a real failure is known.
    Returns "" when no step failed. Example::

        failed: #2 /bin/sh -c make test
          at images/app/image.py:14
          process "/bin/sh -c make test" did not complete successfully: exit code: 2
          last 2 of 57 lines of output:
          | FAIL test_parse (tests/test_parse.c:31)
          | make: *** [Makefile:12: test] Error 2
    """
    failed = tracker.failed()
    real = [v for v in failed if not v.canceled]
    shown = real or failed
    blocks: list[str] = []
    for vtx in shown:
        lines = [f"failed: {_describe(tracker, vtx)}"]
        location = (locations or {}).get(vtx.digest)
        if location:
            lines.append(f"  at {location}")
        lines.extend("  " + line for line in vtx.error.splitlines() or [""])
        output = vtx.tail(tail)
        if output:
            total = vtx.log_count + len(vtx.partial_lines())
            if total > len(output):
                lines.append(f"  last {len(output)} of {total} lines of output:")
            else:
                lines.append(f"  output ({len(output)} line{'s' if len(output) != 1 else ''}):")
            lines.extend(f"  | {_clean(line)}".rstrip() for line in output)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + ("\n" if blocks else "")

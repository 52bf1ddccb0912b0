"""The text report of ``llbgen test``: one line per check and platform, details for failures."""

from __future__ import annotations

import shlex
import stat
from collections.abc import Sequence

from llbgen.structure.evaluate import CommandOutcome, ContentOutcome, FileOutcome
from llbgen.structure.runner import CheckResult
from llbgen.structure.spec import CommandTest, MetadataTest

#: Lines of output shown per stream of a failed check (the last ones: errors come last).
SHOWN_LINES = 40


def _quoted(text: str, indent: str) -> list[str]:
    lines = text.rstrip("\n").splitlines()
    skipped = len(lines) - SHOWN_LINES
    if skipped > 0:
        lines = lines[-SHOWN_LINES:]
    out = [f"{indent}| ({skipped} earlier lines not shown)"] if skipped > 0 else []
    return out + [f"{indent}| {line}" for line in lines]


def _details(result: CheckResult) -> list[str]:
    pad = " " * 6
    lines: list[str] = []
    check, outcome = result.check, result.outcome
    if isinstance(check, CommandTest):
        if check.image_mount is not None:
            where = f"in the helper, image at {check.image_mount}"
        else:
            where = "on the Debian base under the image" if check.on_base else "in the image"
        lines.append(f"{pad}command ({where}): {shlex.join(check.command)}")
        for step in check.setup:
            lines.append(f"{pad}setup: {shlex.join(step)}")
    elif not isinstance(check, MetadataTest):
        lines.append(f"{pad}path: {check.path}")
    lines += [f"{pad}- {problem}" for problem in result.problems]
    if isinstance(outcome, CommandOutcome):
        if outcome.setup_failure is None:
            lines.append(f"{pad}exit code: {outcome.exit_code}")
        for label, text in (("stdout", outcome.stdout), ("stderr", outcome.stderr)):
            if text.strip():
                lines.append(f"{pad}{label}:")
                lines += _quoted(text, pad + "  ")
            else:
                lines.append(f"{pad}{label}: (empty)")
    elif isinstance(outcome, ContentOutcome) and outcome.exists:
        lines.append(f"{pad}contents:" if outcome.content.strip() else f"{pad}contents: (empty)")
        lines += _quoted(outcome.content, pad + "  ")
    elif isinstance(outcome, FileOutcome) and outcome.exists:
        lines.append(
            f"{pad}found: {stat.filemode(outcome.mode)} (0{stat.S_IMODE(outcome.mode):o}) "
            f"uid {outcome.uid} gid {outcome.gid}"
        )
    return lines


def format_report(image: str, results: Sequence[CheckResult], *, verbose: bool = False) -> str:
    lines = []
    width = max((len(str(r.platform)) for r in results), default=0)
    for result in results:
        status = "PASS" if result.passed else "FAIL"
        lines.append(f"{status}  {str(result.platform):<{width}}  {result.check.kind:<7}  {result.check.name}")
        if not result.passed or verbose:
            lines += _details(result)
    failed = sum(not r.passed for r in results)
    checks = len({r.check.name for r in results})
    platforms = len({r.platform for r in results})
    lines.append(
        f"{image}: {len(results) - failed} passed, {failed} failed "
        f"({checks} check{'s' * (checks != 1)} on {platforms} platform{'s' * (platforms != 1)})"
    )
    return "\n".join(lines) + "\n"

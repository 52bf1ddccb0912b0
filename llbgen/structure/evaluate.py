"""Judging what a check observed against what its spec expects: pure functions, no BuildKit.

Each check's step leaves files in a result directory (see ``compile``); ``read_outcome`` turns
them into an outcome value and ``evaluate`` lists the problems (none: the check passed).
"""

from __future__ import annotations

import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import attrs

from llbgen.structure.spec import (
    EXECUTABLE_BY,
    Check,
    CommandTest,
    Expected,
    FileContentTest,
    FileExistenceTest,
    MetadataTest,
)

#: How much of a file a content test reads; one byte more is read to tell that it was cut.
CONTENT_LIMIT = 8 * 1024 * 1024
#: ``timeout``'s exit code when the command ran out of time.
TIMEOUT_EXIT = 124


@attrs.frozen
class CommandOutcome:
    exit_code: int
    stdout: str = ""
    stderr: str = ""
    #: Set when a setup step (or writing ``files``) failed; the command did not run.
    setup_failure: str | None = None
    setup_log: str = ""


@attrs.frozen
class FileOutcome:
    exists: bool
    mode: int = 0
    uid: int = 0
    gid: int = 0
    #: What ``stat`` said when the path could not be looked up.
    error: str = ""


@attrs.frozen
class ContentOutcome:
    exists: bool
    content: str = ""
    truncated: bool = False
    error: str = ""


@attrs.frozen
class MetadataOutcome:
    """The image config (the ``config`` object of the OCI image config) the definition declares."""

    config: Mapping[str, Any]


@attrs.frozen
class NoResult:
    """The check's step left no result (the harness itself failed)."""

    reason: str


Outcome = Union[CommandOutcome, FileOutcome, ContentOutcome, MetadataOutcome, NoResult]


def _search(pattern: str, text: str, multiline: bool = True) -> re.Match[str] | None:
    return re.search(pattern, text, re.MULTILINE if multiline else 0)


def _line_of(match: re.Match[str]) -> str:
    text = match.string
    start = text.rfind("\n", 0, match.start()) + 1
    end = text.find("\n", match.end())
    line = text[start : end if end >= 0 else len(text)]
    return line if len(line) <= 200 else line[:200] + "..."


def check_text(
    what: str, text: str, expected: Sequence[str], excluded: Sequence[str], multiline: bool = True
) -> list[str]:
    """Problems of ``text`` (``what``: "stdout", "contents"...) against the regular expressions."""
    problems = []
    for pattern in expected:
        if _search(pattern, text, multiline) is None:
            problems.append(f"{what}: expected /{pattern}/ not found")
    for pattern in excluded:
        match = _search(pattern, text, multiline)
        if match is not None:
            problems.append(f"{what}: excluded /{pattern}/ found in line {_line_of(match)!r}")
    return problems


def format_mode(mode: int) -> str:
    return f"0{stat.S_IMODE(mode):o}".rjust(4, "0")


def go_filemode(mode: int) -> str:
    """``mode`` (a ``st_mode``) as Go's ``os.FileMode.String()`` prints the mode of a tar entry."""
    letters = ""
    if stat.S_ISDIR(mode):
        letters += "d"
    if stat.S_ISLNK(mode):
        letters += "L"
    if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
        letters += "D"
    if stat.S_ISFIFO(mode):
        letters += "p"
    if stat.S_ISSOCK(mode):
        letters += "S"
    if mode & stat.S_ISUID:
        letters += "u"
    if mode & stat.S_ISGID:
        letters += "g"
    if stat.S_ISCHR(mode):
        letters += "c"
    if mode & stat.S_ISVTX:
        letters += "t"
    rwx = "".join(c if mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))
    return (letters or "-") + rwx


def evaluate(check: Check, outcome: Outcome) -> list[str]:
    """What is wrong with ``outcome`` for ``check``; an empty list means the check passed."""
    if isinstance(outcome, NoResult):
        return [outcome.reason]
    if isinstance(check, CommandTest) and isinstance(outcome, CommandOutcome):
        return _evaluate_command(check, outcome)
    if isinstance(check, FileExistenceTest) and isinstance(outcome, FileOutcome):
        return _evaluate_file(check, outcome)
    if isinstance(check, FileContentTest) and isinstance(outcome, ContentOutcome):
        return _evaluate_content(check, outcome)
    if isinstance(check, MetadataTest) and isinstance(outcome, MetadataOutcome):
        return evaluate_metadata(check, outcome.config)
    raise TypeError(f"cannot evaluate a {type(outcome).__name__} for a {type(check).__name__}")


def _evaluate_command(check: CommandTest, outcome: CommandOutcome) -> list[str]:
    if outcome.setup_failure is not None:
        return [outcome.setup_failure]
    problems = []
    if check.timeout is not None and outcome.exit_code == TIMEOUT_EXIT and check.exit_code != TIMEOUT_EXIT:
        problems.append(f"timed out after {check.timeout:g} s (exit code {TIMEOUT_EXIT})")
    elif check.exit_code is not None and outcome.exit_code != check.exit_code:
        problems.append(f"exit code is {outcome.exit_code}, expected {check.exit_code}")
    multiline = check.multiline
    problems += check_text("stdout", outcome.stdout, check.expected_output, check.excluded_output, multiline)
    problems += check_text("stderr", outcome.stderr, check.expected_error, check.excluded_error, multiline)
    return problems


def _evaluate_file(check: FileExistenceTest, outcome: FileOutcome) -> list[str]:
    if not outcome.exists:
        if check.should_exist:
            return [f"{check.path} does not exist" + (f" ({outcome.error})" if outcome.error else "")]
        return []
    if not check.should_exist:
        return [f"{check.path} exists ({stat.filemode(outcome.mode)}), expected it not to"]
    problems = []
    if isinstance(check.permissions, str):
        actual = stat.filemode(outcome.mode)
        if actual != check.permissions:
            problems.append(f"permissions are {actual}, expected {check.permissions}")
    elif check.permissions is not None and stat.S_IMODE(outcome.mode) != check.permissions:
        problems.append(
            f"mode is {format_mode(outcome.mode)} ({stat.filemode(outcome.mode)}), "
            f"expected {format_mode(check.permissions)}"
        )
    if check.go_permissions is not None and go_filemode(outcome.mode) != check.go_permissions:
        problems.append(f"permissions are {go_filemode(outcome.mode)}, expected {check.go_permissions}")
    if check.executable_by is not None and not outcome.mode & EXECUTABLE_BY[check.executable_by]:
        problems.append(
            f"not executable by {check.executable_by} ({go_filemode(outcome.mode)})"
        )
    if check.uid is not None and outcome.uid != check.uid:
        problems.append(f"uid is {outcome.uid}, expected {check.uid}")
    if check.gid is not None and outcome.gid != check.gid:
        problems.append(f"gid is {outcome.gid}, expected {check.gid}")
    return problems


def _evaluate_content(check: FileContentTest, outcome: ContentOutcome) -> list[str]:
    if not outcome.exists:
        return [f"cannot read {check.path}" + (f": {outcome.error}" if outcome.error else "")]
    what = "contents" + (f" (first {CONTENT_LIMIT // 1024 // 1024} MiB)" if outcome.truncated else "")
    return check_text(what, outcome.content, check.expected_contents, check.excluded_contents, check.multiline)


def _env_map(entries: Sequence[str] | None) -> dict[str, str]:
    """The config's ``Env`` list (``KEY=VALUE`` strings) as a mapping."""
    env = {}
    for entry in entries or ():
        key, _, value = entry.partition("=")
        env[key] = value
    return env


def _check_expected(what: str, actual: Mapping[str, str], expected: Sequence[Expected]) -> list[str]:
    problems = []
    for item in expected:
        if item.key not in actual:
            problems.append(f"{what} {item.key} is not set")
            continue
        value = actual[item.key]
        matches = _search(item.value, value, False) is not None if item.is_regex else value == item.value
        if not matches:
            how = f"/{item.value}/" if item.is_regex else repr(item.value)
            problems.append(f"{what} {item.key} is {value!r}, expected {how}")
    return problems


def evaluate_metadata(check: MetadataTest, config: Mapping[str, Any]) -> list[str]:
    """Problems of an image config (OCI ``config`` object) against a metadata test."""
    env = _env_map(config.get("Env"))
    labels = {str(k): str(v) for k, v in (config.get("Labels") or {}).items()}
    ports = list(config.get("ExposedPorts") or {})
    volumes = list(config.get("Volumes") or {})
    problems = _check_expected("env", env, check.env)
    problems += [f"env {key} is set, expected it not to be" for key in check.unbound_env if key in env]
    problems += _check_expected("label", labels, check.labels)
    for what, expected in (("entrypoint", check.entrypoint), ("cmd", check.cmd)):
        actual = list(config.get(what.capitalize()) or [])
        if expected is not None and actual != list(expected):
            problems.append(f"{what} is {actual}, expected {list(expected)}")
    for what, key, wanted in (("workdir", "WorkingDir", check.workdir), ("user", "User", check.user)):
        value = str(config.get(key) or "")
        if wanted and value != wanted:
            problems.append(f"{what} is {value!r}, expected {wanted!r}")
    problems += [f"port {p} is not exposed" for p in check.exposed_ports if p not in ports]
    problems += [f"port {p} is exposed, expected it not to be" for p in check.unexposed_ports if p in ports]
    problems += [f"volume {v} is not declared" for v in check.volumes if v not in volumes]
    problems += [f"volume {v} is declared, expected it not to be" for v in check.unmounted_volumes if v in volumes]
    return problems


# -- reading a check's result directory ----------------------------------------------------------


def _text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _code(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def read_outcome(check: Check, directory: Path) -> Outcome:
    """The outcome recorded in ``directory`` by the step that ``compile`` made for ``check``."""
    if isinstance(check, MetadataTest):
        return NoResult("a metadata test has no step: it is judged from the image config")
    code = _code(directory / "code")
    if isinstance(check, CommandTest):
        failed = _text(directory / "setup-failed").split()
        if len(failed) == 2:
            step, status = int(failed[0]), int(failed[1])
            if step == 0:
                what = "writing files= into the container"
            else:
                what = f"setup step {step} ({' '.join(check.setup[step - 1])})"
            log = _text(directory / "setup.log")
            return CommandOutcome(
                status, setup_failure=f"{what} exited with {status}", setup_log=log, stderr=log
            )
        if code is None:
            return NoResult(f"no exit code recorded in {directory}: the check's step did not finish")
        return CommandOutcome(code, _text(directory / "stdout"), _text(directory / "stderr"),
                              setup_log=_text(directory / "setup.log"))
    if code is None:
        return NoResult(f"no exit code recorded in {directory}: the check's step did not finish")
    error = _text(directory / "stderr").strip()
    if isinstance(check, FileExistenceTest):
        if code != 0:
            return FileOutcome(False, error=error)
        fields = _text(directory / "stat").split()
        try:
            mode, uid, gid = int(fields[0], 16), int(fields[1]), int(fields[2])
        except (IndexError, ValueError):
            return NoResult(f"unexpected stat output for {check.path}: {_text(directory / 'stat')!r}")
        return FileOutcome(True, mode, uid, gid)
    if code != 0:
        return ContentOutcome(False, error=error)
    raw = (directory / "content").read_bytes() if (directory / "content").exists() else b""
    truncated = len(raw) > CONTENT_LIMIT
    content = raw[:CONTENT_LIMIT].decode("utf-8", errors="replace")
    return ContentOutcome(True, content, truncated)

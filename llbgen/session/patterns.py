"""``.dockerignore``-style path patterns, with the semantics BuildKit's Go client applies.

BuildKit sends local files through the client, and the client does the filtering: include and
exclude patterns arrive as request metadata and must select exactly the files the Go client
(``github.com/moby/patternmatcher`` inside ``tonistiigi/fsutil``) would select, or cache keys and
build results differ between llbgen and ``buildctl``.

Semantics, in short:

- A pattern is cleaned like Go's ``filepath.Clean``; ``!`` in front makes it an *exclusion*
  (a re-include in an exclude list). :func:`normalize_pattern` additionally drops a leading ``/``
  as BuildKit's ``.dockerignore`` reader does, since matching is always relative to the context.
- ``*`` matches any run of characters except ``/``, ``?`` one character except ``/``, ``[...]`` a
  character class (``[^...]`` negated), ``\\`` escapes the next character, and ``**`` matches any
  number of path components (``**/x`` also matches ``x``; a trailing ``**`` matches everything
  below a prefix).
- A path matches when it, or one of its parent directories, matches the last pattern that decides
  it: later patterns override earlier ones, so ``["docs", "!docs/keep.md"]`` excludes ``docs`` but
  keeps ``docs/keep.md``.

Known differences from Go, for exotic patterns only: POSIX classes such as ``[[:alpha:]]`` and a
backslash before a letter (``\\d``) are regular-expression syntax in Go's implementation; here a
backslash always makes the next character literal and POSIX classes are not supported.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence

__all__ = [
    "BadPattern",
    "MatchInfo",
    "Pattern",
    "PatternMatcher",
    "glob_match",
    "go_clean",
    "normalize_pattern",
]

# Characters that are regular-expression syntax but have no meaning in a path pattern; they are
# matched literally.
_REGEX_LITERALS = frozenset(".+()|{}$")

# A tuple of per-pattern "did this pattern match the parent directory" flags; None when unknown.
MatchInfo = tuple[bool, ...] | None


class BadPattern(ValueError):
    """A malformed pattern (unclosed ``[``, trailing ``\\``, a lone ``!``...)."""


def go_clean(path: str) -> str:
    """Go's ``path.Clean``: the shortest equivalent slash-separated path, ``.`` when empty."""
    if path == "":
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def normalize_pattern(pattern: str) -> str:
    """Cleans one pattern the way BuildKit's ``.dockerignore`` reader does.

    Surrounding whitespace goes, ``!`` is kept in front, the rest is cleaned, and a leading ``/``
    is dropped (patterns are relative to the context root). Empty patterns become ``""``.
    """
    pattern = pattern.strip()
    if not pattern:
        return ""
    invert = pattern.startswith("!")
    if invert:
        pattern = pattern[1:].strip()
    if pattern:
        pattern = go_clean(pattern)
        if len(pattern) > 1 and pattern.startswith("/"):
            pattern = pattern[1:]
    return "!" + pattern if invert else pattern


# -- Go's filepath.Match -------------------------------------------------------------------------


def _scan_chunk(pattern: str) -> tuple[bool, str, str]:
    star = False
    while pattern.startswith("*"):
        pattern = pattern[1:]
        star = True
    in_range = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 < len(pattern):
                i += 1
        elif c == "[":
            in_range = True
        elif c == "]":
            in_range = False
        elif c == "*" and not in_range:
            break
        i += 1
    return star, pattern[:i], pattern[i:]


def _class_char(chunk: str) -> tuple[str, str]:
    """One (possibly escaped) character of a ``[...]`` class and the rest of the chunk."""
    if not chunk or chunk[0] in "-]":
        raise BadPattern("syntax error in pattern")
    if chunk[0] == "\\":
        chunk = chunk[1:]
        if not chunk:
            raise BadPattern("syntax error in pattern")
    char, chunk = chunk[0], chunk[1:]
    if not chunk:
        raise BadPattern("syntax error in pattern")
    return char, chunk


def _match_chunk(chunk: str, s: str) -> tuple[str, bool]:
    """Matches ``chunk`` (no ``*``) at the start of ``s``; always checks the whole chunk's syntax."""
    failed = False
    while chunk:
        if not failed and not s:
            failed = True
        c = chunk[0]
        if c == "[":
            r = ""
            if not failed:
                r, s = s[0], s[1:]
            chunk = chunk[1:]
            negated = False
            if chunk.startswith("^"):
                negated = True
                chunk = chunk[1:]
            matched = False
            count = 0
            while True:
                if chunk.startswith("]") and count > 0:
                    chunk = chunk[1:]
                    break
                lo, chunk = _class_char(chunk)
                hi = lo
                if chunk[0] == "-":
                    hi, chunk = _class_char(chunk[1:])
                if not failed and lo <= r <= hi:
                    matched = True
                count += 1
            if matched == negated:
                failed = True
            continue
        if c == "?":
            if not failed:
                if s[0] == "/":
                    failed = True
                s = s[1:]
            chunk = chunk[1:]
            continue
        if c == "\\":
            chunk = chunk[1:]
            if not chunk:
                raise BadPattern("syntax error in pattern")
        if not failed:
            if chunk[0] != s[0]:
                failed = True
            s = s[1:]
        chunk = chunk[1:]
    if failed:
        return "", False
    return s, True


def glob_match(pattern: str, name: str) -> bool:
    """Go's ``filepath.Match`` on ``/``-separated names; raises :class:`BadPattern` if malformed."""
    while pattern:
        star, chunk, pattern = _scan_chunk(pattern)
        if star and chunk == "":
            return "/" not in name
        rest, ok = _match_chunk(chunk, name)
        if ok and (rest == "" or pattern):
            name = rest
            continue
        if star:
            found = False
            i = 0
            while i < len(name) and name[i] != "/":
                rest, ok = _match_chunk(chunk, name[i + 1 :])
                if ok:
                    if not pattern and rest:
                        i += 1
                        continue
                    name = rest
                    found = True
                    break
                i += 1
            if found:
                continue
        return False
    return name == ""


# -- moby/patternmatcher ------------------------------------------------------------------------


class Pattern:
    """One cleaned pattern, compiled to the cheapest test that decides it."""

    __slots__ = ("_error", "_kind", "_regex", "dirs", "exclusion", "text")

    def __init__(self, text: str, exclusion: bool) -> None:
        self.text = text  # cleaned, without the "!"
        self.exclusion = exclusion
        self.dirs = text.split("/")
        self._error: str | None = None
        try:
            self._kind, self._regex = _compile(text)
        except BadPattern as exc:
            # Go reports this when the pattern is first used, not when it is parsed.
            self._kind, self._regex, self._error = "regex", None, str(exc)

    def __repr__(self) -> str:
        return f"Pattern({'!' if self.exclusion else ''}{self.text})"

    def match(self, path: str) -> bool:
        kind = self._kind
        if kind == "exact":
            return path == self.text
        if kind == "prefix":
            return path.startswith(self.text[:-2])
        if kind == "suffix":
            suffix = self.text[2:]
            if path.endswith(suffix):
                return True
            return suffix.startswith("/") and path == suffix[1:]
        if self._regex is None:
            raise BadPattern(self._error or f"syntax error in pattern {self.text!r}")
        return self._regex.fullmatch(path) is not None


def _compile(text: str) -> tuple[str, re.Pattern[str] | None]:
    regex = ""
    kind = "exact"
    i = 0
    first = True
    n = len(text)
    while i < n:
        ch = text[i]
        i += 1
        if ch == "*":
            if i < n and text[i] == "*":
                i += 1
                if i < n and text[i] == "/":
                    i += 1
                if i >= n:
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        regex += ".*"
                        kind = "regex"
                else:
                    regex += "(.*/)?"
                    kind = "regex"
                if first:
                    kind = "suffix"
            else:
                regex += "[^/]*"
                kind = "regex"
        elif ch == "?":
            regex += "[^/]"
            kind = "regex"
        elif ch in _REGEX_LITERALS:
            regex += "\\" + ch
        elif ch == "\\":
            if i < n:
                regex += re.escape(text[i])
                i += 1
                kind = "regex"
            else:
                regex += "\\\\"
        elif ch in "[]":
            regex += ch
            kind = "regex"
        else:
            regex += ch
        first = False
    if kind != "regex":
        return kind, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "possible nested set" for patterns like "[[]"
            return kind, re.compile(regex)
    except re.error as exc:
        raise BadPattern(f"syntax error in pattern {text!r}: {exc}") from None


class PatternMatcher:
    """An ordered list of patterns where the last pattern that matches a path decides it."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns: list[Pattern] = []
        self.exclusions = False
        for raw in patterns:
            text = raw.strip()
            if not text:
                continue
            text = go_clean(text)
            exclusion = text.startswith("!")
            if exclusion:
                if len(text) == 1:
                    raise BadPattern('illegal exclusion pattern: "!"')
                text = text[1:]
                self.exclusions = True
            try:
                glob_match(text, ".")  # syntax check, as Go does
            except BadPattern:
                raise BadPattern(f"syntax error in pattern {raw!r}") from None
            self.patterns.append(Pattern(text, exclusion))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches_or_parent_matches(self, path: str) -> bool:
        """Whether ``path`` (slash-separated, relative) or one of its parents is selected."""
        matched = False
        parent = _dirname(path)
        parent_dirs = parent.split("/") if parent != "." else []
        for pattern in self.patterns:
            if pattern.exclusion != matched:
                continue
            match = pattern.match(path)
            if not match:
                for i in range(len(parent_dirs)):
                    if pattern.match("/".join(parent_dirs[: i + 1])):
                        match = True
                        break
            if match:
                matched = not pattern.exclusion
        return matched

    def matches_using_parent_results(self, path: str, parent: MatchInfo) -> tuple[bool, tuple[bool, ...]]:
        """Like :meth:`matches_or_parent_matches`, reusing the per-pattern results of the parent
        directory (``None`` for a top-level path, or when unknown). Returns the result and the
        per-pattern results to pass when matching this path's children."""
        if parent is not None and len(parent) != len(self.patterns):
            raise ValueError("wrong number of values in parent match info")
        matched = False
        info = [False] * len(self.patterns)
        parent_dirs: list[str] | None = None
        for i, pattern in enumerate(self.patterns):
            match = parent[i] if parent is not None else False
            if not match:
                if pattern.exclusion != matched:
                    continue
                match = pattern.match(path)
                if not match and parent is None:
                    if parent_dirs is None:
                        dirname = _dirname(path)
                        parent_dirs = dirname.split("/") if dirname != "." else []
                    for j in range(len(parent_dirs)):
                        if pattern.match("/".join(parent_dirs[: j + 1])):
                            match = True
                            break
            info[i] = match
            if match:
                matched = not pattern.exclusion
        return matched, tuple(info)


def _dirname(path: str) -> str:
    head, sep, _ = path.rpartition("/")
    if not sep:
        return "."
    return go_clean(head) if head else "/"


def pattern_without_trailing_glob(pattern: Pattern) -> str:
    """The pattern text without a trailing ``/**`` or ``/*`` (fsutil's prefix-only test)."""
    text = pattern.text
    text = text.removesuffix("/**")
    text = text.removesuffix("/*")
    return text


def only_prefixes(patterns: Sequence[Pattern], *, exclusions: bool) -> bool:
    """True when every pattern of the given kind is a plain path (no wildcard before a trailing
    ``/*`` or ``/**``), so whole directories can be skipped by a prefix test."""
    for pattern in patterns:
        if pattern.exclusion == exclusions and any(
            c in pattern_without_trailing_glob(pattern) for c in "*[]?^\\"
        ):
            return False
    return True

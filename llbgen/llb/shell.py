"""Splitting a command string into argv the way BuildKit's ``llb.Shlex`` does.

The words end up in the op's bytes, so the rules are Go's (google/shlex), which differ from
Python's ``shlex`` in small ways: ``#`` starts a comment only at the start of a word, and inside
double quotes a backslash escapes any character.
"""

from __future__ import annotations

from collections.abc import Iterator

_SPACE = " \t\r\n"


def split(command: str) -> list[str]:
    """Splits ``command``; raises ValueError on an unterminated quote or a trailing backslash."""
    words: list[str] = []
    chars = iter(command)
    for c in chars:
        if c in _SPACE:
            continue
        if c == "#":  # a comment runs to the end of the line
            for c in chars:
                if c == "\n":
                    break
            continue
        words.append(_word(c, chars))
    return words


def _word(first: str, chars: Iterator[str]) -> str:
    out: list[str] = []
    c: str | None = first
    while c is not None and c not in _SPACE:
        if c == "\\":
            out.append(_take(chars, "a trailing backslash"))
        elif c == "'":
            while (q := _take(chars, "an unterminated ' quote")) != "'":
                out.append(q)
        elif c == '"':
            while (q := _take(chars, 'an unterminated " quote')) != '"':
                out.append(_take(chars, "a trailing backslash") if q == "\\" else q)
        else:
            out.append(c)
        c = next(chars, None)
    return "".join(out)


def _take(chars: Iterator[str], problem: str) -> str:
    c = next(chars, None)
    if c is None:
        raise ValueError(f"cannot split the command: {problem}")
    return c

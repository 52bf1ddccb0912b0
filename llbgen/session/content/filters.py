"""containerd's filter expressions, which ``List`` and ``ListStatuses`` requests may carry.

A small parser of its own because nothing on PyPI speaks containerd's filter syntax.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

import attrs

from llbgen.session.content.errors import ContentError, invalid


@attrs.frozen
class _Selector:
    path: tuple[str, ...]
    operator: str  # "" (present), "==", "!=", "~="
    value: str
    pattern: re.Pattern[str] | None = None

    def match(self, field: Callable[[Sequence[str]], str | None]) -> bool:
        value = field(self.path)
        if self.operator == "":
            return value is not None
        if self.operator == "==":
            return value is not None and value == self.value
        if self.operator == "!=":
            return value != self.value
        assert self.pattern is not None
        return self.pattern.search(value or "") is not None


_QUOTES = {'"', "/", "|"}
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


class _FilterParser:
    """containerd's filter syntax: ``selector ("," selector)*``, a selector being
    ``fieldpath [("==" | "!=" | "~=") value]``; fields and values may be quoted with ``"``, ``/``
    or ``|`` (the last two are handy for regular expressions)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, what: str) -> ContentError:
        return invalid(f"invalid filter {self.text!r} at position {self.pos}: {what}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def quoted(self) -> str:
        quote = self.text[self.pos]
        self.pos += 1
        out: list[str] = []
        while True:
            ch = self.peek()
            if not ch:
                raise self.error("quoted literal not terminated")
            self.pos += 1
            if ch == quote:
                return "".join(out)
            if ch == "\\":
                nxt = self.peek()
                if not nxt:
                    raise self.error("quoted literal not terminated")
                self.pos += 1
                if nxt == quote:
                    out.append(nxt)
                elif quote == '"' and nxt in _ESCAPES:
                    out.append(_ESCAPES[nxt])
                else:
                    out.append("\\" + nxt)  # a regular expression's own escape
            else:
                out.append(ch)

    def field(self) -> str:
        if self.peek() in _QUOTES and self.peek():
            return self.quoted()
        match = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(self.text, self.pos)
        if match is None:
            raise self.error("expected a field name")
        self.pos = match.end()
        return match.group()

    def parse(self) -> list[_Selector]:
        selectors = []
        while True:
            self.skip_space()
            path = [self.field()]
            while self.peek() == ".":
                self.pos += 1
                path.append(self.field())
            self.skip_space()
            operator, value, pattern = "", "", None
            if self.text.startswith(("==", "!=", "~="), self.pos):
                operator = self.text[self.pos : self.pos + 2]
                self.pos += 2
                self.skip_space()
                if self.peek() in _QUOTES and self.peek():
                    value = self.quoted()
                else:
                    match = re.compile(r"[^\s,]+").match(self.text, self.pos)
                    if match is None:
                        raise self.error("expected a value")
                    self.pos = match.end()
                    value = match.group()
                if operator == "~=":
                    try:
                        pattern = re.compile(value)
                    except re.error as exc:
                        raise self.error(f"bad regular expression {value!r}: {exc}") from None
            selectors.append(_Selector(tuple(path), operator, value, pattern))
            self.skip_space()
            if not self.peek():
                return selectors
            if self.peek() != ",":
                raise self.error(f"unexpected {self.peek()!r}")
            self.pos += 1


def compile_filters(filters: Iterable[str]) -> Callable[[Callable[[Sequence[str]], str | None]], bool]:
    """Any of the filters matches (each one: all of its selectors); no filters match everything."""
    texts = list(filters)
    if not texts or "" in texts:  # an empty filter string matches everything
        return lambda field: True
    parsed = [_FilterParser(text).parse() for text in texts]

    def matches(field: Callable[[Sequence[str]], str | None]) -> bool:
        return any(all(s.match(field) for s in selectors) for selectors in parsed)

    return matches

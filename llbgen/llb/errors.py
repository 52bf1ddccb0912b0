"""Errors that reach users: one line saying what is wrong, where, and what to do."""

from __future__ import annotations

from llbgen.llb.location import Location, caller


class LLBGenError(Exception):
    """Base of every error llbgen reports to a user instead of a traceback."""

    exit_code = 1

    def __init__(self, message: str, location: Location | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.location = location

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class DefinitionError(LLBGenError):
    """A mistake in an image definition (exit code 1), located at the user's line when known."""


class UsageError(LLBGenError):
    """A mistake on the command line (exit code 2)."""

    exit_code = 2


def invalid(message: str) -> DefinitionError:
    """A DefinitionError located at the user's line that called into llbgen."""
    return DefinitionError(message, caller())

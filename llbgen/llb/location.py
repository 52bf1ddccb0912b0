"""Where in the user's Python code a step was created.

Every op records the first stack frame outside llbgen, so that errors (ours, and BuildKit's through
``Definition.Source``) point at the image definition's line rather than at llbgen's internals.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import attrs

_PACKAGE_DIR = str(Path(__file__).resolve().parent.parent) + os.sep


@attrs.frozen
class Location:
    filename: str
    line: int

    def __str__(self) -> str:
        return f"{display_path(self.filename)}:{self.line}"


def display_path(filename: str) -> str:
    """The path relative to the working directory when it is below it, else as given."""
    try:
        rel = os.path.relpath(filename)
    except (ValueError, OSError):  # OSError: the working directory was deleted
        return filename
    return filename if rel.startswith("..") else rel


def is_internal(filename: str) -> bool:
    """True for llbgen's own frames and for code generated at run time (attrs, importlib)."""
    return filename.startswith(_PACKAGE_DIR) or filename.startswith("<")


def caller() -> Location | None:
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not is_internal(filename):
            return Location(filename, frame.f_lineno)
        frame = frame.f_back  # type: ignore[assignment]
    return None

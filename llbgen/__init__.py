"""llbgen: container image builds written as Python functions, compiled to BuildKit LLB.

Everything an image definition needs is importable from here::

    import llbgen

    def build(ctx: llbgen.BuildContext) -> llbgen.State:
        base = llbgen.image("debian:trixie@sha256:...", platform=ctx.build_platform)
        return base.run("make", mounts=[llbgen.bind("/src", llbgen.local("context"))]).root

The names are loaded on first use, so that ``python -m llbgen`` can hand a command over to the
resident process (``llbgen resident``) without importing the graph library first.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not typing's: importing typing would slow every `python -m llbgen` down
if TYPE_CHECKING:
    from typing import Any

    from llbgen.llb import *  # noqa: F403
    from llbgen.project import BuildContext, ImageDefinition, Project  # noqa: F401

_PROJECT_NAMES = ("BuildContext", "ImageDefinition", "Project")


def __getattr__(name: str) -> Any:
    """The public API (``llbgen.llb``'s names and the project's), imported when first asked for."""
    llb = importlib.import_module("llbgen.llb")
    if name == "__all__":
        value: Any = [*llb.__all__, *_PROJECT_NAMES]
    elif name in _PROJECT_NAMES:
        value = getattr(importlib.import_module("llbgen.project"), name)
    elif name in llb.__all__:
        value = getattr(llb, name)
    else:
        raise AttributeError(f"module 'llbgen' has no attribute {name!r}")
    globals()[name] = value
    return value

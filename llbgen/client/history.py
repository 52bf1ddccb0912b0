"""The history of an image's layers, when the definition alone says what every layer is.

Why: the image exporter writes a history entry for each layer the config does not account for,
named after the ref the layer comes from: the step's name when the daemon ran the step, but
"imported sha256:<blob>" when the layer came from an imported cache. The same layers then get two
configs, so two image digests, depending on whether the daemon built them or pulled them from a
registry cache. A config that lists every layer's history itself keeps one digest; entries are
written as the exporter writes them for steps it ran, so the digest is the one a build without a
cache has always had (the exporter fills in the times, which SOURCE_DATE_EPOCH clamps).

Only for images made from scratch by named steps (file steps, and run steps' mounts): an image on
a base image starts with the base's layers, which only the base's config lists, and an unnamed
step has the name the daemon makes up for it. Those keep the exporter's history.
"""

from __future__ import annotations

from typing import Any

from llbgen.llb.exec import ExecOp
from llbgen.llb.fileop import FileOp
from llbgen.llb.graph import Output
from llbgen.llb.state import State

#: What the exporter writes in the entries it generates.
COMMENT = "buildkit.exporter.image.v0"


def layer_history(state: State) -> list[dict[str, Any]] | None:
    """One history entry per layer of ``state``, bottom first; None when they are not all known."""
    names = _layers(state.output)
    if names is None:
        return None
    return [{"created_by": name, "comment": COMMENT} for name in names]


def _layers(output: Output | None) -> list[str] | None:
    """The names of the steps that made the layers of ``output``, bottom first."""
    names: list[str] = []
    while output is not None:
        vertex = output.vertex
        if isinstance(vertex, FileOp):
            below = vertex.base
        elif isinstance(vertex, ExecOp):
            source = [m for m in vertex.mounts if m.has_output][output.index].source
            below = source.output if source is not None else None
        else:  # an image, a local directory, a merge...: its layers are not the definition's to name
            return None
        if not vertex.options.name:
            return None
        names.append(vertex.options.name)
        output = below
    return names[::-1]

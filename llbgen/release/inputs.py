"""What an image is made of: every file of the project its definition loads.

An image is its own directory, plus the helper modules it loads (``ctx.helper``, or a module
imported by path from another directory of the project), plus the images it builds into its own
graph (``ctx.image``) with everything they load in turn, plus the files its graph reads from the
build context (``local("context", include=[...])``: maker's copy of llbgen's source). The definition is evaluated for each of
its platforms, and the project's modules imported meanwhile are recorded; base images answer a
placeholder pin, so this needs no stack and no registry.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator, Mapping
from pathlib import Path

import json

import attrs

from llbgen.llb.definition import marshal
from llbgen.llb.platform import Platform
from llbgen.llb.state import State
from llbgen.project import BuildContext, ImageDefinition, Project

#: What ``ctx.base_image`` answers while inputs are recorded: never built, never pushed.
PLACEHOLDER_PIN = "llbgen.invalid/placeholder@sha256:" + "0" * 64


class _AnyPin(dict[str, str]):
    def get(self, key: str, default: object = None) -> str:
        return PLACEHOLDER_PIN


@attrs.define
class _RecordingProject(Project):
    """The project, recording which images it loads; every base image has a placeholder pin."""

    loaded: list[str] = attrs.field(factory=list, init=False)

    def definition(self, name: str) -> ImageDefinition:
        if name not in self.loaded:
            self.loaded.append(name)
        return super().definition(name)

    def bases(self) -> dict[str, str]:
        return _AnyPin()


@attrs.frozen
class ImageInputs:
    """The files and in-graph images an image is made of, and its state per platform."""

    name: str
    #: Absolute paths: directories (an image's, a helper package's) and single files.
    paths: tuple[Path, ...]
    #: Other images of the project built into this one's graph (``ctx.image``).
    images: tuple[str, ...]
    #: The definition modules of the image and of its in-graph images (``VERSION``, ``SYSTEM_PACKAGES``).
    modules: Mapping[str, types.ModuleType]
    states: Mapping[Platform, State]

    @property
    def module(self) -> types.ModuleType | None:
        return self.modules.get(self.name)


def platforms_of(definition: ImageDefinition) -> tuple[Platform, ...]:
    return definition.platforms or (Platform.host(),)


@attrs.define
class _ModuleSnapshot:
    """Takes the project's modules out of ``sys.modules`` so that they load again, and puts them back."""

    root: Path
    saved: dict[str, types.ModuleType] = attrs.field(factory=dict)

    def _ours(self, module: object) -> bool:
        path = getattr(module, "__file__", None)
        return isinstance(path, str) and Path(path).resolve().is_relative_to(self.root)

    def __enter__(self) -> _ModuleSnapshot:
        self.saved = {k: m for k, m in list(sys.modules.items()) if self._ours(m)}
        for key in self.saved:
            del sys.modules[key]
        return self

    def loaded(self) -> Iterator[types.ModuleType]:
        return (m for m in list(sys.modules.values()) if self._ours(m))

    def __exit__(self, *exc: object) -> None:
        for key, module in list(sys.modules.items()):
            if self._ours(module):
                del sys.modules[key]
        sys.modules.update(self.saved)


def image_inputs(project: Project, name: str, args: Mapping[str, str] | None = None) -> ImageInputs:
    """Evaluates image ``name`` for each of its platforms and records what it loads."""
    root = project.root.resolve()
    recording = _RecordingProject(project.root, project.bases_file, project.base_pins)
    states: dict[Platform, State] = {}
    with _ModuleSnapshot(root) as snapshot:
        definition = recording.definition(name)
        for platform in platforms_of(definition):
            ctx: BuildContext = recording.context(platform, args or {}, Platform.host())
            states[platform] = recording.state(name, ctx)
        files = {Path(str(m.__file__)).resolve() for m in snapshot.loaded()}
        modules = {n: sys.modules[f"llbgen_images.{n}"] for n in recording.loaded if f"llbgen_images.{n}" in sys.modules}
    paths: set[Path] = set()
    for image in recording.loaded:
        paths.add((root / image).resolve())
    for file in files:
        relative = file.relative_to(root)
        # a module in a directory of the project stands for that directory (its data files too)
        paths.add(root / relative.parts[0] if len(relative.parts) > 1 else file)
    others = tuple(i for i in recording.loaded if i != name)
    return ImageInputs(name, tuple(sorted(paths)), others, modules, states)


def context_patterns(states: Mapping[Platform, State]) -> tuple[str, ...]:
    """What the graphs read from the build context (the repository's top): the include patterns
    of their ``local://context`` sources, "." for one read whole. Excludes are left out: a tag may
    change needlessly, never stay the same when what the image is made of changed.

    Marshals the graphs: asked for by tags only, not by every user of :func:`image_inputs`.
    """
    from llbgen.pb import ops_pb2

    patterns: set[str] = set()
    for platform, state in states.items():
        for data in marshal(state, platform=platform).ops:
            op = ops_pb2.Op.FromString(data)
            if op.WhichOneof("op") == "source" and op.source.identifier == "local://context":
                include = op.source.attrs.get("local.includepattern")
                if include:
                    patterns.update(p.rstrip("/") or "." for p in json.loads(include))
                else:
                    patterns.add(".")
    return tuple(sorted(patterns))

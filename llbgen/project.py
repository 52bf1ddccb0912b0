"""Image definitions: ``images/<name>/image.py`` files, each an ordinary function returning a state.

A definition module provides::

    PLATFORMS = ("linux/amd64", "linux/arm64")   # optional; default: the build platform

    def build(ctx: llbgen.BuildContext) -> llbgen.State: ...

``ctx`` says what is being built (target platform, build platform, build args) and gives access to
other images of the project (``ctx.image("compilers")``: their state, built into the same graph,
with nothing pushed in between) and to the base images the project configuration pins
(``ctx.base_image("debian:trixie")``, see :mod:`llbgen.config`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import traceback
import types
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs

from llbgen.llb.errors import DefinitionError, LLBGenError, UsageError
from llbgen.llb.location import Location, caller, is_internal
from llbgen.llb.platform import Platform
from llbgen.llb.sources import image as image_source
from llbgen.llb.state import State

DEFINITION_FILE = "image.py"


@attrs.frozen
class ImageDefinition:
    name: str
    path: Path
    platforms: tuple[Platform, ...]
    description: str
    build: Callable[[BuildContext], object]

    def default_platform(self, host: Platform) -> Platform:
        return host if host in self.platforms or not self.platforms else self.platforms[0]


@attrs.frozen
class BuildContext:
    """What an image definition is asked to build, and the project it belongs to."""

    target_platform: Platform
    build_platform: Platform
    args: Mapping[str, str]
    project: Project = attrs.field(repr=False)

    @property
    def is_cross(self) -> bool:
        """True when the target differs from the platform the build steps run on."""
        return self.target_platform != self.build_platform

    def arg(self, name: str, default: str | None = None) -> str | None:
        return self.args.get(name, default)

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        """Build arg ``name``, one of ``choices`` (default: the first); anything else is an error."""
        value = self.args.get(name) or choices[0]
        if value not in choices:
            raise DefinitionError(f"--arg {name}={value}: expected one of {', '.join(choices)}", caller())
        return value

    def helper(self, name: str) -> types.ModuleType:
        """A module of the project that is not an image: ``ctx.helper("sources/debian")`` is
        ``images/sources/debian.py``, loaded once, so that images share code without copying it."""
        return self.project.helper(name)

    def image(self, name: str, *, platform: Platform | str | None = None) -> State:
        """Another image of this project, for ``platform`` (default: this target platform)."""
        target = self.target_platform
        if platform is not None:
            target = platform if isinstance(platform, Platform) else Platform.parse(platform)
        return self.project.state(name, attrs.evolve(self, target_platform=target))

    def base_image(self, name: str, *, platform: Platform | str | None = None) -> State:
        """A base image by its short name, pinned by digest in the project configuration.

        ``--arg base:NAME=REF`` overrides the recorded reference.
        """
        ref = self.args.get(f"base:{name}") or self.project.bases().get(name)
        if ref is None:
            raise DefinitionError(self.project.missing_pin_message(name), caller())
        return image_source(ref, platform=platform or self.target_platform)


@attrs.define
class Project:
    """The ``images/`` directory of a project, with its definitions loaded on demand."""

    root: Path
    #: A JSON file of base image pins, ``{"NAME": "REF@sha256:..."}`` (read on first use).
    bases_file: Path | None = None
    #: Pins of their own, over those of ``bases_file``.
    base_pins: Mapping[str, str] = attrs.field(factory=dict)
    _loaded: dict[str, ImageDefinition] = attrs.field(factory=dict, init=False)
    _states: dict[tuple[object, ...], State | None] = attrs.field(factory=dict, init=False)
    _bases: dict[str, str] | None = attrs.field(default=None, init=False)
    _helpers: dict[str, types.ModuleType] = attrs.field(factory=dict, init=False)

    @property
    def local_unique_id(self) -> str:
        """Stable per project, so the daemon reuses its copy of local sources from run to run."""
        return "llbgen-" + hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:16]

    def missing_pin_message(self, name: str) -> str:
        """What to say when no reference is pinned for base image ``name``."""
        where = f"it is not in {self.bases_file}" if self.bases_file else "no bases-file is configured"
        return (
            f"no pinned reference for base image {name!r} ({where}): pin it in the project "
            f"configuration (llbgen.toml, see 'llbgen --help') or pass --arg base:{name}=REF@sha256:..."
        )

    def add_definition(self, name: str, path: Path) -> ImageDefinition:
        """Registers image ``name`` from a definition file of any name (the frontend's ``filename``)."""
        self._loaded[name] = _load(name, path)
        return self._loaded[name]

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{DEFINITION_FILE}"))

    def definition(self, name: str) -> ImageDefinition:
        if name not in self._loaded:
            path = self.root / name / DEFINITION_FILE
            if not path.is_file():
                known = ", ".join(self.names()) or f"none: {self.root} has no */{DEFINITION_FILE}"
                raise UsageError(f"unknown image {name!r}; known images: {known}")
            self._loaded[name] = _load(name, path)
        return self._loaded[name]

    def helper(self, name: str) -> types.ModuleType:
        """``images/<name>.py`` as a module (see :meth:`BuildContext.helper`)."""
        if name not in self._helpers:
            parts = name.split("/")
            path = self.root.joinpath(*parts).with_suffix(".py")
            if not all(p.isidentifier() for p in parts) or not path.is_file():
                raise DefinitionError(
                    f"no helper module {name!r}: expected a Python file {path}", caller()
                )
            self._helpers[name] = load_module("llbgen_images._helpers." + ".".join(parts), path)
        return self._helpers[name]

    def context(
        self, target: Platform, args: Mapping[str, str], build: Platform | None = None
    ) -> BuildContext:
        return BuildContext(target, build or Platform.host(), types.MappingProxyType(dict(args)), self)

    def state(self, name: str, ctx: BuildContext) -> State:
        """The state image ``name`` builds for ``ctx``; the same object for the same context."""
        key = (name, ctx.target_platform, ctx.build_platform, tuple(sorted(ctx.args.items())))
        if key in self._states:
            state = self._states[key]
            if state is None:
                raise DefinitionError(f"image {name!r} depends on itself through ctx.image()", caller())
            return state
        self._states[key] = None  # in progress: a second request for it is a cycle
        try:
            state = _call(self.definition(name), ctx)
        except BaseException:
            del self._states[key]
            raise
        self._states[key] = state
        return state

    def bases(self) -> dict[str, str]:
        """The pinned base images: ``bases_file``'s (none if it does not exist), then ``base_pins``."""
        if self._bases is None:
            pins: dict[str, str] = {}
            if self.bases_file is not None:
                try:
                    pins = dict(json.loads(self.bases_file.read_text()))
                except FileNotFoundError:
                    pass
                except (OSError, ValueError) as exc:
                    raise DefinitionError(f"cannot read base image pins from {self.bases_file}: {exc}")
            self._bases = {**pins, **self.base_pins}
        return self._bases


def load_module(module_name: str, path: Path) -> types.ModuleType:
    """Imports a user's Python file; a mistake in it is reported at the user's line."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise DefinitionError(
            f"syntax error: {exc.msg}", Location(exc.filename or str(path), exc.lineno or 1)
        ) from None
    except LLBGenError:
        raise
    except Exception as exc:
        raise user_error(exc, path) from None
    return module


def _load(name: str, path: Path) -> ImageDefinition:
    module = load_module(f"llbgen_images.{name}", path)
    build = getattr(module, "build", None)
    if not callable(build):
        raise DefinitionError(
            f"image {name!r} defines no build(ctx) function", Location(str(path), 1)
        )
    try:
        platforms = tuple(Platform.parse(p) for p in getattr(module, "PLATFORMS", ()))
    except ValueError as exc:
        raise DefinitionError(f"PLATFORMS: {exc}", Location(str(path), 1)) from None
    doc = (module.__doc__ or "").strip().splitlines()
    return ImageDefinition(name, path, platforms, doc[0] if doc else "", build)


def _call(definition: ImageDefinition, ctx: BuildContext) -> State:
    try:
        result = definition.build(ctx)
    except LLBGenError:
        raise
    except Exception as exc:
        raise user_error(exc, definition.path) from None
    if not isinstance(result, State):
        code = definition.build.__code__
        hint = " (use .root of the run step)" if hasattr(result, "root") else ""
        raise DefinitionError(
            f"build() of image {definition.name!r} returned {type(result).__name__}, "
            f"not a llbgen.State{hint}",
            Location(code.co_filename, code.co_firstlineno),
        )
    return result


def user_error(exc: BaseException, path: Path) -> DefinitionError:
    """The exception, located at the innermost line of the user's code that it passed through."""
    location = Location(str(path), 1)
    for frame in traceback.extract_tb(exc.__traceback__):
        if not is_internal(frame.filename):
            location = Location(frame.filename, frame.lineno or 1)
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return DefinitionError(message, location)

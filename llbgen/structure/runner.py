"""Running an image's structure tests on BuildKit: one solve for every check on every platform.

The checks of each target platform are compiled into one results state; the results of all
platforms are built in a single multi-platform solve (``llbgen build``'s own path, so the image's
steps, their digests and their cache are shared with ``llbgen build``), exported to a temporary
directory, and judged in Python.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs

from llbgen.client.imageconfig import image_config
from llbgen.client.outputs import Output
from llbgen.client.options import BuildOptions
from llbgen.client.run import build
from llbgen.llb.errors import DefinitionError, LLBGenError, UsageError
from llbgen.llb.location import Location
from llbgen.llb.platform import Platform
from llbgen.llb.state import State
from llbgen.project import BuildContext, ImageDefinition, Project, load_module, user_error
from llbgen.structure.compiler import RESULTS, CompiledSuite, compile_checks
from llbgen.structure.cst import has_spec_files, load_spec, spec_files
from llbgen.structure.evaluate import Outcome, evaluate, read_outcome
from llbgen.structure.spec import CHECK_TYPES, Check

TESTS_FILE = "tests.py"
#: The pinned base whose shell and tools run the checks (``--arg base:debian:trixie=REF`` moves it).
HELPER_BASE = "debian:trixie"


@attrs.frozen
class TestSuite:
    """The structure tests an image declares: ``images/<name>/tests.py`` and spec files.

    Spec files are container-structure-test's (``test/spec.yaml``, ``test/<arch>/spec.yaml``).
    """

    image: str
    path: Path
    checks: Callable[[BuildContext], Sequence[Check]]
    #: The image's directory, where ``test/`` holds its spec files.
    directory: Path | None = None


@attrs.frozen
class CheckResult:
    check: Check
    platform: Platform
    outcome: Outcome
    problems: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.problems


@attrs.frozen
class TestOptions:
    """``build``: the image and how to build it, as for ``llbgen build`` (its outputs are the
    runner's own); ``build.platforms`` None means all the image's ``PLATFORMS``."""

    build: BuildOptions
    #: Only the checks whose name this regular expression matches (``re.search``).
    select: str | None = None


def load_suite(project: Project, image: str) -> TestSuite:
    """The tests of ``image``: ``tests(ctx)`` (a list per target platform) or a ``TESTS`` list,
    and the image's spec files."""
    definition = project.definition(image)
    directory = definition.path.parent
    path = directory / TESTS_FILE
    specs = has_spec_files(directory)
    if not path.is_file():
        if specs:
            return TestSuite(image, path, lambda ctx: (), directory)
        raise UsageError(
            f"image {image!r} has no structure tests: write {path} with a tests(ctx) function "
            "returning llbgen.structure checks, or test/spec.yaml (see 'llbgen test --help')"
        )
    module = load_module(f"llbgen_tests.{image}", path)
    declared = getattr(module, "tests", None)
    with_specs = directory if specs else None
    if callable(declared):
        return TestSuite(image, path, declared, with_specs)
    listed = getattr(module, "TESTS", None)
    if isinstance(listed, (list, tuple)):
        checks = tuple(listed)
        return TestSuite(image, path, lambda ctx: checks, with_specs)
    raise DefinitionError(
        f"{TESTS_FILE} of image {image!r} defines neither tests(ctx) nor a TESTS list", Location(str(path), 1)
    )


def checks_for(suite: TestSuite, ctx: BuildContext, select: str | None = None) -> list[Check]:
    """The suite's checks for ``ctx``'s target platform, validated, optionally filtered by name."""
    try:
        declared = suite.checks(ctx)
    except LLBGenError:
        raise
    except Exception as exc:
        raise user_error(exc, suite.path) from None
    where = Location(str(suite.path), 1)
    if isinstance(declared, (str, bytes)) or not isinstance(declared, Sequence):
        raise DefinitionError(
            f"tests(ctx) of image {suite.image!r} must return a list of checks, not {type(declared).__name__}",
            where,
        )
    located = [(check, where) for check in declared]
    if suite.directory is not None:
        # The image's environment, which spec files expand $VARIABLES from.
        config = image_config(ctx.project.state(suite.image, ctx), ctx.target_platform)["config"]
        env = dict(entry.split("=", 1) for entry in config["Env"])
        for spec in spec_files(suite.directory, ctx.target_platform.architecture):
            name = f"metadata ({spec.relative_to(suite.directory)})"
            located += [(check, Location(str(spec), 1)) for check in load_spec(spec, env, metadata_name=name)]
    names: set[str] = set()
    for check, source in located:
        if not isinstance(check, CHECK_TYPES):
            raise DefinitionError(
                f"tests of image {suite.image!r}: {check!r} is not a CommandTest, FileExistenceTest, "
                "FileContentTest or MetadataTest",
                source,
            )
        if check.name in names:
            raise DefinitionError(
                f"tests of image {suite.image!r}: two checks are named {check.name!r}", source
            )
        names.add(check.name)
    checks = [check for check, _ in located]
    if select is not None:
        checks = [c for c in checks if re.search(select, c.name)]
    return checks


@attrs.define
class _SuiteProject(Project):
    """The project plus one pseudo-image: the compiled structure tests of ``suite.image``."""

    suite: TestSuite | None = attrs.field(default=None, kw_only=True)
    select: str | None = attrs.field(default=None, kw_only=True)
    compiled: dict[Platform, CompiledSuite] = attrs.field(factory=dict, kw_only=True)

    @property
    def pseudo(self) -> str:
        assert self.suite is not None
        return f"{self.suite.image} (structure tests)"

    def definition(self, name: str) -> ImageDefinition:
        if self.suite is not None and name == self.pseudo:
            return attrs.evolve(super().definition(self.suite.image), name=name)
        return super().definition(name)

    def state(self, name: str, ctx: BuildContext) -> State:
        if self.suite is None or name != self.pseudo:
            return super().state(name, ctx)
        # The same context `llbgen build` uses, so the image's steps are the same ops.
        image = super().state(self.suite.image, ctx)
        checks = checks_for(self.suite, ctx, self.select)
        if not checks:
            what = f"match {self.select!r}" if self.select else "are declared"
            raise UsageError(
                f"no structure tests of image {self.suite.image!r} {what} for {ctx.target_platform}"
            )
        compiled = compile_checks(
            image, checks, helper=ctx.base_image(HELPER_BASE), platform=ctx.target_platform
        )
        self.compiled[ctx.target_platform] = compiled
        return compiled.results


def run_tests(project: Project, options: TestOptions) -> list[CheckResult]:
    """Builds and runs every check on every platform; the results in declaration order.

    Platforms: ``options.build.platforms``, else all the image's ``PLATFORMS`` (else the daemon's).
    Raises LLBGenError when the image (or the harness) cannot be built; failing checks do not.
    """
    if options.select is not None:
        try:
            re.compile(options.select)
        except re.error as exc:
            raise UsageError(f"invalid check filter {options.select!r}: {exc}") from None
    suite = load_suite(project, options.build.image)
    runner = _SuiteProject(project.root, project.bases_file, project.base_pins, suite=suite, select=options.select)
    platforms = options.build.platforms or runner.definition(suite.image).platforms or None
    with tempfile.TemporaryDirectory(prefix="llbgen-test-") as tmp:
        build(
            runner,
            attrs.evolve(
                options.build, image=runner.pseudo, platforms=platforms, outputs=[Output("local", {}, tmp)]
            ),
        )
        return collect(runner.compiled, Path(tmp))


def collect(compiled: Mapping[Platform, CompiledSuite], exported: Path) -> list[CheckResult]:
    """Judges the exported results; a single platform is exported flat, several by platform id."""
    results: dict[str, list[CheckResult]] = {}
    for platform, suite in compiled.items():
        root = (exported if len(compiled) == 1 else exported / platform.id) / RESULTS
        for item in suite.checks:
            outcome = item.observed or read_outcome(item.check, root / item.id)
            problems = tuple(evaluate(item.check, outcome))
            results.setdefault(item.check.name, []).append(
                CheckResult(item.check, platform, outcome, problems)
            )
    return [result for group in results.values() for result in group]

"""``llbgen publish``: test, then push, only the images whose tag a registry lacks.

For each image of the plan that needs a build: its structure tests run first (a solve that builds
the image and runs every check on every platform); only when all pass is the image pushed, under
its tag, to the registries that lack it (every registry for ``-dev``/``-wip`` tags), for all its
platforms. The push is ``llbgen build``'s own path on the same graph, so it takes every step from
the cache the tests just filled. ``SOURCE_DATE_EPOCH`` is the last commit of the image's inputs and
file timestamps are rewritten to it, so that the same definition gives the same digests anywhere.

An image that declares ``CACHE_MOUNTS`` in its ``image.py`` (cache mount ids or patterns, e.g.
``CACHE_MOUNTS = ("llvm-ccache-*",)``) has those cache mounts travel through the first registry:
seeded from ``<registry>/<name>-cache-mounts:latest`` before the first build (the tests' or the
push's), and pushed there after the push (see :mod:`llbgen.client.cachemounts`), so that a CI
runner that starts empty compiles only what changed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import attrs

from llbgen.client.cachemountspec import CacheMountsRef
from llbgen.client.connection import TLSConfig
from llbgen.config import DaemonSettings
from llbgen.client.outputs import Output
from llbgen.client.options import BuildOptions
from llbgen.client.run import build
from llbgen.llb.errors import LLBGenError
from llbgen.project import Project
from llbgen.release.inputs import platforms_of
from llbgen.release.plan import ImagePlan
from llbgen.structure.runner import TESTS_FILE, TestOptions, run_tests


@attrs.frozen
class Settings:
    progress: str = "auto"
    address: str | None = None
    tls: TLSConfig = TLSConfig()
    #: llbgen's own buildkitd's settings, when no address is given (the project configuration's)
    daemon: DaemonSettings = DaemonSettings()
    dry_run: bool = False


@attrs.frozen
class Outcome:
    name: str
    tag: str
    status: str  # skipped | built and pushed | failed | would build
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def __str__(self) -> str:
        return f"{self.name} {self.tag}: {self.status}" + (f" ({self.detail})" if self.detail else "")


def image_output(refs: Sequence[str]) -> Output:
    """The pushing image exporter for every reference, timestamps rewritten to SOURCE_DATE_EPOCH."""
    return Output("image", {"name": ",".join(refs), "push": "true", "rewrite-timestamp": "true"})


def cache_mounts(plan: ImagePlan) -> CacheMountsRef | None:
    """Where the image's declared cache mounts (``CACHE_MOUNTS``) travel, or None."""
    declared = getattr(plan.inputs.module, "CACHE_MOUNTS", None)
    if declared is None:
        return None
    if not isinstance(declared, (tuple, list)) or not all(isinstance(i, str) and i for i in declared):
        raise LLBGenError(
            f"images/{plan.name}/image.py: CACHE_MOUNTS must be a tuple of cache mount ids or patterns, e.g. (\"ccache-*\",)"
        )
    if not declared or not plan.present:
        return None
    registry = next(iter(plan.present)).rstrip("/")
    return CacheMountsRef(f"{registry}/{plan.name}-cache-mounts:latest", tuple(declared))


def publish_one(project: Project, plan: ImagePlan, settings: Settings) -> Outcome:
    if not plan.build:
        return Outcome(plan.name, plan.tag, "skipped", plan.reason)
    refs = [plan.ref(r) for r in plan.push_to]
    if settings.dry_run:
        mounts = cache_mounts(plan)
        travel = f"; cache mounts {', '.join(mounts.ids)} from and to {mounts.ref}" if mounts else ""
        return Outcome(plan.name, plan.tag, "would build", f"{plan.reason}; push to {', '.join(refs)}{travel}")
    platforms = list(platforms_of(project.definition(plan.name)))
    args = {"SOURCE_DATE_EPOCH": plan.epoch}
    try:
        mounts = cache_mounts(plan)
        seed = mounts  # seeds the first build only: the later ones find the mounts filled
        if (project.definition(plan.name).path.parent / TESTS_FILE).is_file():
            if mounts is not None:
                build(project, BuildOptions(
                    image=plan.name, platforms=platforms, args=args, progress=settings.progress,
                    address=settings.address, tls=settings.tls, daemon=settings.daemon, cache_mounts_from=mounts,
                ))  # fmt: skip
                seed = None
            print(f"llbgen: {plan.name}: structure tests on {', '.join(map(str, platforms))}", file=sys.stderr)
            results = run_tests(
                project,
                TestOptions(
                    BuildOptions(
                        image=plan.name, platforms=platforms, args=args, progress=settings.progress,
                        address=settings.address, tls=settings.tls, daemon=settings.daemon,
                    )
                ),
            )  # fmt: skip
            failed = [f"{r.check.name} on {r.platform}" for r in results if not r.passed]
            if failed:
                return Outcome(plan.name, plan.tag, "failed", f"structure tests failed: {'; '.join(failed)}; nothing pushed")
            tested = f"{len(results)} checks passed"
        else:
            tested = f"no {TESTS_FILE}"
        print(f"llbgen: {plan.name}: pushing {', '.join(refs)}", file=sys.stderr)
        response = build(
            project,
            BuildOptions(
                image=plan.name, platforms=platforms, args=args, outputs=[image_output(refs)],
                progress=settings.progress, address=settings.address, tls=settings.tls,
                daemon=settings.daemon, cache_mounts_from=seed, cache_mounts_to=mounts,
            ),
        )  # fmt: skip
    except LLBGenError as exc:
        print(f"llbgen: {plan.name}: {exc}", file=sys.stderr)
        return Outcome(plan.name, plan.tag, "failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    digest = response.get("containerimage.digest", "")
    return Outcome(plan.name, plan.tag, "built and pushed", f"{tested}; {digest} to {', '.join(plan.push_to)}")


def publish(project: Project, plans: Sequence[ImagePlan], settings: Settings) -> list[Outcome]:
    """Publishes in the plan's (dependency) order; an image whose in-graph dependency failed is not
    attempted."""
    outcomes: list[Outcome] = []
    failed: set[str] = set()
    for plan in plans:
        broken = [d for d in plan.inputs.images if d in failed]
        if broken:
            outcome = Outcome(plan.name, plan.tag, "failed", f"not attempted: {', '.join(broken)} failed")
        else:
            outcome = publish_one(project, plan, settings)
        if outcome.failed:
            failed.add(plan.name)
        outcomes.append(outcome)
    return outcomes

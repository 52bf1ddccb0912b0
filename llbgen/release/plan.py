"""What ``llbgen publish`` would do: each image's tag, and which registries already have it.

An image is built when a registry lacks its tag, always when the tag is ``-dev`` or ``-wip``
(not an authoritative build), and with ``--force``. Images that build another image of the
selection into their graph come after it, so a failure is reported at the image that caused it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import attrs

from llbgen.llb.errors import UsageError
from llbgen.project import Project
from llbgen.release.inputs import ImageInputs, image_inputs
from llbgen.release.registry import Registry
from llbgen.release.tags import always_rebuilt, commit_timestamp, image_tag, toplevel


@attrs.frozen
class ImagePlan:
    name: str
    tag: str
    inputs: ImageInputs = attrs.field(repr=False)
    #: registry -> whether it has the tag
    present: dict[str, bool]
    build: bool
    reason: str
    #: SOURCE_DATE_EPOCH of the build: the last commit of the inputs.
    epoch: str

    def ref(self, registry: str) -> str:
        return f"{registry.rstrip('/')}/{self.name}:{self.tag}"

    @property
    def push_to(self) -> list[str]:
        """The registries the build pushes to: every one when the tag is always rebuilt."""
        if always_rebuilt(self.tag) or all(self.present.values()):
            return list(self.present)
        return [r for r, has in self.present.items() if not has]


def dependency_order(inputs: dict[str, ImageInputs]) -> list[str]:
    """Names in an order where each image comes after the selected images it builds in-graph."""
    done: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        for other in inputs[name].images:
            if other in inputs:
                visit(other)
        done.append(name)

    for name in sorted(inputs):
        visit(name)
    return done


def select(project: Project, names: Sequence[str]) -> list[str]:
    known = project.names()
    if not known:
        raise UsageError(f"no images found: {project.root} has no */image.py (use --images DIR)")
    for name in names:
        if name not in known:
            raise UsageError(f"unknown image {name!r}; known images: {', '.join(known)}")
    return list(names) or known


def make_plan(
    project: Project,
    names: Sequence[str],
    registries: Sequence[str],
    registry: Registry,
    *,
    scheme: str = "commit",
    force: bool = False,
) -> list[ImagePlan]:
    if not registries:
        raise UsageError("name at least one --registry (e.g. --registry 127.0.0.1:5000/llbgen)")
    inputs = {name: image_inputs(project, name) for name in select(project, names)}
    top = toplevel(Path(project.root))
    plans = []
    for name in dependency_order(inputs):
        tag = image_tag(inputs[name], project.root, scheme)
        present = {r: registry.manifest_digest(f"{r.rstrip('/')}/{name}:{tag}") is not None for r in registries}
        missing = [r for r, has in present.items() if not has]
        if force:
            build, reason = True, "--force"
        elif always_rebuilt(tag):
            build, reason = True, f"{tag.rsplit('-', 1)[1]} tag: always rebuilt"
        elif missing:
            build, reason = True, f"missing in {', '.join(missing)}"
        else:
            build, reason = False, "every registry has it"
        plans.append(ImagePlan(name, tag, inputs[name], present, build, reason, commit_timestamp(top, inputs[name])))
    return plans


def format_plan(plans: Sequence[ImagePlan]) -> str:
    lines = []
    for plan in plans:
        lines.append(f"{plan.name} {plan.tag}: {'build' if plan.build else 'skip'} ({plan.reason})")
        for registry, has in plan.present.items():
            lines.append(f"  {plan.ref(registry)}: {'present' if has else 'missing'}")
    return "\n".join(lines) + "\n"


def plan_json(plans: Sequence[ImagePlan]) -> str:
    """The plan as a JSON list, for CI: ``[.[] | select(.build) | .image]`` is the images to build."""
    return json.dumps(
        [
            {"image": p.name, "tag": p.tag, "build": p.build, "reason": p.reason, "registries": p.present}
            for p in plans
        ],
        indent=1,
    ) + "\n"

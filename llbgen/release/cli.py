"""``llbgen tag``, ``pin``, ``plan``, ``publish``, ``lint`` and ``sources``: the release workflow.

Wired into ``llbgen.cli`` with ``add_parser(commands)`` and ``run(project, ns, config)``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from llbgen.config import Config
from llbgen.flags import PROGRESS_MODES, add_connection_flags, tls_config
from llbgen.llb.errors import LLBGenError
from llbgen.project import Project
from llbgen.release.tags import SCHEMES

COMMANDS = ("tag", "pin", "plan", "publish", "lint", "sources")

REGISTRY_HELP = "registry and path prefix to publish to, e.g. 127.0.0.1:5000/llbgen (repeatable)"


def add_parser(commands: Any) -> None:
    """Adds the release commands to ``llbgen``'s subparsers."""
    tag = commands.add_parser("tag", help="print an image's tag, from the git history of what it is made of")
    tag.add_argument("image", help="image name (a directory under --images)")
    tag.add_argument("--scheme", choices=SCHEMES, default="commit", help="commit (image-tools' tags, default) or tree")

    pin = commands.add_parser("pin", help="print REF@sha256:... of an image reference, from its registry")
    pin.add_argument("ref", help="image reference, e.g. 127.0.0.1:5000/llbgen/hello:TAG")

    for name, text in (
        ("plan", "each image's tag and which registries have it: what publish would build"),
        ("publish", "test, then push the images a registry lacks (always -dev/-wip tags)"),
    ):
        parser = commands.add_parser(name, help=text)
        parser.add_argument("names", nargs="*", metavar="IMAGE", help="images (default: all)")
        parser.add_argument("--registry", action="append", default=[], metavar="R", help=REGISTRY_HELP)
        parser.add_argument("--scheme", choices=SCHEMES, default="commit")
        if name == "plan":
            parser.add_argument("--format", choices=("text", "json"), default="text", help="json: for a CI matrix")
        if name == "publish":
            parser.add_argument("--force", action="store_true", help="build and push even what is there")
            parser.add_argument("--dry-run", action="store_true", help="say what would be built, build nothing")
            parser.add_argument("--progress", choices=PROGRESS_MODES, default="auto")
            add_connection_flags(parser)

    lint = commands.add_parser("lint", help="check pins, network use and embedded shell scripts (shellcheck)")
    lint.add_argument("names", nargs="*", metavar="IMAGE", help="images (default: all)")
    lint.add_argument("--scripts", default="scripts", help="directory of shell scripts to check too (default: scripts; '' for none)")

    sources = commands.add_parser("sources", help="keep the pinned Debian source tarballs in a registry")
    sources.add_argument("action", choices=("push",))
    sources.add_argument("names", nargs="*", metavar="IMAGE", help="images (default: all)")
    sources.add_argument("--registry", action="append", default=[], metavar="R", help="registry and path prefix: the tarballs go to R/sources (repeatable)")
    sources.add_argument("--progress", choices=PROGRESS_MODES, default="auto")
    add_connection_flags(sources)


def run(project: Project, ns: argparse.Namespace, config: Config) -> int:
    if ns.command == "lint":
        from llbgen.release.lint import run_lint

        return run_lint(project, ns.names, ns.scripts)
    if ns.command == "sources":
        from llbgen.release.sources import push_sources

        return push_sources(project, ns, config)
    if ns.command == "tag":
        return _tag(project, ns)
    if ns.command == "pin":
        return _pin(ns.ref)
    return _plan_or_publish(project, ns, config)


def _tag(project: Project, ns: argparse.Namespace) -> int:
    from llbgen.release.inputs import image_inputs
    from llbgen.release.tags import image_tag

    project.definition(ns.image)  # an unknown image is a usage error
    print(image_tag(image_inputs(project, ns.image), project.root, ns.scheme))
    return 0


def _pin(ref: str) -> int:
    from llbgen.release.registry import Registry, Repository

    repo, tag = Repository.parse(ref)
    with Registry() as registry:
        digest = registry.manifest_digest(ref)
    if digest is None:
        raise LLBGenError(f"registry {repo.host} has no {repo.path}:{tag}")
    name = ref.partition("@")[0]
    print(f"{name}@{digest}")
    return 0


def _plan_or_publish(project: Project, ns: argparse.Namespace, config: Config) -> int:
    from llbgen.release.plan import format_plan, make_plan, plan_json
    from llbgen.release.publish import Settings, publish
    from llbgen.release.registry import Registry

    force = getattr(ns, "force", False)
    with Registry() as registry:
        plans = make_plan(project, ns.names, ns.registry, registry, scheme=ns.scheme, force=force)
    if ns.command == "plan":
        sys.stdout.write(format_plan(plans) if ns.format == "text" else plan_json(plans))
        return 0
    settings = Settings(
        progress=ns.progress,
        address=ns.addr,
        tls=tls_config(ns),
        daemon=config.daemon,
        dry_run=ns.dry_run,
    )
    outcomes = publish(project, plans, settings)
    for outcome in outcomes:
        print(outcome)
    return 1 if any(o.failed for o in outcomes) else 0

"""Image tags from the git history of what an image is made of (its inputs, see ``inputs``).

``commit`` (the default) is image-tools' scheme (``scripts/make-image-tag.sh <dir>``):
``[<version>-]<commit timestamp>-<short commit>`` of the last commit that touched the inputs,
``-wip`` when they have uncommitted changes (tracked or not), and no suffix at all when
``WITHOUT_SUFFIX`` is set (to anything, even empty). The version prefix is what
``images/<name>/version.sh`` prints when it exists (image-tools' convention), else the definition's
``VERSION``. For an image that loads only its own directory this is the same tag
make-image-tag.sh gives; an image that loads helpers or other images gets a new tag when any of
them changes.

``tree``: the git tree hash of the inputs as they are in the working tree (a tree holding each
input at its path from the repository's top), ``-wip`` as above; ``git show <hash>`` lists what
was built.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from llbgen.llb.errors import LLBGenError
from llbgen.release.inputs import ImageInputs, context_patterns

SCHEMES = ("commit", "tree")
#: Tags that are rebuilt whatever the registries hold (image-tools: not authoritative builds).
ALWAYS_REBUILT = ("-dev", "-wip")


class TagError(LLBGenError):
    """The repository cannot give a tag (not a git work tree, nothing committed...)."""


def git(top: Path, *args: str, env: Mapping[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=top, capture_output=True, text=True, env=dict(env) if env else None, check=False
        )
    except FileNotFoundError:
        raise TagError("git is not installed: image tags come from the git history") from None
    if proc.returncode != 0:
        message = proc.stderr.strip().splitlines()
        raise TagError(f"git {' '.join(args[:2])} failed in {top}: {message[-1] if message else proc.returncode}")
    return proc.stdout


def toplevel(path: Path) -> Path:
    """The top of the git work tree holding ``path``."""
    try:
        return Path(git(path, "rev-parse", "--show-toplevel").strip())
    except TagError:
        raise TagError(f"{path} is not in a git work tree: image tags come from the git history") from None


def relative_paths(top: Path, inputs: ImageInputs) -> list[str]:
    """git pathspecs of what the image is made of: its files, and what it reads from the context."""
    return [str(p.relative_to(top.resolve())) for p in inputs.paths] + list(context_patterns(inputs.states))


def is_dirty(top: Path, paths: Sequence[str]) -> bool:
    return bool(git(top, "status", "--porcelain", "--", *paths).strip())


def version_prefix(top: Path, inputs: ImageInputs, image_dir: str) -> str:
    """``version.sh``'s output (run from the top, as image-tools does), else ``VERSION``; '' if none."""
    script = top / image_dir / "version.sh"
    if script.is_file():
        proc = subprocess.run([f"./{image_dir}/version.sh"], cwd=top, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise TagError(f"{image_dir}/version.sh failed (exit {proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout.rstrip("\n")
    version = getattr(inputs.module, "VERSION", None) if inputs.module is not None else None
    if version is not None and not isinstance(version, str):
        raise TagError(f"VERSION of image {inputs.name!r} must be a string, not {type(version).__name__}")
    return version or ""


def commit_tag(top: Path, inputs: ImageInputs, image_dir: str, environ: Mapping[str, str]) -> str:
    paths = relative_paths(top, inputs)
    last = git(top, "log", "-1", "--pretty=format:%ct %h", "--", *paths).split()
    if len(last) != 2:
        raise TagError(f"image {inputs.name!r} has no commit yet: commit {', '.join(paths)} first")
    timestamp, short = last
    prefix = version_prefix(top, inputs, image_dir)
    tag = f"{prefix}-" if prefix else ""
    return tag + f"{timestamp}-{short}" + _suffix(top, paths, environ)


def tree_tag(top: Path, inputs: ImageInputs, environ: Mapping[str, str]) -> str:
    paths = relative_paths(top, inputs)
    with tempfile.TemporaryDirectory(prefix="llbgen-tag-") as tmp:
        env = dict(os.environ, GIT_INDEX_FILE=str(Path(tmp) / "index"))
        git(top, "add", "--", *paths, env=env)
        tree = git(top, "write-tree", env=env).strip()
    return tree + _suffix(top, paths, environ)


def _suffix(top: Path, paths: Sequence[str], environ: Mapping[str, str]) -> str:
    if "WITHOUT_SUFFIX" in environ:
        return ""
    return "-wip" if is_dirty(top, paths) else ""


def commit_timestamp(top: Path, inputs: ImageInputs) -> str:
    """The timestamp of the last commit of the inputs (``SOURCE_DATE_EPOCH`` of a release build)."""
    return git(top, "log", "-1", "--pretty=format:%ct", "--", *relative_paths(top, inputs)).strip()


def image_tag(inputs: ImageInputs, root: Path, scheme: str = "commit", environ: Mapping[str, str] | None = None) -> str:
    """The tag of an image whose definitions live in ``root`` (the project's images directory)."""
    environ = os.environ if environ is None else environ
    top = toplevel(root)
    image_dir = str((root.resolve() / inputs.name).relative_to(top.resolve()))
    if scheme == "tree":
        return tree_tag(top, inputs, environ)
    return commit_tag(top, inputs, image_dir, environ)


def always_rebuilt(tag: str) -> bool:
    return tag.endswith(ALWAYS_REBUILT)

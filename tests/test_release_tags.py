"""``llbgen tag``: image-tools' commit scheme over every file an image loads, and the tree scheme,
on throwaway git repositories holding a copy of the project's images."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

IMAGE_TOOLS = Path("/work/.mirror/cilium+image-tools/repo")


class Repo:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = dict(
            os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_NAME="t",
            GIT_COMMITTER_EMAIL="t@example.invalid",
        )  # fmt: skip
        self.env.pop("WITHOUT_SUFFIX", None)
        self.git("init", "-q")

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.path, env=self.env, check=True, capture_output=True, text=True).stdout

    def commit(self, when: int, message: str = "change") -> str:
        self.git("add", "-A")
        env_date = f"@{when} +0000"
        self.env.update(GIT_AUTHOR_DATE=env_date, GIT_COMMITTER_DATE=env_date)
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "--short", "HEAD").strip()

    def tag(self, image: str, *extra: str, env: dict[str, str] | None = None) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "llbgen", "tag", image, *extra], cwd=self.path, env={**self.env, **(env or {})},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    shutil.copytree(ROOT / "images", tmp_path / "images", ignore=shutil.ignore_patterns("__pycache__"))
    r = Repo(tmp_path)
    r.commit(1700000000, "images")
    return r


def test_commit_tag_is_timestamp_and_short_commit_of_the_last_change(repo: Repo) -> None:
    first = repo.git("rev-parse", "--short", "HEAD").strip()
    assert repo.tag("hello") == f"1700000000-{first}"
    (repo.path / "README").write_text("not an input of any image\n")
    repo.commit(1700000100)
    assert repo.tag("hello") == f"1700000000-{first}"
    (repo.path / "images/hello/greeting.txt").write_text("Hi\n")
    second = repo.commit(1700000200)
    assert repo.tag("hello") == f"1700000200-{second}"


def test_a_helper_or_in_graph_image_change_changes_the_tags_of_the_images_using_it(repo: Repo) -> None:
    first = repo.git("rev-parse", "--short", "HEAD").strip()
    with open(repo.path / "images/sources/debian.py", "a") as f:
        f.write("\n# a change to the shared helpers\n")
    second = repo.commit(1700000300)
    assert repo.tag("bpftool") == f"1700000300-{second}"
    assert repo.tag("llvm") == f"1700000300-{second}"
    assert repo.tag("compilers") == f"1700000300-{second}"  # it imports the helper by path
    assert repo.tag("hello") == f"1700000000-{first}"
    with open(repo.path / "images/compilers/tests.py", "a") as f:
        f.write("\n# a change to the compilers image's directory\n")
    third = repo.commit(1700000400)
    assert repo.tag("bpftool") == f"1700000400-{third}"  # builds compilers in its graph
    assert repo.tag("hello") == f"1700000000-{first}"


CONTEXT_IMAGE = """\
import llbgen

def build(ctx):
    return llbgen.scratch().file(llbgen.copy(llbgen.local("context", {include}), "/", "/"))
"""


def test_files_an_image_reads_from_the_build_context_are_inputs_too(repo: Repo) -> None:
    # maker copies llbgen's source from the context: a change there must give it a new tag
    first = repo.git("rev-parse", "--short", "HEAD").strip()
    for name, include in [("tooling", 'include=["tools/", "setup.cfg"]'), ("everything", "")]:
        (repo.path / "images" / name).mkdir()
        (repo.path / "images" / name / "image.py").write_text(CONTEXT_IMAGE.format(include=include))
    (repo.path / "tools").mkdir()
    (repo.path / "tools/run.py").write_text("print('v1')\n")
    second = repo.commit(1700000500)
    (repo.path / "tools/run.py").write_text("print('v2')\n")
    third = repo.commit(1700000600)
    assert repo.tag("tooling") == f"1700000600-{third}"
    (repo.path / "NOTES").write_text("read only by an image that takes the whole context\n")
    fourth = repo.commit(1700000700)
    assert repo.tag("tooling") == f"1700000600-{third}"
    assert repo.tag("everything") == f"1700000700-{fourth}"
    assert repo.tag("hello") == f"1700000000-{first}"
    assert second != third


def test_uncommitted_changes_give_wip_unless_without_suffix(repo: Repo) -> None:
    first = repo.git("rev-parse", "--short", "HEAD").strip()
    (repo.path / "images/sources/notes.txt").write_text("untracked\n")
    assert repo.tag("bpftool") == f"1700000000-{first}-wip"
    assert repo.tag("hello") == f"1700000000-{first}"
    assert repo.tag("bpftool", env={"WITHOUT_SUFFIX": ""}) == f"1700000000-{first}"


def test_version_prefix_from_version_sh_else_the_definitions_version(repo: Repo) -> None:
    script = repo.path / "images/hello/version.sh"
    script.write_text("#!/bin/sh\necho 2.4.1\n")
    script.chmod(0o755)
    short = repo.commit(1700000500)
    assert repo.tag("hello") == f"2.4.1-1700000500-{short}"
    script.unlink()
    with open(repo.path / "images/hello/image.py", "a") as f:
        f.write('\nVERSION = "9.9"\n')
    short = repo.commit(1700000600)
    assert repo.tag("hello") == f"9.9-1700000600-{short}"


def test_tree_tag_is_a_git_tree_of_exactly_the_inputs(repo: Repo) -> None:
    tree = repo.tag("bpftool", "--scheme", "tree")
    files = set(repo.git("ls-tree", "-r", "--name-only", tree).split())
    expected = set(repo.git("ls-files", "images/bpftool", "images/compilers", "images/compilers-ccache", "images/sources").split())
    assert files == expected
    hello = repo.tag("hello", "--scheme", "tree")
    assert repo.git("rev-parse", f"{hello}:images/hello") == repo.git("rev-parse", "HEAD:images/hello")
    with open(repo.path / "images/sources/debian.py", "a") as f:
        f.write("\n# changed\n")
    assert repo.tag("bpftool", "--scheme", "tree").endswith("-wip")
    repo.commit(1700000700)
    assert repo.tag("bpftool", "--scheme", "tree") not in (tree, tree + "-wip")
    assert repo.tag("hello", "--scheme", "tree") == hello


def test_not_a_git_repository_is_one_line(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "images" / "hello", tmp_path / "images" / "hello")
    proc = subprocess.run(
        [sys.executable, "-m", "llbgen", "tag", "hello"], cwd=tmp_path, capture_output=True, text=True,
        env=dict(os.environ, GIT_CEILING_DIRECTORIES=str(tmp_path.parent)),
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "not in a git work tree" in proc.stderr


@pytest.mark.skipif(not (IMAGE_TOOLS / "HEAD").exists(), reason="no fetched image-tools snapshot on this machine")
def test_same_tag_as_image_tools_make_image_tag(repo: Repo, tmp_path: Path) -> None:
    """Runs image-tools' own script from the fetched snapshot (not part of this repository)."""
    script = tmp_path / "make-image-tag.sh"
    script.write_text(
        subprocess.run(
            ["git", "--git-dir", str(IMAGE_TOOLS), "show", "HEAD:scripts/make-image-tag.sh"],
            check=True, capture_output=True, text=True,
        ).stdout
    )  # fmt: skip

    def theirs(image: str) -> str:
        return subprocess.run(["bash", str(script), f"images/{image}"], cwd=repo.path, env=repo.env,
                              check=True, capture_output=True, text=True).stdout  # fmt: skip

    assert repo.tag("hello") == theirs("hello")
    (repo.path / "images/hello/extra").write_text("x\n")
    assert repo.tag("hello") == theirs("hello") and theirs("hello").endswith("-wip")

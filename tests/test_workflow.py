"""The example CI workflow (.github/workflows/images.yaml), checked as far as it can be here: it
parses, its actions are pinned by commit, its shell is sound, every llbgen command it runs exists
and accepts its flags, pushes happen only on the default branch, and its plan step runs."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from llbgen.cli import parser
from llbgen.llb.errors import UsageError
from tests.conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "images.yaml"
EXPRESSION = re.compile(r"\$\{\{.*?\}\}")
VALUES = {
    "IMAGE": "hello", "REGISTRY": "registry.example/images", "BUILDKIT_HOST": "tcp://buildkit.example:1234",
    "RUNNER_TEMP": "/tmp/runner", "GITHUB_OUTPUT": "/tmp/out", "GITHUB_ENV": "/tmp/env", "GITHUB_PATH": "/tmp/path",
}  # fmt: skip


def workflow() -> dict[Any, Any]:
    return dict(yaml.safe_load(WORKFLOW.read_text()))


def steps() -> list[tuple[str, dict[str, Any]]]:
    return [(job, step) for job, spec in workflow()["jobs"].items() for step in spec["steps"]]


def llbgen_commands(script: str) -> list[list[str]]:
    """The llbgen command lines of a step, continuation lines joined, variables given values."""
    joined = EXPRESSION.sub("X", script.replace("\\\n", " ")).replace("$(", " ( ")
    commands = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        command: list[str] = []
        for word in [*lexer, ";"]:
            if word and set(word) <= set("();|&"):
                if command and command[0] == "llbgen":
                    commands.append([re.sub(r"\$(\w+)", lambda m: VALUES.get(m.group(1), "v"), w) for w in command])
                command = []
            else:
                command.append(word)
    return commands


def test_it_parses_with_both_triggers() -> None:
    doc = workflow()
    triggers = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(triggers) == {"pull_request", "push"}
    assert triggers["push"]["branches"] == ["main"]
    assert doc["permissions"] == {"contents": "read"}


def test_actions_are_pinned_by_commit() -> None:
    used = [step["uses"] for _, step in steps() if "uses" in step]
    assert used
    for ref in used:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), ref


def test_every_llbgen_command_exists_and_accepts_its_flags() -> None:
    seen = set()
    for job, step in steps():
        for argv in llbgen_commands(step.get("run", "")):
            try:
                ns = parser().parse_args(argv[1:])
            except UsageError as exc:
                pytest.fail(f"{job}/{step['name']}: {' '.join(argv)}: {exc}")
            seen.add(ns.command)
    assert seen == {"lint", "plan", "build", "test", "publish"}


def test_the_command_check_catches_a_bad_flag() -> None:
    (argv,) = llbgen_commands('llbgen publish "$IMAGE" --registries "$REGISTRY"')
    with pytest.raises(UsageError):
        parser().parse_args(argv[1:])


def test_shell_of_every_step_passes_shellcheck(tmp_path: Path) -> None:
    for index, (_, step) in enumerate(steps()):
        if "run" not in step:
            continue
        script = tmp_path / f"{index}.sh"
        script.write_text("#!/bin/bash\n" + EXPRESSION.sub("X", step["run"]))
        proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{step['name']}:\n{proc.stdout}"


def test_one_job_per_image_pushing_only_on_the_default_branch() -> None:
    doc = workflow()
    image = doc["jobs"]["image"]
    assert image["needs"] == "plan"
    assert image["strategy"]["matrix"]["image"] == "${{ fromJSON(needs.plan.outputs.images) }}"
    assert doc["env"]["ANY_REGISTRY_USERNAME"] == "${{ secrets.REGISTRY_USERNAME }}"
    assert doc["env"]["ANY_REGISTRY_PASSWORD"] == "${{ secrets.REGISTRY_PASSWORD }}"
    by_name = {step["name"]: step for step in image["steps"]}
    publish, pr = by_name["Publish"], by_name["Build and test"]
    assert "github.event_name == 'push'" in publish["if"] and "default_branch" in publish["if"]
    assert [c[1] for c in llbgen_commands(publish["run"])] == ["publish"]
    assert pr["if"] == "github.event_name == 'pull_request'"
    assert [c[1] for c in llbgen_commands(pr["run"])] == ["build", "test"]
    assert not any("push=true" in " ".join(c) for c in llbgen_commands(pr["run"]))


@pytest.mark.buildkit
def test_the_plan_step_runs(tmp_path: Path, stack: dict[str, str]) -> None:
    """The plan job's Plan step, run as written, in a git repository holding the images."""
    subprocess.run(["cp", "-r", str(ROOT / "images"), str(tmp_path)], check=True)
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@e.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@e.invalid")  # fmt: skip
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "images"]):
        subprocess.run(["git", *command], cwd=tmp_path, env=env, check=True)
    (step,) = [s for _, s in steps() if s.get("id") == "plan"]
    output = tmp_path / "github-output"
    env.update(
        REGISTRY=f"{stack['LLBGEN_REGISTRY']}/llbgen-test-workflow-{os.getpid()}", GITHUB_OUTPUT=str(output),
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
    )  # fmt: skip
    proc = subprocess.run(["bash", "-eo", "pipefail", "-c", step["run"]], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    key, _, value = output.read_text().partition("=")
    assert key == "images" and value.endswith("\n")
    # every image (a registry of its own has none), compilers before the images that build it in
    planned = json.loads(value)
    assert sorted(planned) == sorted(p.parent.name for p in (ROOT / "images").glob("*/image.py"))
    assert planned.index("compilers") < planned.index("bpftool")

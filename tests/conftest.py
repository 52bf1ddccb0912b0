from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKE_DEBIAN = "127.0.0.1:5000/llbgen/debian:trixie@sha256:" + "0" * 64


@attrs.frozen
class Result:
    code: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode()


@attrs.define
class Cli:
    """Runs ``python -m llbgen`` as a user would, in a project directory of its own."""

    cwd: Path
    env: dict[str, str]

    def __call__(self, *args: str, stdin: bytes | None = None) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "llbgen", *args],
            cwd=self.cwd,
            env=self.env,
            input=stdin,
            capture_output=True,
            timeout=120,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr.decode())

    def write_image(self, name: str, source: str) -> Path:
        path = self.cwd / "images" / name / "image.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        return path


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """A project with the repository's images and a bases file pinning a (fake) Debian base."""
    shutil.copytree(ROOT / "images", tmp_path / "images")
    (tmp_path / "stack").mkdir()
    (tmp_path / "stack" / "bases.json").write_text(json.dumps({"debian:trixie": FAKE_DEBIAN}))
    env = dict(os.environ, LLBGEN_STACK_DIR=str(tmp_path / "stack"))
    return Cli(tmp_path, env)


@pytest.fixture
def buildctl() -> Callable[..., subprocess.CompletedProcess[bytes]]:
    exe = shutil.which("buildctl")
    if exe is None:
        pytest.fail("buildctl is not installed: run scripts/install-buildkit (the test command does)")

    def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([exe, *args], input=stdin, capture_output=True, timeout=60)

    return run

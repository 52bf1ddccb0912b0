"""The same definition published from two fresh daemons (empty state each) gives the same image
digest: SOURCE_DATE_EPOCH is the last commit of the image's inputs, and file timestamps are
rewritten to it."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from benchmarks.private_daemon import private_daemon
from tests.conftest import ROOT
from tests.test_release_publish import Project

pytestmark = pytest.mark.buildkit


def test_two_fresh_daemons_publish_the_same_digest(tmp_path: Path, stack: dict[str, str]) -> None:
    repo = Project(tmp_path / "repo", stack)
    shutil.copytree(ROOT / "images" / "hello", tmp_path / "repo" / "images" / "hello")
    repo.commit()
    prefix = f"{stack['LLBGEN_REGISTRY']}/llbgen-test-{uuid.uuid4().hex[:12]}"
    tag = repo.llbgen("tag", "hello").stdout.strip()
    digests = []
    for name in ("first", "second"):
        # a short path: the daemon's unix socket lives in it
        state = Path(f"/tmp/llbgen-fresh-{uuid.uuid4().hex[:8]}")
        try:
            with private_daemon(state) as address:
                run = repo.llbgen("publish", "hello", "--registry", f"{prefix}-{name}", "--addr", address, "--progress", "plain")
        finally:
            shutil.rmtree(state, ignore_errors=True)
        assert run.returncode == 0, run.stderr[-3000:]
        assert f"hello {tag}: built and pushed" in run.stdout
        pinned = repo.llbgen("pin", f"{prefix}-{name}/hello:{tag}")
        assert pinned.returncode == 0, pinned.stderr
        digests.append(pinned.stdout.strip().split("@")[1])
    assert digests[0] == digests[1]

"""CI recipes: llbgen against a remote BuildKit over tcp:// with TLS and client certificates
(the stack's second daemon, scripts/stack-tls), and CI without Python (a bundle built through
llbgen's frontend image)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_frontend import EPOCH, PLATFORMS, base_ref, frontend_image  # noqa: F401 - fixtures
from tests.test_release_publish import Project, registry
from tests.test_release_publish import repo as repo  # noqa: F401 - the fixture

pytestmark = pytest.mark.buildkit


def tls_flags(stack: dict[str, str], *, client: bool = True) -> list[str]:
    if "BUILDKIT_TLS_HOST" not in stack:
        pytest.fail("the stack has no TLS daemon: run scripts/stack-up (it runs scripts/stack-tls)")
    flags = ["--addr", stack["BUILDKIT_TLS_HOST"], "--tlscacert", stack["BUILDKIT_TLS_CACERT"]]
    if client:
        flags += ["--tlscert", stack["BUILDKIT_TLS_CERT"], "--tlskey", stack["BUILDKIT_TLS_KEY"]]
    return flags


def test_publish_on_a_remote_buildkit_over_tls(repo: Project, stack: dict[str, str]) -> None:  # noqa: F811
    reg = registry()
    repo.env.pop("BUILDKIT_HOST")
    tag = repo.llbgen("tag", "motd").stdout.strip()
    refused = repo.llbgen("publish", "--registry", reg, *tls_flags(stack, client=False), "--progress", "plain")
    assert refused.returncode == 1
    assert refused.stdout.startswith(f"motd {tag}: failed"), refused.stdout
    run = repo.llbgen("publish", "--registry", reg, *tls_flags(stack), "--progress", "plain")
    assert run.returncode == 0, run.stderr
    assert f"motd {tag}: built and pushed (2 checks passed; sha256:" in run.stdout
    assert repo.llbgen("plan", "--registry", reg).stdout.startswith(f"motd {tag}: skip")


def test_a_bundle_builds_through_the_frontend_image_to_the_same_digest(
    stack: dict[str, str], frontend_image: str, base_ref: str, tmp_path: Path  # noqa: F811
) -> None:
    """CI without Python: ``llbgen llb --bundle`` once, then plain buildctl with llbgen's frontend."""
    env = dict(os.environ, BUILDKIT_HOST=stack["BUILDKIT_HOST"], LLBGEN_CONFIG=stack["LLBGEN_CONFIG"])
    llbgen = [sys.executable, "-m", "llbgen", "--images", str(ROOT / "images")]
    pins = ["--arg", f"base:debian:trixie={base_ref}", "--arg", f"SOURCE_DATE_EPOCH={EPOCH}"]
    bundle = tmp_path / "bundle"
    wrote = subprocess.run(
        [*llbgen, "llb", "hello", "--platform", PLATFORMS, *pins, "--bundle", str(bundle)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert wrote.returncode == 0, wrote.stderr
    assert sorted(p.name for p in bundle.iterdir()) == [
        "linux-amd64.config.json", "linux-amd64.pb", "linux-arm64.config.json", "linux-arm64.pb", "llbgen-bundle.json",
    ]  # fmt: skip
    assert json.loads((bundle / "linux-arm64.config.json").read_text())["config"]["Entrypoint"] == ["/usr/local/bin/hello"]

    built = subprocess.run(
        [*llbgen, "build", "hello", "--platform", PLATFORMS, *pins, "--local", f"context={ROOT}", "--progress", "plain",
         "-o", f"type=oci,dest={tmp_path / 'llbgen.tar'},source-date-epoch={EPOCH}", "--metadata-file", str(tmp_path / "llbgen.json")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    frontend = subprocess.run(
        ["buildctl", "build", "--progress", "plain", "--frontend", "gateway.v0", "--opt", f"source={frontend_image}",
         "--local", f"dockerfile={bundle}", "--local", f"context={ROOT}", "--opt", f"build-arg:SOURCE_DATE_EPOCH={EPOCH}",
         "--output", f"type=oci,dest={tmp_path / 'frontend.tar'}", "--metadata-file", str(tmp_path / "frontend.json")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert frontend.returncode == 0, frontend.stderr[-3000:]
    digest = json.loads((tmp_path / "llbgen.json").read_text())["containerimage.digest"]
    assert json.loads((tmp_path / "frontend.json").read_text())["containerimage.digest"] == digest
    with tarfile.open(tmp_path / "frontend.tar") as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        nested = json.load(tar.extractfile("blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]))  # type: ignore[arg-type]
    assert sorted(m["platform"]["architecture"] for m in nested["manifests"]) == ["amd64", "arm64"]


def test_raw_llb_says_it_carries_no_image_config(stack: dict[str, str], base_ref: str) -> None:  # noqa: F811
    proc = subprocess.run(
        [sys.executable, "-m", "llbgen", "--images", str(ROOT / "images"), "llb", "hello", "--platform", "linux/arm64",
         "--arg", f"base:debian:trixie={base_ref}"],
        cwd=ROOT, capture_output=True, timeout=60, env=dict(os.environ),
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout
    assert "carries no image config" in proc.stderr.decode()

"""A multi-platform registry cache exported by one daemon is used whole by a fresh daemon.

The graph has the shape that made bpftool's static libelf run again on every fresh daemon: both
platforms' steps run on the build platform in one shared step's result, and each platform's second
step mounts its first step's output and a script file. A fresh daemon with the cache must run none
of it, and give the image (same layers, same digest) the exporting daemon gave.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from benchmarks.oci_tarball import platform_images
from benchmarks.private_daemon import private_daemon
from benchmarks.progress_steps import steps_run
from tests.conftest import Cli

pytestmark = pytest.mark.buildkit

IMAGE = '''
import llbgen

PLATFORMS = ("linux/amd64", "linux/arm64")
PART = "set -eu\\necho {token} $1 >/out/part\\n"


def build(ctx):
    debian = ctx.helper("sources/debian")
    shared = ctx.base_image("debian:trixie", platform=ctx.build_platform).run(
        "sh -c 'echo {token} >/shared'", network="none", name="shared step"
    ).root
    arch = ctx.target_platform.architecture
    part = shared.run(
        ["sh", "/llbgen/part.sh", arch],
        mounts=[debian.script("part.sh", PART), llbgen.bind("/out", llbgen.scratch())],
        network="none",
        name=f"first part for {{arch}}",
    ).mount("/out")
    whole = shared.run(
        "sh -c 'cat /part/part /shared >/out/whole'",
        mounts=[llbgen.bind("/part", part, readonly=True), llbgen.bind("/out", llbgen.scratch())],
        network="none",
        name=f"second part for {{arch}}",
    ).mount("/out")
    return llbgen.scratch().file(llbgen.copy(whole, "/whole", "/whole"), name=f"result for {{arch}}")
'''

STEPS = {"shared step", "script part.sh"} | {
    f"{step} for {arch}" for step in ("first part", "second part", "result") for arch in ("amd64", "arm64")
}
EPOCH = "1700000000"


def build(project: Cli, tmp_path: Path, name: str, *args: str) -> tuple[str, str, dict[str, list[str]]]:
    """Builds ``cached`` for both platforms into an OCI tarball: its rawjson progress, its digest
    and the layers (diff ids) of each platform's image."""
    tarball, metadata = tmp_path / f"{name}.tar", tmp_path / f"{name}.json"
    result = project(
        "build", "cached", "--platform", "linux/amd64,linux/arm64", "--progress", "rawjson",
        "--arg", f"SOURCE_DATE_EPOCH={EPOCH}", "--metadata-file", str(metadata),
        "-o", f"type=oci,dest={tarball},rewrite-timestamp=true", *args,
    )  # fmt: skip
    assert result.code == 0, result.stderr[-3000:]
    digest = json.loads(metadata.read_text())["containerimage.digest"]
    return result.stderr, digest, {arch: layers for arch, (layers, _) in platform_images(tarball).items()}


def test_fresh_daemon_runs_no_step_of_a_multi_platform_registry_cache(
    project: Cli, stack: dict[str, str], tmp_path: Path
) -> None:
    token = uuid.uuid4().hex
    project.write_image("cached", IMAGE.format(token=token))
    ref = f"{stack['LLBGEN_REGISTRY']}/llbgen-test/cache:{token[:12]}"
    exported, digest, layers = build(project, tmp_path, "exported", "--cache-to", f"type=registry,ref={ref},mode=max")
    assert set(steps_run(exported)) == STEPS  # a new token: nothing was cached before

    state = Path(f"/tmp/llbgen-fresh-{token[:8]}")  # short: the daemon's socket lives in it
    try:
        with private_daemon(state) as address:
            imported, imported_digest, imported_layers = build(
                project, tmp_path, "imported", "--addr", address, "--cache-from", f"type=registry,ref={ref}"
            )
    finally:
        shutil.rmtree(state, ignore_errors=True)
    assert all(f'"name":"{step}"' in imported for step in STEPS)
    assert steps_run(imported) == []
    assert imported_layers == layers and len(layers) == 2
    # The configs name the layers after the steps, not after where the daemon got them.
    assert imported_digest == digest

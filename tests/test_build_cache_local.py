"""``--cache-to type=local`` / ``--cache-from type=local`` against real daemons: the stack's for the
export, a fresh private one for the import, so a CACHED step can only come from the directory."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.test_build_lifecycle import private_daemon, step_lines  # noqa: F401 (a fixture)

pytestmark = pytest.mark.buildkit  # every test here builds on the stack's daemon

IMAGE = '''
import llbgen

def build(ctx):
    return ctx.base_image("debian:trixie").run("sh -c 'echo {stamp} > /stamp'").root
'''

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


def blob(layout: Path, descriptor: dict[str, Any]) -> bytes:
    """The blob a descriptor names, checked against its digest and size."""
    algorithm, _, encoded = descriptor["digest"].partition(":")
    assert algorithm == "sha256"
    data = (layout / "blobs" / algorithm / encoded).read_bytes()
    assert hashlib.sha256(data).hexdigest() == encoded
    assert len(data) == descriptor["size"]
    return data


def tags(layout: Path) -> dict[str, str]:
    index = json.loads((layout / "index.json").read_text())
    return {m["annotations"][REF_NAME]: m["digest"] for m in index["manifests"]}


def test_local_cache_export_then_import_on_a_fresh_daemon(project: Cli, private_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    address, _ = private_daemon
    cache = tmp_path / "cache"
    project.write_image("cachable", IMAGE.format(stamp=uuid.uuid4().hex))
    export = project(
        "build", "cachable", "--platform", "linux/amd64", "--progress", "plain",
        "--cache-to", f"type=local,dest={cache},mode=max",
    )  # fmt: skip
    assert export.code == 0, export.stderr
    assert step_lines(export.stderr, "> /stamp")[-1].split()[1] == "DONE"
    assert "exporting cache to client directory" in export.stderr

    # A valid OCI image layout whose index tags the cache manifest "latest".
    assert json.loads((cache / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((cache / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    [entry] = index["manifests"]
    assert entry["mediaType"] == OCI_MANIFEST and entry["annotations"] == {REF_NAME: "latest"}
    manifest = json.loads(blob(cache, entry))
    assert manifest["config"]["mediaType"] == "application/vnd.buildkit.cacheconfig.v0"
    config = json.loads(blob(cache, manifest["config"]))
    assert config["records"] and config["layers"]
    layers = manifest["layers"]
    assert len(layers) >= 2, "mode=max exports the base's layer and the run step's"
    for layer in layers:
        blob(cache, layer)
    stored = {p.name for p in (cache / "blobs" / "sha256").iterdir()}
    expected = {d["digest"].split(":")[1] for d in [entry, manifest["config"], *layers]}
    assert stored == expected
    assert sorted(p.name for p in cache.iterdir()) == ["blobs", "index.json", "ingest", "oci-layout"]
    assert list((cache / "ingest").iterdir()) == [], "no write was left unfinished"

    # Another export to the same directory under another tag keeps "latest" as it was.
    again = project(
        "build", "cachable", "--platform", "linux/amd64", "--progress", "plain",
        "--cache-to", f"type=local,dest={cache},tag=second",
    )  # fmt: skip
    assert again.code == 0, again.stderr
    after = tags(cache)
    assert set(after) == {"latest", "second"} and after["latest"] == entry["digest"]

    # A daemon that never ran the step finds it in the directory.
    imported = project(
        "build", "cachable", "--platform", "linux/amd64", "--progress", "plain",
        "--addr", address, "--cache-from", f"type=local,src={cache}",
    )  # fmt: skip
    assert imported.code == 0, imported.stderr
    assert "importing cache manifest" in imported.stderr
    assert step_lines(imported.stderr, "> /stamp")[-1].split()[1] == "CACHED"
    assert "warning" not in imported.stderr


def test_missing_local_cache_source_is_a_warning(project: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-cache"
    project.write_image("cachable", IMAGE.format(stamp=uuid.uuid4().hex))
    result = project(
        "build", "cachable", "--platform", "linux/amd64", "--progress", "plain",
        "--cache-from", f"type=local,src={missing}",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    warning = result.stderr.splitlines()[0]
    assert warning == f"llbgen: warning: local cache import at {missing} skipped: {missing} does not exist"
    assert "importing cache manifest" not in result.stderr
    assert step_lines(result.stderr, "> /stamp")[-1].split()[1] == "DONE"
    assert not missing.exists()

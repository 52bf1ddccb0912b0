"""``llbgen sources push``: keep every pinned Debian source tarball in a registry.

Debian's mirror keeps only current revisions, so a pinned source stops downloading one day. Each
tarball the definitions pin (the ``fetch-debian-source.sh`` steps of their graphs) is fetched
through that very step (so from the build cache when it ran before), checked against its pin, and
stored in ``R/sources`` as an OCI artifact: one layer, the tarball itself, so that its blob is
addressed by the pinned sha256, under the tag ``sha256-<hex>`` (which keeps it from garbage
collection). Builds with ``--arg SOURCES_REGISTRY=R/sources`` download that blob when the mirror
no longer has the pin (``images/sources/debian.py``): the same bytes, the same checksum.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from llbgen.client.connection import TLSConfig
from llbgen.config import Config, DaemonSettings
from llbgen.flags import tls_config
from llbgen.client.outputs import Output
from llbgen.client.options import BuildOptions
from llbgen.client.run import build
from llbgen.llb.errors import LLBGenError, UsageError
from llbgen.llb.platform import Platform
from llbgen.llb.state import State
from llbgen.pb import ops_pb2
from llbgen.project import BuildContext, ImageDefinition, Project
from llbgen.release.inputs import image_inputs
from llbgen.release.lint import DEBIAN_FETCH, graphs
from llbgen.release.plan import select
from llbgen.release.registry import Registry, Repository

ARTIFACT_TYPE = "application/vnd.llbgen.source-tarball.v1"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
HELPER = "sources/debian"
REPOSITORY = "sources"


@attrs.frozen
class Pin:
    package: str
    version: str
    sha256: str
    hint: str  # the step's PIN_HINT, so that the step is the one the image builds (and cached)

    def __str__(self) -> str:
        return f"{self.package} {self.version}"


def pins(project: Project, names: Sequence[str]) -> list[Pin]:
    """The Debian source pins of the images' graphs, each once."""
    found: dict[tuple[str, str, str], Pin] = {}
    for name in select(project, names):
        for definition in graphs(image_inputs(project, name)):
            for _, data in definition:
                found.update((attrs.astuple(p)[:3], p) for p in _fetches(ops_pb2.Op.FromString(data)))
    return sorted(found.values(), key=str)


def _fetches(op: ops_pb2.Op) -> Iterator[Pin]:
    if op.WhichOneof("op") != "exec":
        return
    args = list(op.exec.meta.args)
    env = dict(e.partition("=")[::2] for e in op.exec.meta.env)
    for i, arg in enumerate(args):
        if arg.endswith(DEBIAN_FETCH) and len(args) >= i + 4:
            yield Pin(args[i + 1], args[i + 2], args[i + 3], env.get("PIN_HINT", ""))


@attrs.define
class _FetchProject(Project):
    """The project plus one pseudo-image: the download step of one pin."""

    pin: Pin | None = attrs.field(default=None, kw_only=True)

    def definition(self, name: str) -> ImageDefinition:
        if self.pin is not None and name == f"source {self.pin}":
            return ImageDefinition(name, self.root / HELPER, (Platform.host(),), "", self._files)
        return super().definition(name)

    def _files(self, ctx: BuildContext) -> State:
        assert self.pin is not None
        debian = self.helper(HELPER)
        pin = self.pin
        source = debian.source_package(ctx, pin.package, pin.version, orig_sha256=pin.sha256, pin=pin.hint)
        files = source.files
        assert isinstance(files, State)
        return files


def fetch(
    project: Project, pin: Pin, progress: str, address: str | None, tls: TLSConfig, daemon: DaemonSettings
) -> tuple[bytes, str]:
    """The tarball of ``pin`` (checked against it) and its file name."""
    fetcher = _FetchProject(project.root, project.bases_file, project.base_pins, pin=pin)
    with tempfile.TemporaryDirectory(prefix="llbgen-sources-") as tmp:
        build(
            fetcher,
            BuildOptions(
                image=f"source {pin}", platforms=[Platform.host()], outputs=[Output("local", {}, tmp)],
                progress=progress, address=address, tls=tls, daemon=daemon,
            ),
        )  # fmt: skip
        tarballs = sorted(Path(tmp).glob(f"{pin.package}_{pin.version}.orig.tar.*"))
        if not tarballs:
            raise LLBGenError(f"the download of {pin} gave no orig tarball")
        data = tarballs[0].read_bytes()
    if hashlib.sha256(data).hexdigest() != pin.sha256:
        raise LLBGenError(f"{tarballs[0].name} does not have the pinned sha256 {pin.sha256}")
    return data, tarballs[0].name


def tag_of(sha256: str) -> str:
    return f"sha256-{sha256}"


def push_artifact(registry: Registry, repo: Repository, data: bytes, filename: str) -> str:
    """Stores ``data`` as a one-layer OCI artifact tagged ``sha256-<hex>``; the manifest's digest."""
    blob = registry.put_blob(repo, data)
    empty = registry.put_blob(repo, b"{}")
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_TYPE, "digest": empty, "size": 2, "data": base64.b64encode(b"{}").decode()},
        "layers": [
            {
                "mediaType": "application/octet-stream",
                "digest": blob,
                "size": len(data),
                "annotations": {"org.opencontainers.image.title": filename},
            }
        ],
    }
    body = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
    return registry.put_manifest(repo, tag_of(blob.removeprefix("sha256:")), body, MANIFEST_TYPE)


def push_sources(project: Project, ns: argparse.Namespace, config: Config) -> int:
    if not ns.registry:
        raise UsageError("name at least one --registry (e.g. --registry 127.0.0.1:5000/llbgen)")
    tls = tls_config(ns)
    found = pins(project, ns.names)
    if not found:
        print("llbgen: the definitions pin no Debian source package")
        return 0
    failed = False
    with Registry() as registry:
        repos = [Repository.parse(f"{r.rstrip('/')}/{REPOSITORY}")[0] for r in ns.registry]
        for pin in found:
            missing = [r for r in repos if registry.manifest_digest(f"{r}:{tag_of(pin.sha256)}") is None]
            if not missing:
                print(f"{pin}: present in {', '.join(map(str, repos))}")
                continue
            try:
                data, filename = fetch(project, pin, ns.progress, ns.addr, tls, config.daemon)
                for repo in missing:
                    push_artifact(registry, repo, data, filename)
            except LLBGenError as exc:
                print(f"llbgen: {pin}: {exc}", file=sys.stderr)
                print(f"{pin}: failed")
                failed = True
                continue
            print(f"{pin}: pushed {filename} sha256:{pin.sha256} to {', '.join(map(str, missing))}")
    return 1 if failed else 0

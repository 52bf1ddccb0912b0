"""A build on a builder with several nodes: each platform on its own node, one result.

Each requested platform goes to the first node that lists it (buildx's rule; a node with no
platforms configured is asked what its workers build). Every node's part is an ordinary
``llbgen build`` of those platforms on that node, all at once, one session each; the definitions
are compiled against the node's own platform as ``ctx.build_platform`` (its first worker
platform), so a native arm64 node compiles arm64 natively. One progress view names the node on
every step; the first failure cancels the other nodes and names its node.

The parts become one result: ``type=image,push=true`` has each node push by digest, then an index
of all platforms is put under every name; ``type=oci``/``docker``/``tar``/``local`` are assembled
here, on the client, from what each node exported (buildx refuses those for multi-node builds).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from llbgen.client import buildx
from llbgen.client.connection import wait
from llbgen.client.outputs import Output
from llbgen.client.registry import INDEX, Reference, Registry
from llbgen.llb.errors import LLBGenError, UsageError
from llbgen.llb.platform import Platform
from llbgen.pb import control_pb2
from llbgen.progress import Printer, StatusTracker, open_printer

if TYPE_CHECKING:
    from llbgen.client.options import BuildOptions
    from llbgen.project import Project

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


@attrs.frozen
class Part:
    """The platforms one node builds."""

    node: buildx.Node
    platforms: tuple[Platform, ...]


def assign(builder: buildx.Builder, platforms: Sequence[Platform], connections: Mapping[str, Any]) -> list[Part]:
    """Each platform on the first node that lists it; nodes without configured platforms are probed.

    ``connections``: node name -> connection, for the probe.
    """
    probed: dict[str, tuple[Platform, ...]] = {}

    def node_platforms(node: buildx.Node) -> tuple[Platform, ...]:
        if node.platforms:
            return node.platforms
        if node.name not in probed:
            probed[node.name] = connections[node.name].probe().platforms
        return probed[node.name]

    chosen: dict[str, list[Platform]] = {}
    for platform in platforms:
        node = next((n for n in builder.nodes if platform in n.platforms), None)
        if node is None:
            node = next((n for n in builder.nodes if platform in node_platforms(n)), None)
        if node is None:
            raise LLBGenError(
                f"no node of builder {builder.name!r} builds {platform}: "
                + "; ".join(f"{n.name}: {', '.join(map(str, node_platforms(n)))}" for n in builder.nodes)
            )
        chosen.setdefault(node.name, []).append(platform)
    return [Part(n, tuple(chosen[n.name])) for n in builder.nodes if n.name in chosen]


class _NodePrinter:
    """One node's view of the shared progress printer: its steps named ``[node] step``."""

    def __init__(self, printer: Printer, label: str, lock: threading.Lock) -> None:
        self._printer = printer
        self._label = label
        self._lock = lock
        self.tracker: StatusTracker = printer.tracker

    def update(self, status: control_pb2.StatusResponse) -> None:
        labelled = control_pb2.StatusResponse()
        labelled.CopyFrom(status)
        for vertex in labelled.vertexes:
            vertex.name = f"[{self._label}] {vertex.name}"
        with self._lock:
            self._printer.update(labelled)

    def close(self) -> None:
        pass


if TYPE_CHECKING:
    #: ``llbgen.client.run.build``, passed in by it (a node's part is an ordinary build on that node).
    BuildOnNode = Callable[[Project, BuildOptions, buildx.NodeConnection, Printer | None], dict[str, str]]


def build_on_nodes(
    project: Project, options: BuildOptions, builder: buildx.Builder, build: BuildOnNode
) -> dict[str, str]:
    """Each node builds its platforms (``build`` on its connection), the results put together."""
    buildx.boot(builder)
    connections = {n.name: buildx.NodeConnection(builder, n) for n in builder.nodes}
    try:
        if not options.platforms:
            first = builder.nodes[0]
            return build(project, attrs.evolve(options, builder=None), connections.pop(first.name), None)
        parts = assign(builder, options.platforms, connections)
        if len(parts) == 1:  # one node builds everything: an ordinary build there
            only = attrs.evolve(options, platforms=list(parts[0].platforms))
            return build(project, only, connections.pop(parts[0].node.name), None)
        # Load the definitions here, once: the nodes' threads then only compile them.
        project.state(options.image, project.context(parts[0].platforms[0], options.args))
        with tempfile.TemporaryDirectory(prefix="llbgen-nodes-") as tmp:
            plans = [_plan(part, options.outputs, len(options.platforms), Path(tmp)) for part in parts]
            printer = open_printer(options.progress, sys.stderr)
            lock = threading.Lock()
            try:
                responses = _run_parts(project, options, parts, plans, connections, printer, lock, build)
            finally:
                printer.close()
            return _assemble(options.outputs, parts, plans, responses)
    finally:
        for connection in connections.values():
            connection.close()


def _run_parts(
    project: Project,
    options: BuildOptions,
    parts: Sequence[Part],
    plans: Sequence[Sequence[Output]],
    connections: Mapping[str, buildx.NodeConnection],
    printer: Printer,
    lock: threading.Lock,
    build: BuildOnNode,
) -> list[dict[str, str]]:
    """Every node's part at once; the first failure cancels the others (their connections close)."""
    failed = threading.Event()
    first_error: list[tuple[str, BaseException]] = []

    def one(part: Part, outputs: Sequence[Output]) -> dict[str, str]:
        node_options = attrs.evolve(
            options, platforms=list(part.platforms), outputs=list(outputs), builder=None,
            # each node its own cache mounts: <tag>-<its platform>
            cache_mounts_from=options.cache_mounts_from and options.cache_mounts_from.for_node(part.platforms[0]),
            cache_mounts_to=options.cache_mounts_to and options.cache_mounts_to.for_node(part.platforms[0]),
        )  # fmt: skip
        try:
            return build(
                project, node_options, connections[part.node.name], _NodePrinter(printer, part.node.name, lock)
            )
        except BaseException as exc:
            with lock:
                if not failed.is_set():
                    failed.set()
                    first_error.append((part.node.name, exc))
                    for name, connection in connections.items():
                        if name != part.node.name:
                            connection.close()  # the daemon cancels a build whose client went away
            raise

    pool = futures.ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="node")
    submitted = [pool.submit(one, part, outputs) for part, outputs in zip(parts, plans)]
    try:
        for future in submitted:
            try:
                wait(future)
            except Exception:  # recorded in first_error by the node that failed first
                pass
    except KeyboardInterrupt:
        for connection in connections.values():
            connection.close()
        raise
    finally:
        pool.shutdown(wait=True)
    if first_error:
        name, exc = first_error[0]
        builder = connections[name].builder.name
        error = LLBGenError(f"node {name} of builder {builder!r}: {exc}")
        error.exit_code = getattr(exc, "exit_code", 1)
        raise error
    return [f.result() for f in submitted]


# -- what each node exports ---------------------------------------------------------------------


def _plan(part: Part, outputs: Sequence[Output], total: int, tmp: Path) -> list[Output]:
    """The node's exporters for its share of each requested output."""
    plan = []
    for index, output in enumerate(outputs):
        part_file = str(tmp / f"{part.node.name}-{index}.tar")
        if output.type == "image":
            if output.attrs.get("push") != "true":
                raise UsageError(
                    "a build on several nodes keeps no image on any one of them: use type=image,push=true "
                    "(or type=oci,dest=FILE)"
                )
            names = [Reference.parse(n.strip()).name for n in output.attrs["name"].split(",") if n.strip()]
            attrs_ = dict(output.attrs, name=",".join(dict.fromkeys(names)), **{"push-by-digest": "true"})
            plan.append(Output("image", attrs_))
        elif output.type in ("oci", "docker"):
            plan.append(Output("oci", dict(output.attrs), part_file))
        elif output.type == "tar":
            plan.append(Output("tar", dict(output.attrs), part_file))
        elif output.type == "local":
            assert output.dest is not None
            dest = output.dest if len(part.platforms) > 1 or total == 1 else os.path.join(output.dest, part.platforms[0].id)
            plan.append(Output("local", dict(output.attrs), dest))
        else:
            raise UsageError(f"--output type={output.type} is not supported on several nodes")
    return plan


# -- one result ---------------------------------------------------------------------------------


def _assemble(
    outputs: Sequence[Output],
    parts: Sequence[Part],
    plans: Sequence[Sequence[Output]],
    responses: Sequence[Mapping[str, str]],
) -> dict[str, str]:
    result: dict[str, str] = {
        "llbgen.nodes": json.dumps({p.node.name: [str(x) for x in p.platforms] for p in parts}),
    }
    for index, output in enumerate(outputs):
        if output.type == "image":
            result.update(_push_index(output, parts, responses))
        elif output.type in ("oci", "docker"):
            layouts = [_read_tar(Path(plan[index].dest or "")) for plan in plans]
            data, digest = _oci_archive(output, parts, layouts)
            _write(output.dest or "-", data)
            result["containerimage.digest"] = digest
        elif output.type == "tar":
            _write(output.dest or "-", _merged_tar(parts, [Path(plan[index].dest or "") for plan in plans]))
    return result


def _descriptor(response: Mapping[str, str]) -> dict[str, Any]:
    encoded = response.get("containerimage.descriptor")
    if encoded:
        return dict(json.loads(base64.b64decode(encoded)))
    raise LLBGenError("the node's exporter returned no image descriptor")


def _push_index(output: Output, parts: Sequence[Part], responses: Sequence[Mapping[str, str]]) -> dict[str, str]:
    names = [Reference.parse(n.strip()) for n in output.attrs["name"].split(",") if n.strip()]
    first = names[0]
    registry = Registry(first.host)
    manifests: list[dict[str, Any]] = []
    for part, response in zip(parts, responses):
        descriptor = _descriptor(response)
        if descriptor.get("mediaType") == INDEX:  # a node with several platforms pushed an index
            _, body = registry.get_manifest(first.repository, descriptor["digest"])
            manifests += json.loads(body)["manifests"]
        else:
            manifests.append(_entry(descriptor, part.platforms[0]))
    body, digest = _index(manifests)
    for ref in names:
        Registry(ref.host).put_manifest(ref.repository, ref.tag or ref.digest or digest, INDEX, body)
    descriptor = {"mediaType": INDEX, "digest": digest, "size": len(body)}
    return {
        "containerimage.digest": digest,
        "containerimage.descriptor": base64.b64encode(json.dumps(descriptor).encode()).decode(),
        "image.name": ",".join(f"{r.name}:{r.tag}" if r.tag else r.name for r in names),
    }


def _entry(descriptor: Mapping[str, Any], platform: Platform) -> dict[str, Any]:
    """An index's entry for a node's single-platform manifest."""
    keep = ("mediaType", "digest", "size")
    return {**{k: descriptor[k] for k in keep}, "platform": platform.to_json()}


def _index(manifests: Sequence[Mapping[str, Any]]) -> tuple[bytes, str]:
    """An OCI index of ``manifests``: its bytes and digest."""
    body = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": list(manifests)}, separators=(",", ":"))
    return body.encode(), "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def _blob_path(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


def _read_tar(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _blob(layout: Mapping[str, bytes], digest: str) -> bytes:
    return layout[_blob_path(digest)]


def _oci_archive(output: Output, parts: Sequence[Part], layouts: Sequence[Mapping[str, bytes]]) -> tuple[bytes, str]:
    """One OCI layout (plus docker's manifest.json for type=docker) holding every node's platforms."""
    blobs: dict[str, bytes] = {}
    manifests: list[dict[str, Any]] = []
    annotations: dict[str, str] = {}
    for part, layout in zip(parts, layouts):
        blobs.update({k: v for k, v in layout.items() if k.startswith("blobs/")})
        top = json.loads(layout["index.json"])["manifests"][0]
        annotations.update(top.get("annotations") or {})
        if top.get("mediaType") == INDEX:
            manifests += json.loads(_blob(layout, top["digest"]))["manifests"]
        else:
            manifests.append(_entry(top, part.platforms[0]))
    body, digest = _index(manifests)
    blobs[_blob_path(digest)] = body
    top = {"mediaType": INDEX, "digest": digest, "size": len(body)}
    if annotations:
        top["annotations"] = annotations
    files = {"oci-layout": OCI_LAYOUT, "index.json": json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [top]}).encode()}
    if output.type == "docker":
        names = [n for n in output.attrs.get("name", "").split(",") if n]
        entries = []
        for i, m in enumerate(manifests):
            manifest = json.loads(blobs[_blob_path(m["digest"])])
            entries.append(
                {
                    "Config": _blob_path(manifest["config"]["digest"]),
                    "RepoTags": names if i == 0 else [],
                    "Layers": [_blob_path(layer["digest"]) for layer in manifest["layers"]],
                }
            )
        files["manifest.json"] = json.dumps(entries).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ["oci-layout", "index.json", *(["manifest.json"] if "manifest.json" in files else [])]:
            _add(tar, name, files[name])
        for name in sorted(blobs):
            _add(tar, name, blobs[name])
    return buffer.getvalue(), digest


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _merged_tar(parts: Sequence[Part], paths: Sequence[Path]) -> bytes:
    """type=tar of several platforms: each platform's files under ``os_arch/``, as BuildKit lays them out."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as out:
        for part, path in zip(parts, paths):
            prefix = f"{part.platforms[0].id}/" if len(part.platforms) == 1 else ""
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    data = tar.extractfile(member) if member.isfile() else None
                    member.name = prefix + member.name
                    if member.islnk():
                        member.linkname = prefix + member.linkname
                    out.addfile(member, data)
    return buffer.getvalue()


def _write(dest: str, data: bytes) -> None:
    if dest == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    Path(dest).write_bytes(data)

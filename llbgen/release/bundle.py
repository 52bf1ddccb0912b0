"""Bundles: an image's marshalled definitions and image configs, for CI without Python.

``llbgen llb IMAGE --platform P1,P2 --bundle DIR`` writes, for each platform, the binary
``pb.Definition`` and the image config that ``llbgen build`` would send, and ``llbgen-bundle.json``
listing them. llbgen's frontend image builds such a directory as it is (``buildctl build
--frontend gateway.v0 --opt source=<frontend image> --local dockerfile=DIR``), without evaluating
any Python, and returns each platform's result with its config: the image ``llbgen build`` makes,
to the digest. Raw ``llbgen llb`` output has no image config (BuildKit's LLB carries none).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from llbgen.client.build import Target
from llbgen.client.imageconfig import image_config
from llbgen.llb.definition import Definition, marshal
from llbgen.llb.errors import LLBGenError, UsageError
from llbgen.llb.graph import Metadata, ProgressGroup
from llbgen.llb.platform import Platform
from llbgen.pb import ops_pb2
from llbgen.project import Project

BUNDLE_FILE = "llbgen-bundle.json"
FORMAT = 1


def _stem(platform: Platform) -> str:
    return str(platform).replace("/", "-")


def write_bundle(
    project: Project, image: str, platforms: Sequence[Platform], args: Mapping[str, str], dest: Path, native: Platform
) -> list[Path]:
    """Writes the bundle of ``image`` into ``dest``; the files written."""
    dest.mkdir(parents=True, exist_ok=True)
    entries, written = [], []
    for platform in platforms:
        state = project.state(image, project.context(platform, args, native))
        definition = marshal(state, platform=platform, local_unique_id=project.local_unique_id)
        if not definition.ops:
            raise LLBGenError(f"image {image!r} is empty (scratch): there is nothing to build")
        stem = _stem(platform)
        (dest / f"{stem}.pb").write_bytes(definition.serialize())
        (dest / f"{stem}.config.json").write_text(json.dumps(image_config(state, platform), indent=1) + "\n")
        entries.append({"platform": str(platform), "definition": f"{stem}.pb", "config": f"{stem}.config.json"})
        written += [dest / f"{stem}.pb", dest / f"{stem}.config.json"]
    (dest / BUNDLE_FILE).write_text(
        json.dumps({"format": FORMAT, "image": image, "platforms": entries}, indent=1) + "\n"
    )
    return [dest / BUNDLE_FILE, *written]


def definition_from_pb(pb: ops_pb2.Definition) -> Definition:
    """A marshalled definition read back (its source map is not needed to build it)."""
    ops = tuple(getattr(pb, "def"))
    digests = tuple("sha256:" + hashlib.sha256(op).hexdigest() for op in ops)
    metadata = {}
    for digest, meta in pb.metadata.items():
        group = None
        if meta.HasField("progress_group"):
            group = ProgressGroup(meta.progress_group.id, meta.progress_group.name, meta.progress_group.weak)
        metadata[digest] = Metadata(
            caps=frozenset(k for k, v in meta.caps.items() if v),
            ignore_cache=meta.ignore_cache,
            description=dict(meta.description),
            progress_group=group,
        )
    return Definition(ops, digests, metadata, {})


def read_bundle(directory: Path, wanted: Sequence[Platform] = ()) -> list[Target]:
    """The targets of a bundle directory: every platform it holds, or the ``wanted`` ones."""
    try:
        manifest = json.loads((directory / BUNDLE_FILE).read_text())
        if manifest.get("format") != FORMAT:
            raise UsageError(f"{BUNDLE_FILE} has format {manifest.get('format')!r}; this llbgen reads {FORMAT}")
        entries = {Platform.parse(e["platform"]): e for e in manifest["platforms"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{BUNDLE_FILE} cannot be read: {exc}; write it with 'llbgen llb IMAGE --bundle DIR'") from None
    missing = [p for p in wanted if p not in entries]
    if missing:
        raise UsageError(
            f"the bundle holds {', '.join(map(str, entries))}, not {', '.join(map(str, missing))}: "
            "write it with 'llbgen llb IMAGE --platform ... --bundle DIR'"
        )
    targets = []
    for platform in wanted or list(entries):
        entry = entries[platform]
        pb = ops_pb2.Definition.FromString((directory / entry["definition"]).read_bytes())
        config = json.loads((directory / entry["config"]).read_text())
        targets.append(Target(platform, definition_from_pb(pb), config))
    return targets

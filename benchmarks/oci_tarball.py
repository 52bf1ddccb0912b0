"""What an OCI tarball (``-o type=oci``) of a multi-platform build holds, per platform."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any


def platform_images(tarball: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Per architecture: the image's layers (diff ids) and its history's ``created_by`` lines."""
    with tarfile.open(tarball) as oci:

        def read(name: str) -> Any:
            member = oci.extractfile(name)
            if member is None:
                raise ValueError(f"{tarball}: {name} is not a file")
            return json.load(member)

        def blob(digest: str) -> Any:
            return read("blobs/sha256/" + digest.split(":")[1])

        (index,) = read("index.json")["manifests"]
        out = {}
        for manifest in blob(index["digest"])["manifests"]:
            config = blob(blob(manifest["digest"])["config"]["digest"])
            history = [entry.get("created_by", "") for entry in config.get("history", [])]
            out[manifest["platform"]["architecture"]] = (config["rootfs"]["diff_ids"], history)
    return out

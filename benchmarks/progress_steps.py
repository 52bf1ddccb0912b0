"""Which steps of a build the daemon ran, read from ``llbgen build --progress rawjson``.

A step the daemon did not run is marked ``cached`` (also when it comes from an imported cache), or
only pulls layers. A vertex without inputs (an image, a file the definition writes) is reported
done once when the daemon computes its cache key, without running it: it ran only if it is
reported done a second time.
"""

from __future__ import annotations

import json
import re

#: Progress rows of a layer pull: "sha256:<digest>", "extracting sha256:<digest>".
_PULL = re.compile(r"^(extracting )?sha256:[0-9a-f]{64}")
#: Vertices that are the daemon's or llbgen's own work, not steps of the definition.
_NOT_STEPS = re.compile(r"^(\[(internal|llbgen)\]|importing cache|exporting|resolve |sending tarball|writing)")


def steps_run(rawjson: str) -> list[str]:
    """Names of the definition's steps that ran, sorted."""
    names: dict[str, str] = {}
    roots: set[str] = set()
    cached: set[str] = set()
    pulled: set[str] = set()
    runs: dict[str, set[tuple[str, str]]] = {}
    for line in rawjson.splitlines():
        if not line.startswith("{"):
            continue  # llbgen's own lines ("llbgen: bpftool: sha256:...")
        status = json.loads(line)
        for vertex in status.get("vertexes", []):
            digest = vertex["digest"]
            names[digest] = vertex.get("name", digest)
            if not vertex.get("inputs"):
                roots.add(digest)
            if vertex.get("cached"):
                cached.add(digest)
            if vertex.get("completed") and not vertex.get("error"):
                runs.setdefault(digest, set()).add((vertex.get("started", ""), vertex["completed"]))
        for row in status.get("statuses", []):
            if _PULL.match(row.get("id", "")):
                pulled.add(row["vertex"])
    ran = [
        names[digest]
        for digest, done in runs.items()
        if digest not in cached | pulled
        and len(done) > (1 if digest in roots else 0)
        and not _NOT_STEPS.match(names[digest])
    ]
    return sorted(ran)

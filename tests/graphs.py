"""Random LLB graphs for property tests, built from plain-data recipes.

A recipe is a JSON-able list of steps, so the same graph can be rebuilt in another process and the
two marshals compared.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from hypothesis import strategies as st

import llbgen

DEB = "docker.io/library/debian:bookworm@sha256:" + "ab" * 32

_words = st.text(alphabet="abcdefghij-_./ ", min_size=1, max_size=12).map(str.strip).filter(bool)
_paths = st.lists(st.sampled_from(["a", "b", "c", "src", "out"]), min_size=1, max_size=3).map(
    lambda parts: "/" + "/".join(parts)
)
_env = st.dictionaries(st.sampled_from(["A", "B", "CC", "PATH"]), _words, max_size=3)

_step = st.one_of(
    st.fixed_dictionaries(
        {
            "kind": st.just("run"),
            "args": st.lists(_words, min_size=1, max_size=4),
            "env": _env,
            "dir": st.none() | _paths,
            "network": st.sampled_from(["sandbox", "host", "none"]),
            "cache": st.none() | st.sampled_from(["apt", "ccache"]),
            "tmpfs": st.booleans(),
            "bind_prev": st.booleans(),
            "secret": st.none() | st.sampled_from(["token", "key"]),
            "ssh": st.booleans(),
            "out": st.booleans(),
        }
    ),
    st.fixed_dictionaries(
        {"kind": st.just("mkfile"), "path": _paths, "data": _words, "mode": st.sampled_from([0o644, 0o755])}
    ),
    st.fixed_dictionaries(
        {"kind": st.just("copy"), "src": _paths, "dest": _paths, "from_prev": st.booleans(), "owner": st.none() | st.just("1000:1000")}
    ),
    st.fixed_dictionaries({"kind": st.just("mkdir_rm"), "path": _paths, "parents": st.booleans()}),
    st.fixed_dictionaries({"kind": st.just("merge")}),
    st.fixed_dictionaries({"kind": st.just("diff")}),
    st.fixed_dictionaries({"kind": st.just("local"), "name": st.sampled_from(["context", "src"])}),
)

recipes = st.lists(_step, min_size=1, max_size=12)


def build(recipe: list[dict[str, Any]]) -> llbgen.State:
    """Applies the recipe's steps in order; every step may also reuse earlier states."""
    history = [llbgen.image(DEB)]
    for step in recipe:
        cur, prev = history[-1], history[max(0, len(history) - 2)]
        kind = step["kind"]
        if kind == "run":
            mounts: list[Any] = []
            if step["cache"]:
                mounts.append(llbgen.cache(f"/var/cache/{step['cache']}", step["cache"]))
            if step["tmpfs"]:
                mounts.append(llbgen.tmpfs("/tmp"))
            if step["bind_prev"]:
                mounts.append(llbgen.bind("/prev", prev, readonly=True))
            if step["secret"]:
                mounts.append(llbgen.secret(step["secret"]))
            if step["ssh"]:
                mounts.append(llbgen.ssh())
            if step["out"]:
                mounts.append(llbgen.bind("/out", llbgen.scratch()))
            es = cur.run(step["args"], env=step["env"], dir=step["dir"], network=step["network"], mounts=mounts)
            history.append(es.mount("/out") if step["out"] else es.root)
        elif kind == "mkfile":
            history.append(cur.file(llbgen.mkfile(step["path"], step["mode"], step["data"])))
        elif kind == "copy":
            source = prev if step["from_prev"] else llbgen.local("context")
            action = llbgen.copy(source, step["src"], step["dest"], owner=step["owner"], create_dest_path=True)
            history.append(cur.file(action))
        elif kind == "mkdir_rm":
            action = llbgen.mkdir(step["path"], parents=step["parents"]).rm(step["path"], allow_not_found=True)
            history.append(cur.file(action))
        elif kind == "merge":
            history.append(llbgen.merge([prev, cur]))
        elif kind == "diff":
            history.append(llbgen.diff(prev, cur))
        else:
            history.append(llbgen.local(step["name"]))
    return history[-1]


if __name__ == "__main__":
    # Rebuilds the recipe given on stdin and prints the op bytes, one hex line per op.
    definition = llbgen.marshal(build(json.load(sys.stdin)), platform="linux/amd64")
    for op in definition.ops:
        print(op.hex())

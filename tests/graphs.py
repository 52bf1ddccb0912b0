"""Random LLB graphs for property and parity tests, built from plain-data recipes.

A recipe is a JSON-able list of steps. Each step makes one new state from the states made before it
(``from``/``inputs`` count back from the newest: 0 is the newest), starting from one pinned image.
The same recipe is rebuilt by another Python process (test_properties.py) and by BuildKit's Go
client (tests/go-oracle, test_go_parity.py), which interprets every step with Go's own API; the
mapping of each step to both APIs is the README's table of llbgen and Go names.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

import llbgen

DEB = "docker.io/library/debian:bookworm@sha256:" + "ab" * 32
#: ``local.unique`` given to both llbgen and the Go client.
LOCAL_UNIQUE_ID = "llbgen-parity"
PLATFORM = "linux/amd64"

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# -- values -----------------------------------------------------------------------------------

# Text that must survive JSON, protobuf and Go unchanged: any character but lone surrogates.
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
_words = st.text(alphabet="abcdefghij-_./ ", min_size=1, max_size=12).map(str.strip).filter(bool)
# Shell-style commands: mostly well-formed words, some quoted, escaped or commented; now and then
# any text (unbalanced quotes are errors on both sides).
_shell_word = st.sampled_from(["make", "-j2", "a=b", "'x y'", '"q\\"z"', "a\\ b", "#c", "x#y", "é", "$A"])
_command = st.lists(_shell_word, min_size=1, max_size=5).map(" ".join) | st.text(
    alphabet="ab c'\"\\#\t\n$é=", min_size=1, max_size=16
)
_segment = st.sampled_from(["a", "b", "src", "out", "build", ".", "..", "", "é"])
_paths = st.builds(
    lambda lead, parts, tail: lead + "/".join(parts) + tail,
    st.sampled_from(["/", "", "./", "//", "../"]),
    st.lists(_segment, max_size=4),
    st.sampled_from(["", "/", "/.", "/.."]),
)
_targets = st.builds(
    lambda parts, tail: "/" + "/".join(parts) + tail,
    st.lists(st.sampled_from(["a", "b", "out", "cache", "tmp", "run", ".."]), min_size=1, max_size=3),
    st.sampled_from(["", "/"]),
)
_patterns = st.lists(
    st.sampled_from(["*.py", "src/**", "!keep", "<a&b>", "é", "a\u2028b", 'q"', "\\x", "\x01", "\x7f"]),
    max_size=3,
)
_env_keys = st.sampled_from(["A", "B", "CC", "PATH", "SSH_AUTH_SOCK", "é"])
_back = st.integers(0, 4)
_owner = st.none() | st.sampled_from(
    ["1000", "1000:1000", "root", "root:root", "app:staff", "+5", "-1", "007", "2147483648", "٣"]
) | st.integers(0, 70000) | st.tuples(st.integers(0, 70000), st.integers(0, 70000)) | st.tuples(
    st.sampled_from(["app", 1000]), st.sampled_from(["staff", 50])
).map(list)
_created = st.none() | st.integers(-(2**51), 2**52)  # microseconds since the epoch
_platforms = st.sampled_from(
    [
        "linux/amd64", "linux/arm64", "linux/arm64/v8", "linux/arm64/9", "linux/arm/v7", "linux/arm",
        "linux/arm/v6", "linux/arm/5", "linux/386", "linux/i386", "linux/x86_64", "linux/x86-64",
        "linux/amd64/v1", "linux/amd64/v3", "linux/aarch64", "linux/riscv64", "linux/armhf",
        "linux/armel", "Linux/AMD64", "darwin/arm64", "macos/arm64", "windows/amd64",
    ]
)  # fmt: skip
_images = st.sampled_from(
    [
        "debian", "debian:trixie", "library/debian:12", "docker.io/debian",
        "index.docker.io/library/debian:trixie", "localhost:5000/x/y:1", "ghcr.io/a/b",
        "127.0.0.1:5000/llbgen/debian:trixie@sha256:" + "cd" * 32, "debian@sha256:" + "ef" * 32,
        "registry.example:443/a_b/c-d:v1.2",
    ]
)  # fmt: skip
_optional_name = st.none() | _text
_progress = st.none() | st.fixed_dictionaries({"id": _words, "name": _text, "weak": st.booleans()})
_net = st.sampled_from(["sandbox", "host", "none"])
_sec = st.sampled_from(["sandbox", "insecure"])

# -- steps ------------------------------------------------------------------------------------

_sources = st.one_of(
    st.fixed_dictionaries(
        {
            "kind": st.just("image"),
            "ref": _images,
            "platform": st.none() | _platforms,
            "resolve_mode": st.none() | st.sampled_from(["default", "pull", "local"]),
            "name": _optional_name,
        }
    ),
    st.fixed_dictionaries(
        {
            "kind": st.just("local"),
            "local": st.sampled_from(["context", "src"]),
            "include": _patterns,
            "exclude": _patterns,
            "follow_paths": _patterns,
            "shared_key_hint": st.sampled_from(["", "ctx"]),
            "name": _optional_name,
        }
    ),
    st.fixed_dictionaries(
        {
            "kind": st.just("http"),
            "url": st.sampled_from(["https://example.com/a.tar.gz", "http://127.0.0.1:8000/x"]),
            "checksum": st.sampled_from(["", "sha256:" + "12" * 32]),
            "filename": st.sampled_from(["", "b.tgz"]),
            "mode": st.sampled_from([0, 0o644, 0o755, 0o4755]),
            "uid": st.sampled_from([0, 1000]),
            "gid": st.sampled_from([0, 1000]),
        }
    ),
    st.fixed_dictionaries(
        {
            "kind": st.just("git"),
            "url": st.sampled_from(
                ["https://github.com/libbpf/bpftool.git", "github.com/a/b", "http://h:8080/x/../y.git"]
            ),
            "ref": st.sampled_from(["", "v7.7.0", "main"]),
            "subdir": st.sampled_from(["", "src", "/a/", "a/../b", "./c"]),
            "keep_git_dir": st.booleans(),
            "checksum": st.sampled_from(["", "ab" * 20]),
        }
    ),
    st.fixed_dictionaries({"kind": st.just("scratch")}),
)

_state_values = st.one_of(
    st.fixed_dictionaries({"kind": st.just("env"), "key": _env_keys, "value": _text}),
    st.fixed_dictionaries({"kind": st.just("dir"), "path": _paths}),
    st.fixed_dictionaries({"kind": st.just("user"), "user": _text}),
    st.fixed_dictionaries({"kind": st.just("hostname"), "hostname": _text}),
    st.fixed_dictionaries({"kind": st.just("network"), "network": _net}),
    st.fixed_dictionaries({"kind": st.just("security"), "security": _sec}),
    st.fixed_dictionaries({"kind": st.just("platform"), "platform": _platforms}),
)

_mount_kinds = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just("bind"),
            "from": st.none() | _back,
            "path": st.sampled_from(["", "/", "/src", "sub/dir", "/a/../b/"]),
            "readonly": st.booleans(),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("cache"),
            "id": st.sampled_from(["apt", "ccache", "é"]),
            "sharing": st.sampled_from(["shared", "private", "locked"]),
            "from": st.none() | _back,
        }
    ),
    st.fixed_dictionaries({"type": st.just("tmpfs"), "size": st.sampled_from([0, 1, 64 << 20])}),
)


@st.composite
def _run(draw: st.DrawFn) -> dict[str, Any]:
    targets = draw(st.lists(_targets, max_size=4, unique=True))
    mounts = [{"target": t, **draw(_mount_kinds)} for t in targets]
    for _ in range(draw(st.integers(0, 2))):
        mounts.append(
            {
                "type": "secret",
                "id": draw(st.sampled_from(["token", "key"])),
                "target": draw(st.none() | _targets.filter(lambda t: t not in targets)),
                "env": draw(st.none() | st.sampled_from(["TOKEN", "KEY"])),
                "uid": draw(st.sampled_from([0, 1000])),
                "gid": draw(st.sampled_from([0, 1000])),
                "mode": draw(st.sampled_from([0o400, 0o600, 0])),
                "optional": draw(st.booleans()),
            }
        )
    for _ in range(draw(st.integers(0, 2))):
        mounts.append(
            {
                "type": "ssh",
                "id": draw(st.sampled_from(["default", "github"])),
                "target": draw(st.none() | _targets.filter(lambda t: t not in targets)),
                "uid": draw(st.sampled_from([0, 1000])),
                "gid": draw(st.sampled_from([0, 1000])),
                "mode": draw(st.sampled_from([0o600, 0o666])),
                "optional": draw(st.booleans()),
            }
        )
    binds = [m["target"] for m in mounts if m["type"] == "bind"]
    env = draw(st.dictionaries(_env_keys, _text, max_size=3))
    return {
        "kind": "run",
        "cmd": draw(_command | st.lists(_text, min_size=1, max_size=4)),
        "env": [[k, v] for k, v in env.items()],
        "dir": draw(st.none() | _paths),
        "user": draw(st.none() | _text),
        "hostname": draw(st.none() | _text),
        "network": draw(st.none() | _net),
        "security": draw(st.none() | _sec),
        "platform": draw(st.none() | _platforms),
        "valid_exit_codes": draw(st.none() | st.lists(st.integers(0, 255), max_size=3)),
        "readonly_rootfs": draw(st.booleans()),
        "mounts": mounts,
        "result": draw(st.sampled_from(["root", "root", *binds])),
        "name": draw(_optional_name),
        "ignore_cache": draw(st.booleans()),
        "progress_group": draw(_progress),
    }


_file_mode = st.sampled_from([0o755, 0o644, 0o4755, 0o1777, 0o600, 0o10644])
_actions = st.one_of(
    st.fixed_dictionaries(
        {
            "op": st.just("mkdir"),
            "path": _paths,
            "mode": _file_mode,
            "parents": st.booleans(),
            "owner": _owner,
            "created": _created,
        }
    ),
    st.fixed_dictionaries(
        {
            "op": st.just("mkfile"),
            "path": _paths,
            "mode": _file_mode,
            "data": _text,
            "owner": _owner,
            "created": _created,
        }
    ),
    st.fixed_dictionaries(
        {
            "op": st.just("rm"),
            "path": _paths,
            "allow_not_found": st.booleans(),
            "allow_wildcard": st.booleans(),
        }
    ),
    st.fixed_dictionaries(
        {"op": st.just("symlink"), "target": _paths, "path": _paths, "owner": _owner, "created": _created}
    ),
    st.fixed_dictionaries(
        {
            "op": st.just("copy"),
            "from": _back,
            "src": _paths,
            "dest": _paths,
            "owner": _owner,
            "mode": st.none() | st.sampled_from([0o755, 0o4755, 0, "u+x", "go-w"]),
            "follow_symlinks": st.booleans(),
            "contents_only": st.booleans(),
            "unpack": st.booleans(),
            "create_dest_path": st.booleans(),
            "allow_wildcard": st.booleans(),
            "allow_empty_wildcard": st.booleans(),
            "created": _created,
            "include": _patterns,
            "exclude": _patterns,
            "always_replace_existing": st.booleans(),
            "required_paths": _patterns,
        }
    ),
)

_file = st.fixed_dictionaries(
    {
        "kind": st.just("file"),
        "actions": st.lists(_actions, min_size=1, max_size=4),
        "name": _optional_name,
        "ignore_cache": st.booleans(),
        "progress_group": _progress,
    }
)
_merge = st.fixed_dictionaries(
    {"kind": st.just("merge"), "inputs": st.lists(_back, min_size=1, max_size=4), "name": _optional_name}
)
_diff = st.fixed_dictionaries(
    {"kind": st.just("diff"), "lower": _back, "upper": _back, "name": _optional_name}
)
# Weighted so that graphs grow: a source starts a new chain, most steps extend one.
_steps = st.one_of(_sources, _state_values, _state_values, _run(), _run(), _run(), _file, _file, _file, _merge, _diff)

recipes = st.lists(_steps, min_size=4, max_size=20)

# -- hand-written recipes ----------------------------------------------------------------------

_DEFAULTS: dict[str, dict[str, Any]] = {
    "image": {"platform": None, "resolve_mode": None, "name": None},
    "local": {"include": [], "exclude": [], "follow_paths": [], "shared_key_hint": "", "name": None},
    "http": {"checksum": "", "filename": "", "mode": 0, "uid": 0, "gid": 0},
    "git": {"ref": "", "subdir": "", "keep_git_dir": False, "checksum": ""},
    "run": {
        "env": [], "dir": None, "user": None, "hostname": None, "network": None, "security": None,
        "platform": None, "valid_exit_codes": None, "readonly_rootfs": False, "mounts": [],
        "result": "root", "name": None, "ignore_cache": False, "progress_group": None,
    },
    "file": {"name": None, "ignore_cache": False, "progress_group": None},
    "merge": {"name": None},
    "diff": {"name": None},
    "mkdir": {"mode": 0o755, "parents": False, "owner": None, "created": None},
    "mkfile": {"mode": 0o644, "data": "", "owner": None, "created": None},
    "rm": {"allow_not_found": False, "allow_wildcard": False},
    "symlink": {"owner": None, "created": None},
    "copy": {
        "from": 0, "owner": None, "mode": None, "follow_symlinks": False, "contents_only": False,
        "unpack": False, "create_dest_path": False, "allow_wildcard": False,
        "allow_empty_wildcard": False, "created": None, "include": [], "exclude": [],
        "always_replace_existing": False, "required_paths": [],
    },
    "bind": {"from": None, "path": "", "readonly": False},
    "cache": {"sharing": "shared", "from": None},
    "tmpfs": {"size": 0},
    "secret": {"target": None, "env": None, "uid": 0, "gid": 0, "mode": 0o400, "optional": False},
    "ssh": {"id": "default", "target": None, "uid": 0, "gid": 0, "mode": 0o600, "optional": False},
}  # fmt: skip


def step(kind: str, **values: Any) -> dict[str, Any]:
    """A recipe step with the defaults of llbgen's API for what ``values`` leaves out."""
    return {"kind": kind, **_DEFAULTS.get(kind, {}), **values}


def action(op: str, **values: Any) -> dict[str, Any]:
    return {"op": op, **_DEFAULTS[op], **values}


def mount(kind: str, **values: Any) -> dict[str, Any]:
    return {"type": kind, **_DEFAULTS[kind], **values}


# -- building ---------------------------------------------------------------------------------


def _owner_value(owner: Any) -> Any:
    return tuple(owner) if isinstance(owner, list) else owner


def _created_value(us: int | None) -> datetime | None:
    return None if us is None else _EPOCH + timedelta(microseconds=us)


def _action(chain: llbgen.FileAction, a: dict[str, Any], at: Any) -> llbgen.FileAction:
    op = a["op"]
    if op == "mkdir":
        return chain.mkdir(
            a["path"], a["mode"], parents=a["parents"], owner=_owner_value(a["owner"]),
            created=_created_value(a["created"]),
        )  # fmt: skip
    if op == "mkfile":
        return chain.mkfile(
            a["path"], a["mode"], a["data"], owner=_owner_value(a["owner"]),
            created=_created_value(a["created"]),
        )  # fmt: skip
    if op == "rm":
        return chain.rm(a["path"], allow_not_found=a["allow_not_found"], allow_wildcard=a["allow_wildcard"])
    if op == "symlink":
        return chain.symlink(
            a["target"], a["path"], owner=_owner_value(a["owner"]), created=_created_value(a["created"])
        )
    return chain.copy(
        at(a["from"]), a["src"], a["dest"], owner=_owner_value(a["owner"]), mode=a["mode"],
        follow_symlinks=a["follow_symlinks"], contents_only=a["contents_only"], unpack=a["unpack"],
        create_dest_path=a["create_dest_path"], allow_wildcard=a["allow_wildcard"],
        allow_empty_wildcard=a["allow_empty_wildcard"], created=_created_value(a["created"]),
        include=a["include"], exclude=a["exclude"],
        always_replace_existing=a["always_replace_existing"], required_paths=a["required_paths"],
    )  # fmt: skip


def _mount(m: dict[str, Any], at: Any) -> Any:
    kind = m["type"]
    if kind == "bind":
        source = llbgen.scratch() if m["from"] is None else at(m["from"])
        return llbgen.bind(m["target"], source, path=m["path"], readonly=m["readonly"])
    if kind == "cache":
        source = None if m["from"] is None else at(m["from"])
        return llbgen.cache(m["target"], m["id"], sharing=m["sharing"], source=source)
    if kind == "tmpfs":
        return llbgen.tmpfs(m["target"], size=m["size"])
    options = {k: m[k] for k in ("target", "uid", "gid", "mode", "optional")}
    if kind == "secret":
        return llbgen.secret(m["id"], env=m["env"], **options)
    return llbgen.ssh(m["id"], **options)


def _progress_group(step: dict[str, Any]) -> llbgen.ProgressGroup | None:
    group = step.get("progress_group")
    return None if group is None else llbgen.ProgressGroup(group["id"], group["name"], group["weak"])


def _step(step: dict[str, Any], at: Any) -> llbgen.State:
    kind, cur = step["kind"], at(0)
    if kind == "image":
        return llbgen.image(
            step["ref"], platform=step["platform"], resolve_mode=step["resolve_mode"], name=step["name"]
        )
    if kind == "local":
        return llbgen.local(
            step["local"], include=step["include"], exclude=step["exclude"],
            follow_paths=step["follow_paths"], shared_key_hint=step["shared_key_hint"],
            step_name=step["name"],
        )  # fmt: skip
    if kind == "http":
        return llbgen.http(
            step["url"], checksum=step["checksum"], filename=step["filename"], mode=step["mode"],
            uid=step["uid"], gid=step["gid"],
        )  # fmt: skip
    if kind == "git":
        return llbgen.git(
            step["url"], step["ref"], subdir=step["subdir"], keep_git_dir=step["keep_git_dir"],
            checksum=step["checksum"],
        )  # fmt: skip
    if kind == "scratch":
        return llbgen.scratch()
    if kind == "env":
        return cur.with_env(step["key"], step["value"])
    if kind == "dir":
        return cur.with_dir(step["path"])
    if kind in ("user", "hostname", "network", "security", "platform"):
        setter: Any = getattr(cur, f"with_{kind}")  # with_user(step["user"]) and the like
        state: llbgen.State = setter(step[kind])
        return state
    if kind == "run":
        es = cur.run(
            step["cmd"], mounts=[_mount(m, at) for m in step["mounts"]], env=dict(step["env"]),
            dir=step["dir"], user=step["user"], hostname=step["hostname"], network=step["network"],
            security=step["security"], platform=step["platform"],
            valid_exit_codes=step["valid_exit_codes"], readonly_rootfs=step["readonly_rootfs"],
            name=step["name"], ignore_cache=step["ignore_cache"], progress_group=_progress_group(step),
        )  # fmt: skip
        return es.root if step["result"] == "root" else es.mount(step["result"])
    if kind == "file":
        chain = llbgen.FileAction(())
        for action in step["actions"]:
            chain = _action(chain, action, at)
        return cur.file(
            chain, name=step["name"], ignore_cache=step["ignore_cache"], progress_group=_progress_group(step)
        )
    if kind == "merge":
        return llbgen.merge([at(k) for k in step["inputs"]], name=step["name"])
    if kind == "diff":
        return llbgen.diff(at(step["lower"]), at(step["upper"]), name=step["name"])
    raise ValueError(f"unknown step {kind!r}")


def build(recipe: list[dict[str, Any]]) -> llbgen.State:
    """Applies the recipe's steps in order, each making a new state from the earlier ones.

    The result merges every state made, so that every step is marshalled.
    """
    history = [llbgen.image(DEB)]

    def at(back: int) -> llbgen.State:
        return history[max(0, len(history) - 1 - back)]

    for step in recipe:
        history.append(_step(step, at))
    return llbgen.merge(history)


def marshal(recipe: list[dict[str, Any]]) -> llbgen.Definition:
    return llbgen.marshal(build(recipe), platform=PLATFORM, local_unique_id=LOCAL_UNIQUE_ID)


if __name__ == "__main__":
    # Rebuilds the recipe given on stdin and prints the op bytes, one hex line per op.
    for op in marshal(json.load(sys.stdin)).ops:
        print(op.hex())

"""Building on buildx builders: buildx's store and precedence, the docker-container driver, several nodes.

The unit tests read store files written here in buildx's format (one JSON file per builder in
``instances/``, the selection in ``current``). The stack tests use the builders scripts/stack-buildx
made with ``docker buildx create`` (stack.env: ``LLBGEN_BUILDX_BUILDER``, one node for both
platforms; ``LLBGEN_BUILDX_MULTINODE``, one node per platform) and check on the nodes themselves
(their build history) where each part ran.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from llbgen.builder_cli import buildkitd_config, create_args
from llbgen.client import buildx
from llbgen.client.connection import TLSConfig
from llbgen.client.multinode import assign
from llbgen.llb.errors import LLBGenError
from llbgen.llb.platform import Platform
from tests.conftest import ROOT, STACK_DIR
from tests.test_frontend import base_ref, frontend_image  # noqa: F401  (fixtures)

EPOCH = "1700000000"
PLATFORMS = "linux/amd64,linux/arm64"
TIMEOUT = 1800

# --- the store and the precedence (no daemon) ---------------------------------------------------


def _node(name: str, endpoint: str = "unix:///var/run/docker.sock", platforms: str = "") -> dict[str, Any]:
    return {
        "Name": name,
        "Endpoint": endpoint,
        "Platforms": [
            {"architecture": p.split("/")[1], "os": p.split("/")[0]} for p in platforms.split(",") if p
        ] or None,
        "DriverOpts": {"network": "host"},
        "Flags": ["--allow-insecure-entitlement=network.host"],
        "Files": None,
    }


def _store(root: Path, builders: dict[str, tuple[str, list[dict[str, Any]]]], current: dict[str, Any] | None) -> None:
    (root / "instances").mkdir(parents=True)
    for name, (driver, nodes) in builders.items():
        (root / "instances" / name).write_text(json.dumps({"Name": name, "Driver": driver, "Nodes": nodes, "Dynamic": False}))
    if current is not None:
        (root / "current").write_text(json.dumps(current))


@pytest.fixture
def store_env(tmp_path: Path) -> dict[str, str]:
    root = tmp_path / "buildx"
    _store(
        root,
        {
            "one": ("docker-container", [_node("one0", platforms="linux/amd64,linux/arm64")]),
            "two": ("docker-container", [_node("two-a", platforms="linux/amd64"), _node("two-b", "ctx-b", "linux/arm64")]),
            "far": ("remote", [_node("far0", "tcp://127.0.0.1:1234")]),
            "dockerd": ("docker", [_node("dockerd", "dockerd")]),
        },
        {"Key": "unix:///var/run/docker.sock", "Name": "two", "Global": False},
    )
    return {"BUILDX_CONFIG": str(root), "HOME": str(tmp_path)}


def test_store_reads_buildx_files(store_env: dict[str, str]) -> None:
    store = buildx.Store.default(store_env)
    assert store.names() == ["dockerd", "far", "one", "two"]
    two = store.get("two")
    assert two is not None and two.driver == "docker-container"
    assert [n.name for n in two.nodes] == ["two-a", "two-b"]
    assert two.nodes[1].platforms == (Platform("linux", "arm64"),)
    assert two.nodes[1].docker_flags() == ["--context", "ctx-b"]
    assert buildx.endpoint(two, two.nodes[0]).address == (
        "docker-container://buildx_buildkit_two-a?host=unix:///var/run/docker.sock"
    )


def test_remote_node_tls_from_driver_options() -> None:
    node = buildx.Node(
        "far0", "tcp://10.0.0.1:1234",
        driver_opts={"cacert": "/c/ca.pem", "cert": "/c/cert.pem", "key": "/c/key.pem", "servername": "bk"},
    )  # fmt: skip
    where = buildx.endpoint(buildx.Builder("far", "remote", (node,)), node)
    assert where.address == "tcp://10.0.0.1:1234"
    assert where.tls == TLSConfig(Path("/c/ca.pem"), Path("/c/cert.pem"), Path("/c/key.pem"), "bk")


def test_each_platform_goes_to_the_first_node_listing_it() -> None:
    amd64, arm64 = Platform("linux", "amd64"), Platform("linux", "arm64")
    both = buildx.Node("both", "e1", (amd64, arm64))
    only_arm = buildx.Node("arm", "e2", (arm64,))
    parts = assign(buildx.Builder("b", "docker-container", (only_arm, both)), [amd64, arm64], {})
    assert [(p.node.name, p.platforms) for p in parts] == [("arm", (arm64,)), ("both", (amd64,))]
    with pytest.raises(LLBGenError, match="no node of builder 'b' builds linux/s390x: arm: linux/arm64"):
        assign(buildx.Builder("b", "docker-container", (only_arm,)), [Platform("linux", "s390x")], {})


def test_store_location_follows_docker_config(tmp_path: Path) -> None:
    assert buildx.Store.default({"DOCKER_CONFIG": str(tmp_path / "d"), "HOME": "/nowhere"}).root == tmp_path / "d" / "buildx"
    assert buildx.Store.default({"HOME": str(tmp_path)}).root.parts[-2:] == (".docker", "buildx")


def test_precedence(store_env: dict[str, str]) -> None:
    env = dict(store_env)
    assert buildx.choose("tcp://127.0.0.1:1", "one", dict(env, BUILDKIT_HOST="unix:///x")).address == "tcp://127.0.0.1:1"
    host = buildx.choose(None, "one", dict(env, BUILDKIT_HOST="unix:///x"))
    assert host.address == "unix:///x" and host.notes  # the named builder is not used, and the user hears it
    flag = buildx.choose(None, "one", dict(env, BUILDX_BUILDER="far"))
    assert flag.builder is not None and flag.builder.name == "one" and flag.reason == "--builder"
    variable = buildx.choose(None, None, dict(env, BUILDX_BUILDER="far"))
    assert variable.builder is not None and variable.builder.name == "far"
    current = buildx.choose(None, None, env)
    assert current.builder is not None and current.builder.name == "two"


def test_current_builder_is_per_docker_endpoint(store_env: dict[str, str]) -> None:
    # Selected for another docker endpoint: not the current one here.
    assert buildx.choose(None, None, dict(store_env, DOCKER_HOST="unix:///other.sock")).builder is None
    # A global selection holds for every endpoint.
    root = Path(store_env["BUILDX_CONFIG"])
    (root / "current").write_text(json.dumps({"Key": "x", "Name": "one", "Global": True}))
    chosen = buildx.choose(None, None, dict(store_env, DOCKER_HOST="unix:///other.sock")).builder
    assert chosen is not None and chosen.name == "one"


def test_current_docker_driver_builder_falls_back_to_own_daemon(store_env: dict[str, str]) -> None:
    (Path(store_env["BUILDX_CONFIG"]) / "current").write_text(
        json.dumps({"Key": "unix:///var/run/docker.sock", "Name": "dockerd", "Global": False})
    )
    choice = buildx.choose(None, None, store_env)
    assert choice.builder is None and choice.address is None
    assert "docker driver" in choice.skipped[0]


def test_docker_driver_and_unknown_names_say_what_to_do(store_env: dict[str, str]) -> None:
    with pytest.raises(buildx.BuilderError, match="docker driver.*llbgen builder create"):
        buildx.choose(None, "dockerd", store_env)
    with pytest.raises(buildx.BuilderError, match="no buildx builder named 'nope'.*dockerd, far, one, two"):
        buildx.choose(None, "nope", store_env)
    # buildx offers docker contexts as builders of the docker driver
    with pytest.raises(buildx.BuilderError, match="'default' uses the docker driver"):
        buildx.choose(None, "default", store_env)


def test_create_adds_llbgen_defaults(tmp_path: Path) -> None:
    args = create_args(
        "b", ["--platform", "linux/amd64"], tmp_path, {"LLBGEN_BUILDKIT_IMAGE": "reg/bk@sha256:1"}, ["127.0.0.1:5000"]
    )
    assert args[:5] == ["create", "--name", "b", "--driver", "docker-container"]
    assert args[args.index("--driver-opt") + 1] == "network=host,image=reg/bk@sha256:1"
    config = Path(args[args.index("--buildkitd-config") + 1]).read_text()
    assert '[registry."127.0.0.1:5000"]\n  http = true' in config and "network.host" in config
    assert args[-2:] == ["--platform", "linux/amd64"]
    # What the user gave wins.
    mine = create_args("b", ["--driver-opt", "network=bridge", "--buildkitd-config", "/c.toml"], tmp_path, {}, [])
    assert mine.count("--driver-opt") == 1 and mine.count("--buildkitd-config") == 1
    assert 'registry."reg:1"' in buildkitd_config(["reg:1"])


# --- on the stack's builders ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def builders(stack: dict[str, str]) -> dict[str, str]:
    missing = [k for k in ("LLBGEN_BUILDX_BUILDER", "LLBGEN_BUILDX_MULTINODE") if k not in stack]
    if missing or shutil.which("docker") is None:
        pytest.fail(f"the stack has no buildx builders ({', '.join(missing) or 'docker'}): run scripts/stack-up")
    return stack


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BUILDKIT_HOST", "BUILDX_BUILDER")}
    return dict(env, LLBGEN_CONFIG=str(STACK_DIR / "llbgen.toml"), **extra)


def _llbgen(*args: str, env: dict[str, str], cwd: Path = ROOT, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llbgen", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def _metadata(path: Path) -> dict[str, str]:
    return dict(json.loads(path.read_text()))


def _history(node: str, since: float) -> list[dict[str, Any]]:
    """The build records of a docker-container node created after ``since`` (seconds since the epoch)."""
    proc = subprocess.run(
        ["docker", "exec", buildx.CONTAINER_PREFIX + node, "buildctl", "debug", "histories", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line)["record"] for line in proc.stdout.splitlines() if line.strip()]
    return [r for r in records if int(r["CreatedAt"]["seconds"]) >= int(since) - 1]


def _exported_names(record: dict[str, Any]) -> str:
    return " ".join(e.get("Attrs", {}).get("name", "") for e in record.get("Exporters") or [])


#: Built on the base, shipped on scratch, as bpftool is. (An image on top of the base would carry
#: the base's history, which says how the daemon got the base's layers: "pulled from ..." on the
#: builder, "unpack debian-trixie-amd64.tar" on the stack's daemon, which built the base itself.)
TOOL = """
import llbgen

PLATFORMS = ("linux/amd64", "linux/arm64")

def build(ctx):
    built = ctx.base_image("debian:trixie").run(
        ["sh", "-c", "uname -m > /out/arch && sha256sum /bin/sh > /out/sh.sha256"],
        mounts=[llbgen.bind("/out", llbgen.scratch())],
    )
    return llbgen.scratch().file(llbgen.copy(built.mount("/out"), "/", "/"))
"""


@pytest.mark.buildkit
@pytest.mark.parametrize("image", ["tool", "bpftool"])
def test_builder_gives_the_plain_daemons_digest(builders: dict[str, str], tmp_path: Path, image: str) -> None:
    """The same image, byte for byte, on the builder (another daemon, its own cache) and the stack's daemon.

    bpftool: the first run on a new builder builds the compilers image there (about 10 minutes).
    """
    shutil.copytree(ROOT / "images", tmp_path / "images")
    (tmp_path / "images" / "tool").mkdir(parents=True)
    (tmp_path / "images" / "tool" / "image.py").write_text(TOOL)
    digests = []
    for where in (["--builder", builders["LLBGEN_BUILDX_BUILDER"]], ["--addr", builders["BUILDKIT_HOST"]]):
        meta = tmp_path / f"{where[0][2:]}.json"
        proc = _llbgen(
            "build", image, *where, "--platform", PLATFORMS, "--arg", f"SOURCE_DATE_EPOCH={EPOCH}",
            "-o", f"type=oci,dest={tmp_path / 'out.tar'},rewrite-timestamp=true", "--metadata-file", str(meta),
            env=_env(), cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        digests.append(_metadata(meta)["containerimage.digest"])
    assert digests[0] == digests[1]


@pytest.mark.buildkit
def test_builder_from_environment_and_current(builders: dict[str, str], tmp_path: Path) -> None:
    name = builders["LLBGEN_BUILDX_BUILDER"]
    node = f"{name}0"
    # The user's store, copied: `docker buildx use` here selects a builder in the copy only.
    store = tmp_path / "buildx"
    shutil.copytree(buildx.Store.default().root / "instances", store / "instances")
    for how, env in (
        ("BUILDX_BUILDER", _env(BUILDX_BUILDER=name, BUILDX_CONFIG=str(store))),
        ("docker buildx use", _env(BUILDX_CONFIG=str(store))),
    ):
        if how == "docker buildx use":
            use = subprocess.run(["docker", "buildx", "use", name], env=env, capture_output=True, text=True, timeout=60)
            assert use.returncode == 0, use.stderr
        ls = _llbgen("builder", "ls", env=env)
        assert f"a build would use: builder {name}" in ls.stdout, ls.stdout
        tag = f"{builders['LLBGEN_REGISTRY']}/llbgen-test/buildx-{uuid.uuid4().hex[:8]}"
        started = time.time()
        proc = _llbgen("build", "hello", "--platform", "linux/amd64", "-o", f"type=image,name={tag},push=true", env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert any(tag in _exported_names(r) for r in _history(node, started)), f"{how}: the build did not run on {node}"


@pytest.mark.buildkit
def test_builder_ls_shows_nodes_and_choice(builders: dict[str, str]) -> None:
    multi = builders["LLBGEN_BUILDX_MULTINODE"]
    proc = _llbgen("builder", "ls", "--builder", multi, env=_env())
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0] if not line.startswith(" ") else "": line for line in proc.stdout.splitlines() if line.strip()}
    assert "docker-container" in rows[multi] and f"{multi}-amd64" in rows[multi] and "linux/amd64" in rows[multi]
    assert any(f"{multi}-arm64" in line and "linux/arm64" in line and "running" in line for line in proc.stdout.splitlines())
    assert f"a build would use: builder {multi} (--builder)" in proc.stdout


@pytest.mark.buildkit
def test_unknown_builder_lists_the_known_ones(builders: dict[str, str]) -> None:
    proc = _llbgen("build", "hello", "--builder", "no-such-builder", env=_env())
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert "no-such-builder" in line and builders["LLBGEN_BUILDX_BUILDER"] in line and builders["LLBGEN_BUILDX_MULTINODE"] in line


SLEEPER = """
import llbgen

def build(ctx):
    return ctx.base_image("debian:trixie").run(["sh", "-c", "echo started " + ctx.arg("NONCE") + "; sleep 300"]).root
"""


@pytest.mark.buildkit
def test_builder_stopped_mid_build(builders: dict[str, str], tmp_path: Path) -> None:
    name = builders["LLBGEN_BUILDX_BUILDER"]
    container = f"{buildx.CONTAINER_PREFIX}{name}0"
    (tmp_path / "images" / "sleeper").mkdir(parents=True)
    (tmp_path / "images" / "sleeper" / "image.py").write_text(SLEEPER)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llbgen", "build", "sleeper", "--builder", name, "--platform", "linux/amd64",
         "--arg", f"NONCE={uuid.uuid4().hex}", "--progress", "plain"],
        cwd=tmp_path, env=_env(), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if re.match(r"#\d+ \d+\.\d+ started ", line):  # the step's own output
            break
    else:
        pytest.fail("the step never started:\n" + "".join(lines[-20:]))
    try:
        subprocess.run(["docker", "stop", "-t", "0", container], check=True, capture_output=True, timeout=60)
        stopped = time.monotonic()
        code = proc.wait(timeout=30)
        took = time.monotonic() - stopped
        rest = proc.stderr.read()
    finally:
        proc.kill()
    assert code == 1, rest
    (error,) = [line for line in rest.splitlines() if line.startswith("llbgen: error")]
    assert repr(name) in error and took < 10, (took, rest)
    # The next build boots the stopped builder, as buildx would.
    again = _llbgen("build", "hello", "--builder", name, "--platform", "linux/amd64", env=_env())
    assert again.returncode == 0, again.stderr[-3000:]
    running = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", container], capture_output=True, text=True)
    assert running.stdout.strip() == "true"


WHEREAMI = """
import llbgen

PLATFORMS = ("linux/amd64", "linux/arm64")

def build(ctx):
    return (
        ctx.base_image("debian:trixie")
        .run(["sh", "-c", "uname -m > /ran-as"])
        .root.file(llbgen.mkfile("/build-platform", 0o644, str(ctx.build_platform) + "\\n"))
    )
"""


def _files_in_layers(layout: tarfile.TarFile, manifest_digest: str, names: set[str]) -> dict[str, str]:
    def blob(digest: str) -> bytes:
        member = layout.extractfile("blobs/sha256/" + digest.split(":")[1])
        assert member is not None
        return member.read()

    manifest = json.loads(blob(manifest_digest))
    found: dict[str, str] = {}
    for layer in manifest["layers"]:
        data = blob(layer["digest"])
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)) as tar:
            for member in tar.getmembers():
                if member.name in names and member.isfile():
                    found[member.name] = tar.extractfile(member).read().decode().strip()  # type: ignore[union-attr]
    return found


def _registry_index(registry: str, repository: str, tag: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{tag}", headers={"Accept": "application/vnd.oci.image.index.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(json.loads(response.read()))


@pytest.mark.buildkit
def test_two_nodes_each_build_their_platform(builders: dict[str, str], tmp_path: Path) -> None:
    multi = builders["LLBGEN_BUILDX_MULTINODE"]
    (tmp_path / "images" / "whereami").mkdir(parents=True)
    (tmp_path / "images" / "whereami" / "image.py").write_text(WHEREAMI)
    repository = f"llbgen-test/multinode-{uuid.uuid4().hex[:8]}"
    ref = f"{builders['LLBGEN_REGISTRY']}/{repository}:latest"
    oci = tmp_path / "whereami.tar"
    started = time.time()
    proc = _llbgen(
        "build", "whereami", "--builder", multi, "--platform", PLATFORMS, "--progress", "plain",
        "-o", f"type=image,name={ref},push=true", "-o", f"type=oci,dest={oci}",
        "--metadata-file", str(tmp_path / "meta.json"), env=_env(), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # One progress view, the node named on each step.
    assert f"[{multi}-amd64]" in proc.stderr and f"[{multi}-arm64]" in proc.stderr
    # Each node's own history has its platform's part, exported under this build's name.
    for arch in ("amd64", "arm64"):
        records = [r for r in _history(f"{multi}-{arch}", started) if repository in _exported_names(r)]
        assert [r["FrontendAttrs"]["platform"] for r in records] == [f"linux/{arch}"], records
    # The pushed index: both platforms, and the digest the build reported.
    index = _registry_index(builders["LLBGEN_REGISTRY"], repository, "latest")
    pushed = {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}
    assert sorted(pushed) == ["amd64", "arm64"]
    body = json.dumps(index, separators=(",", ":")).encode()
    assert _metadata(tmp_path / "meta.json")["containerimage.digest"] == "sha256:" + hashlib.sha256(body).hexdigest()
    # The OCI tarball: both platforms, each compiled with its node's platform as ctx.build_platform.
    with tarfile.open(oci) as layout:
        (top,) = json.load(layout.extractfile("index.json"))["manifests"]  # type: ignore[arg-type]
        nested = json.load(layout.extractfile("blobs/sha256/" + top["digest"].split(":")[1]))  # type: ignore[arg-type]
        platforms = {m["platform"]["architecture"]: m["digest"] for m in nested["manifests"]}
        assert platforms == pushed
        for arch, uname in (("amd64", "x86_64"), ("arm64", "aarch64")):
            files = _files_in_layers(layout, platforms[arch], {"build-platform", "ran-as"})
            assert files == {"build-platform": f"linux/{arch}", "ran-as": uname}


FAILING = """
import llbgen

PLATFORMS = ("linux/amd64", "linux/arm64")

def build(ctx):
    step = "exit 3" if ctx.target_platform.architecture == "arm64" else "sleep 300"
    return ctx.base_image("debian:trixie").run(["sh", "-c", step + " # " + ctx.arg("NONCE")]).root
"""


@pytest.mark.buildkit
def test_failure_on_one_node_cancels_the_other(builders: dict[str, str], tmp_path: Path) -> None:
    multi = builders["LLBGEN_BUILDX_MULTINODE"]
    (tmp_path / "images" / "failing").mkdir(parents=True)
    (tmp_path / "images" / "failing" / "image.py").write_text(FAILING)
    began = time.monotonic()
    proc = _llbgen(
        "build", "failing", "--builder", multi, "--platform", PLATFORMS, "--arg", f"NONCE={uuid.uuid4().hex}",
        "--progress", "plain", env=_env(), cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 1
    assert time.monotonic() - began < 120  # the amd64 node's 300 s step was cancelled
    error = proc.stderr[proc.stderr.index("llbgen: error") :]
    assert f"node {multi}-arm64 of builder {multi!r}" in error and "exit code: 3" in error


@pytest.mark.buildkit
def test_docker_buildx_build_through_the_syntax_frontend(
    builders: dict[str, str], frontend_image: str, base_ref: str, tmp_path: Path
) -> None:
    """``docker buildx build -f image.py`` on the builder gives the image ``llbgen build`` gives there."""
    name = builders["LLBGEN_BUILDX_BUILDER"]
    images = tmp_path / "images"
    shutil.copytree(ROOT / "images" / "hello", images / "hello")
    definition = images / "hello" / "image.py"
    definition.write_text(f"# syntax={frontend_image}\n" + definition.read_text())
    env = _env()
    docker = subprocess.run(
        ["docker", "buildx", "build", "--builder", name, "-f", str(definition), "--platform", PLATFORMS,
         "--build-arg", f"base:debian:trixie={base_ref}", "--build-arg", f"SOURCE_DATE_EPOCH={EPOCH}",
         "--provenance=false", "--output", f"type=oci,dest={tmp_path / 'docker.tar'}",
         "--metadata-file", str(tmp_path / "docker.json"), str(ROOT)],
        env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert docker.returncode == 0, docker.stderr[-3000:]
    ours = _llbgen(
        "build", "hello", "--builder", name, "--platform", PLATFORMS, "--arg", f"base:debian:trixie={base_ref}",
        "--arg", f"SOURCE_DATE_EPOCH={EPOCH}", "-o", f"type=oci,dest={tmp_path / 'llbgen.tar'}",
        "--metadata-file", str(tmp_path / "llbgen.json"), env=env,
    )  # fmt: skip
    assert ours.returncode == 0, ours.stderr[-3000:]
    assert _metadata(tmp_path / "docker.json")["containerimage.digest"] == _metadata(tmp_path / "llbgen.json")["containerimage.digest"]


@pytest.mark.buildkit
def test_builder_create_remote_and_rm(builders: dict[str, str], tmp_path: Path) -> None:
    """``llbgen builder create`` makes buildx builders; a remote one reaches the stack's daemon."""
    env = _env(BUILDX_CONFIG=str(tmp_path / "buildx"), LLBGEN_BUILDKIT_IMAGE=builders["LLBGEN_BUILDKIT_IMAGE"])
    made = _llbgen("builder", "create", "llbgen-test-dc", "--platform", "linux/amd64", env=env)
    assert made.returncode == 0, made.stderr
    stored = json.loads((tmp_path / "buildx" / "instances" / "llbgen-test-dc").read_text())
    (node,) = stored["Nodes"]
    assert node["DriverOpts"] == {"network": "host", "image": builders["LLBGEN_BUILDKIT_IMAGE"]}
    config = tomllib.loads(base64.b64decode(node["Files"]["buildkitd.toml"]).decode())
    assert config["registry"]["127.0.0.1:5000"] == {"http": True, "insecure": True}
    assert config["insecure-entitlements"] == ["network.host"]
    address = builders["BUILDKIT_HOST"]
    remote = _llbgen("builder", "create", "llbgen-test-remote", "--driver", "remote", address, env=env)
    assert remote.returncode == 0, remote.stderr
    (tmp_path / "images" / "tool").mkdir(parents=True)
    (tmp_path / "images" / "tool" / "image.py").write_text(TOOL)
    tag = f"{builders['LLBGEN_REGISTRY']}/llbgen-test/remote-{uuid.uuid4().hex[:8]}"
    started = time.time()
    proc = _llbgen(
        "build", "tool", "--builder", "llbgen-test-remote", "--platform", "linux/amd64",
        "-o", f"type=image,name={tag},push=true", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = subprocess.run(
        ["buildctl", "--addr", address, "debug", "histories", "--format", "json"], capture_output=True, text=True, timeout=60
    )
    records = [json.loads(line)["record"] for line in history.stdout.splitlines() if line.strip()]
    assert any(tag in _exported_names(r) for r in records if int(r["CreatedAt"]["seconds"]) >= int(started) - 1)
    for name in ("llbgen-test-dc", "llbgen-test-remote"):
        removed = _llbgen("builder", "rm", name, env=env)
        assert removed.returncode == 0, removed.stderr
    assert not list((tmp_path / "buildx" / "instances").iterdir())


@pytest.mark.buildkit
def test_two_nodes_local_tar_and_docker_outputs(builders: dict[str, str], tmp_path: Path) -> None:
    """Assembled on the client, laid out as one daemon lays out a multi-platform result."""
    (tmp_path / "images" / "whereami").mkdir(parents=True)
    (tmp_path / "images" / "whereami" / "image.py").write_text(WHEREAMI)
    outputs = {}
    for where in (builders["LLBGEN_BUILDX_MULTINODE"], builders["LLBGEN_BUILDX_BUILDER"]):
        out = tmp_path / where
        # One daemon's docker exporter refuses several platforms; the client's assembly does not.
        docker = ["-o", f"type=docker,dest={out / 'docker.tar'},name=whereami:test"]
        proc = _llbgen(
            "build", "whereami", "--builder", where, "--platform", PLATFORMS,
            "-o", f"type=local,dest={out / 'local'}", "-o", f"type=tar,dest={out / 'fs.tar'}",
            *(docker if where == builders["LLBGEN_BUILDX_MULTINODE"] else []), env=_env(), cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        with tarfile.open(out / "fs.tar") as tar:
            names = sorted(m.name for m in tar.getmembers() if m.name.endswith(("build-platform", "ran-as")))
        local = {p.parent.name + "/" + p.name: p.read_text().strip() for p in sorted((out / "local").glob("*/build-platform"))}
        tags = []
        if (out / "docker.tar").exists():
            with tarfile.open(out / "docker.tar") as tar:
                tags = [e["RepoTags"] for e in json.load(tar.extractfile("manifest.json"))]  # type: ignore[arg-type]
        outputs[where] = (names, sorted(local), local, tags)
    multi, single = outputs[builders["LLBGEN_BUILDX_MULTINODE"]], outputs[builders["LLBGEN_BUILDX_BUILDER"]]
    assert multi[0] == single[0] == ["linux_amd64/build-platform", "linux_amd64/ran-as", "linux_arm64/build-platform", "linux_arm64/ran-as"]
    assert multi[1] == single[1]
    # Each node compiled with its own platform; the one-node builder with its amd64 for both.
    assert multi[2] == {"linux_amd64/build-platform": "linux/amd64", "linux_arm64/build-platform": "linux/arm64"}
    assert set(single[2].values()) == {"linux/amd64"}
    assert ["whereami:test"] in multi[3]

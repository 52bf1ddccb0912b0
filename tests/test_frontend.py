"""llbgen's gateway frontend (``llbgen.frontend``, ``frontend.Dockerfile``).

The unit tests need nothing. The end-to-end tests build the frontend image from
frontend.Dockerfile on the stack (once per session), push it to the stack's registry, and build
image definitions through it with ``buildctl``: as ``--frontend gateway.v0`` and through the
built-in dockerfile frontend with a ``# syntax=`` first line. Both must give the image
``llbgen build`` gives, digest for digest, with a fixed SOURCE_DATE_EPOCH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from llbgen.frontend import errors, options
from llbgen.frontend.frontend import plan
from llbgen.frontend.options import FrontendOptions
from llbgen.llb.errors import DefinitionError, UsageError
from llbgen.llb.location import Location
from llbgen.llb.platform import Platform
from tests.conftest import ROOT, STACK_DIR

FIXTURES = ROOT / "tests" / "data" / "frontend" / "images"
#: The image config's timestamps. Layers keep the times their steps ran at, so two builds agree
#: when they share the daemon's cache (the tests build with llbgen first) or when the exporter
#: clamps file times to the epoch too (rewrite-timestamp=true: reproducible, but it rewrites
#: every layer, ~10 s per build here; one test does that).
EPOCH = "1700000000"
PLATFORMS = "linux/amd64,linux/arm64"
#: The host's CA bundle, for pip behind a TLS-intercepting proxy (an optional build secret).
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_TIMEOUT = 1800


# --- units ------------------------------------------------------------------------------------


def test_options_come_from_the_environment_as_buildkit_sets_them() -> None:
    env = {
        "BUILDKIT_FRONTEND_OPT_0": "filename=hello/image.py",
        "BUILDKIT_FRONTEND_OPT_1": "build-arg:A=x=y",
        "BUILDKIT_FRONTEND_OPT_2": "no-cache=",
        "PATH": "/bin",
    }
    assert options.from_environ(env) == {"filename": "hello/image.py", "build-arg:A": "x=y", "no-cache": ""}


def test_options_parse() -> None:
    opts = options.parse(
        {
            "filename": "./hello/image.py",
            "platform": "linux/amd64,linux/aarch64,linux/amd64",
            "target": "hello",
            "build-arg:SOURCE_DATE_EPOCH": "1",
            "no-cache": "",
            "source": "registry/frontend",
            "cmdline": "registry/frontend",
            "attest:provenance": "mode=min",
            "cache-imports": '[{"Type":"registry","Attrs":{"ref":"r/cache"}}]',
        }
    )
    assert opts.filename == "hello/image.py"
    assert opts.platforms == (Platform("linux", "amd64"), Platform("linux", "arm64"))
    assert opts.target == "hello"
    assert opts.args == {"SOURCE_DATE_EPOCH": "1"}
    assert opts.no_cache
    assert [(c.type, dict(c.attrs)) for c in opts.cache_imports] == [("registry", {"ref": "r/cache"})]
    assert options.parse({}) == FrontendOptions()


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"foo": "bar"}, "unknown option 'foo': llbgen's frontend takes filename, platform"),
        ({"label:a": "b"}, "option 'label:a' is not supported by llbgen's frontend: set image labels"),
        ({"context:base": "docker-image://x"}, "named build contexts are not supported"),
        ({"filename": "../image.py"}, "expected a path inside the dockerfile directory"),
        ({"filename": "Dockerfile"}, "an image definition is a Python file"),
        ({"platform": "linux"}, "option platform: invalid platform 'linux'"),
        ({"no-cache": "stage1"}, "llbgen images have no stages to pick"),
        ({"target": "a/b"}, "expected an image name"),
        ({"cache-imports": "{"}, "option cache-imports"),
    ],
)
def test_options_errors(opts: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError) as info:
        options.parse(opts)
    assert message in str(info.value)


def test_workers_from_environment() -> None:
    platforms = [{"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux", "variant": "v8"}]
    env = {"BUILDKIT_WORKERS": json.dumps([{"ID": "w", "Platforms": platforms}])}
    assert options.workers_from_environ(env) == [Platform("linux", "amd64"), Platform("linux", "arm64")]
    assert options.workers_from_environ({"BUILDKIT_WORKERS": "nonsense"}) == []


def test_layouts(tmp_path: Path) -> None:
    single = plan(FrontendOptions(), tmp_path)
    assert (single.name, single.tree, single.images, single.main_file, single.include, single.required) == (
        "image", tmp_path / "images" / "image", tmp_path / "images", None, (), "image.py"
    )
    renamed = plan(FrontendOptions(filename="bpftool.py"), tmp_path)
    assert (renamed.name, renamed.main_file) == ("bpftool", tmp_path / "images" / "bpftool" / "bpftool.py")
    named = plan(FrontendOptions(target="hello"), tmp_path)
    assert named.name == "hello" and named.tree == tmp_path / "images" / "hello"

    images = plan(FrontendOptions(filename="hello/image.py"), tmp_path)
    assert (images.name, images.tree, images.images, images.include, images.required) == (
        "hello", tmp_path / "src", tmp_path / "src", (), "hello/image.py"
    )
    other = plan(FrontendOptions(filename="hello/image.py", target="tool"), tmp_path)
    assert (other.name, other.required) == ("tool", "")
    root = plan(FrontendOptions(filename="images/hello/image.py"), tmp_path)
    assert (root.name, root.images, root.include) == ("hello", tmp_path / "src" / "images", ("images",))


def test_definition_errors_carry_their_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "image.py").write_text("import llbgen\n\nboom()\n")
    error = DefinitionError("NameError: name 'boom' is not defined", Location(str(tmp_path / "image.py"), 3))
    status = errors.status_of(error)
    assert status.message == "image.py:3: NameError: name 'boom' is not defined"
    assert status.code == grpc.StatusCode.UNKNOWN.value[0]
    (detail,) = status.details
    assert detail.type_url == "type.googleapis.com/errdefs.Source"
    # errdefs.Source{info: SourceInfo{filename, data, language}, ranges: [{start: {line: 3}, end: {line: 3}}]}
    assert b"image.py" in detail.value and b"boom()" in detail.value and b"Python" in detail.value
    plain = errors.status_of(UsageError("unknown option 'x'"))
    assert plain.message == "unknown option 'x'" and not plain.details
    bug = errors.status_of(RuntimeError("oops"))
    assert bug.message == "llbgen frontend: internal error: RuntimeError: oops"


# --- end to end on the stack ------------------------------------------------------------------


def _env(stack: dict[str, str]) -> dict[str, str]:
    return dict(os.environ, BUILDKIT_HOST=stack["BUILDKIT_HOST"], LLBGEN_CONFIG=stack["LLBGEN_CONFIG"])


def _run(
    argv: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = BUILD_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _digest(metadata: Path) -> str:
    return str(json.loads(metadata.read_text())["containerimage.digest"])


@pytest.fixture(scope="session")
def base_ref(stack: dict[str, str]) -> str:
    return str(json.loads((STACK_DIR / "bases.json").read_text())["debian:trixie"])


@pytest.fixture(scope="session")
def frontend_image(stack: dict[str, str], base_ref: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The frontend image from frontend.Dockerfile, pushed to the stack's registry; by digest."""
    registry = stack.get("LLBGEN_REGISTRY", "127.0.0.1:5000")
    name = f"{registry}/llbgen/frontend:test"
    metadata = tmp_path_factory.mktemp("frontend-image") / "metadata.json"
    argv = [
        "buildctl", "build", "--frontend", "dockerfile.v0",
        "--local", f"context={ROOT}", "--local", f"dockerfile={ROOT}",
        "--opt", "filename=frontend.Dockerfile", "--opt", f"build-arg:BASE={base_ref}",
        "--output", f"type=image,name={name},push=true", "--metadata-file", str(metadata),
    ]  # fmt: skip
    if CA_BUNDLE.is_file():
        argv += ["--secret", f"id=ca-certificates,src={CA_BUNDLE}"]
    proc = _run(argv, _env(stack))
    if proc.returncode != 0:
        pytest.fail(f"building frontend.Dockerfile failed:\n{proc.stderr[-4000:]}")
    return f"{name}@{_digest(metadata)}"


def _llbgen_build(
    env: dict[str, str], images: Path, name: str, context: Path, out: Path, base_ref: str, output_attrs: str = ""
) -> str:
    """``llbgen build`` of ``name`` for both platforms, to an OCI tarball; the index digest."""
    metadata = out.with_suffix(".json")
    argv = [
        sys.executable, "-m", "llbgen", "--images", str(images), "build", name,
        "--platform", PLATFORMS, "--arg", f"base:debian:trixie={base_ref}", "--arg", f"SOURCE_DATE_EPOCH={EPOCH}",
        "--local", f"context={context}", "--progress", "plain",
        "-o", f"type=oci,dest={out},source-date-epoch={EPOCH}{output_attrs}", "--metadata-file", str(metadata),
    ]  # fmt: skip
    proc = _run(argv, env, cwd=context)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _digest(metadata)


def _buildctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # buildctl grants entitlements only on request (llbgen build asks for what the graph uses).
    return _run(["buildctl", "build", "--progress", "plain", "--allow", "network.host", *args], env)


def _platforms_in(oci: Path) -> list[str]:
    with tarfile.open(oci) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        (entry,) = index["manifests"]
        blob = tar.extractfile("blobs/sha256/" + entry["digest"].split(":")[1])
        nested = json.load(blob)  # type: ignore[arg-type]
    return sorted(f"{m['platform']['os']}/{m['platform']['architecture']}" for m in nested["manifests"])


class Case:
    """An image to build both ways: where its definitions are, and how the frontend is told."""

    def __init__(self, name: str, images: Path, layout: str) -> None:
        self.name, self.images, self.layout = name, images, layout

    def __repr__(self) -> str:
        return f"{self.name}-{self.layout}"

    def dockerfile_dir(self, images: Path) -> Path:
        return images / self.name if self.layout == "single" else images

    @property
    def filename(self) -> str:
        return "image.py" if self.layout == "single" else f"{self.name}/image.py"


CASES = [
    Case("hello", ROOT / "images", "single"),
    # A project's images/ directory: ctx.image() of another image and sibling files.
    Case("tool", FIXTURES, "images"),
]
if (ROOT / "images" / "bpftool" / "image.py").is_file():
    # It shares code with other images (images/sources/, ctx.image("compilers")): the frontend
    # gets the whole images/ directory.
    CASES.append(Case("bpftool", ROOT / "images", "images"))


@pytest.fixture(scope="module")
def reference() -> Iterator[dict[str, str]]:
    """``llbgen build`` digests, by case: each image is built that way once per module."""
    yield {}


@pytest.fixture
def workspace(tmp_path: Path, case: Case) -> Path:
    """A copy of the case's images directory, to edit."""
    root = tmp_path / "project"
    shutil.copytree(case.images, root / "images", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _reference_digest(reference: dict[str, str], case: Case, env: dict[str, str], base_ref: str, tmp_path: Path) -> str:
    key = repr(case)
    if key not in reference:
        # The project root is the context: definitions name files relative to it.
        reference[key] = _llbgen_build(env, case.images, case.name, ROOT, tmp_path / "llbgen.tar", base_ref)
    return reference[key]


@pytest.mark.buildkit
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_gateway_frontend_builds_the_same_image(
    case: Case, stack: dict[str, str], frontend_image: str, base_ref: str, reference: dict[str, str], tmp_path: Path
) -> None:
    env = _env(stack)
    expected = _reference_digest(reference, case, env, base_ref, tmp_path)
    out = tmp_path / "frontend.tar"
    proc = _buildctl(
        env,
        "--frontend", "gateway.v0", "--opt", f"source={frontend_image}",
        "--local", f"dockerfile={case.dockerfile_dir(case.images)}", "--opt", f"filename={case.filename}",
        "--local", f"context={ROOT}", "--opt", f"platform={PLATFORMS}",
        "--opt", f"build-arg:base:debian:trixie={base_ref}", "--opt", f"build-arg:SOURCE_DATE_EPOCH={EPOCH}",
        "--output", f"type=oci,dest={out}", "--metadata-file", str(tmp_path / "frontend.json"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _digest(tmp_path / "frontend.json") == expected
    assert _platforms_in(out) == ["linux/amd64", "linux/arm64"]


@pytest.mark.buildkit
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_syntax_directive_builds_the_same_image(
    case: Case,
    stack: dict[str, str],
    frontend_image: str,
    base_ref: str,
    reference: dict[str, str],
    workspace: Path,
    tmp_path: Path,
) -> None:
    env = _env(stack)
    expected = _reference_digest(reference, case, env, base_ref, tmp_path)
    definition = workspace / "images" / case.name / "image.py"
    definition.write_text(f"# syntax={frontend_image}\n" + definition.read_text())
    proc = _buildctl(
        env,
        "--frontend", "dockerfile.v0",
        "--local", f"dockerfile={case.dockerfile_dir(workspace / 'images')}", "--opt", f"filename={case.filename}",
        "--local", f"context={ROOT}", "--opt", f"platform={PLATFORMS}",
        "--opt", f"build-arg:base:debian:trixie={base_ref}", "--opt", f"build-arg:SOURCE_DATE_EPOCH={EPOCH}",
        "--output", f"type=oci,dest={tmp_path / 'syntax.tar'}", "--metadata-file", str(tmp_path / "syntax.json"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _digest(tmp_path / "syntax.json") == expected


@pytest.mark.buildkit
def test_same_image_without_the_cache(
    stack: dict[str, str], frontend_image: str, base_ref: str, tmp_path: Path
) -> None:
    """Every step run again through the frontend, file times clamped: still llbgen build's image."""
    env = _env(stack)
    expected = _llbgen_build(
        env, ROOT / "images", "hello", ROOT, tmp_path / "llbgen.tar", base_ref, ",rewrite-timestamp=true"
    )
    proc = _buildctl(
        env,
        "--frontend", "gateway.v0", "--opt", f"source={frontend_image}", "--no-cache",
        "--local", f"dockerfile={ROOT / 'images' / 'hello'}", "--local", f"context={ROOT}",
        "--opt", f"platform={PLATFORMS}",
        "--opt", f"build-arg:base:debian:trixie={base_ref}", "--opt", f"build-arg:SOURCE_DATE_EPOCH={EPOCH}",
        "--output", f"type=oci,dest={tmp_path / 'frontend.tar'},rewrite-timestamp=true",
        "--metadata-file", str(tmp_path / "frontend.json"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "record the build architecture" in _steps(proc.stderr)
    assert "record the build architecture" not in _steps(proc.stderr, cached=True)
    assert _digest(tmp_path / "frontend.json") == expected


def _steps(progress: str, cached: bool = False) -> set[str]:
    """Names of the steps in buildctl's plain progress (only those it reports CACHED)."""
    names: dict[str, str] = {}
    hits: set[str] = set()
    for line in progress.splitlines():
        number, _, rest = line.partition(" ")
        if not number.startswith("#") or not rest:
            continue
        if rest == "CACHED":
            hits.add(number)
        elif number not in names and not rest[0].isdigit():
            names[number] = rest
    return {name for number, name in names.items() if not cached or number in hits}


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.buildkit
@pytest.mark.parametrize("via", ["gateway", "syntax"])
def test_broken_definition_reports_its_file_and_line(
    via: str, stack: dict[str, str], frontend_image: str, base_ref: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(FIXTURES / "broken", broken)
    line = 12
    if via == "gateway":
        frontend = ["--frontend", "gateway.v0", "--opt", f"source={frontend_image}"]
    else:
        definition = broken / "image.py"
        definition.write_text(f"# syntax={frontend_image}\n" + definition.read_text())
        frontend, line = ["--frontend", "dockerfile.v0"], line + 1
    proc = _buildctl(
        _env(stack), *frontend, "--local", f"dockerfile={broken}", "--opt", "filename=image.py",
        "--opt", f"build-arg:base:debian:trixie={base_ref}",
    )  # fmt: skip
    assert proc.returncode != 0
    assert _error_lines(proc.stderr) == [f"error: failed to solve: image.py:{line}: KeyError: 'speed'"], proc.stderr
    # buildctl prints the lines around it, from the errdefs.Source detail.
    assert f"image.py:{line}\n" in proc.stderr
    assert f" {line} | >>>     return base.with_env(\"MODE\", flags()[\"speed\"])" in proc.stderr


@pytest.mark.buildkit
@pytest.mark.parametrize(
    ("files", "args", "message"),
    [
        pytest.param(
            {"image.py": "import llbgen\n\ndef build(ctx)\n    return None\n"}, [],
            "error: failed to solve: image.py:3: syntax error: expected ':'", id="syntax-error",
        ),
        pytest.param(
            {"image.py": "def build(ctx):\n    pass\n"}, ["--opt", "filename=nope.py"],
            "error: failed to solve: cannot find the image definition 'nope.py' in the dockerfile directory "
            "(--local dockerfile=DIR); it holds: image.py", id="missing-file",
        ),
        pytest.param(
            {"image.py": "def build(ctx):\n    pass\n"}, ["--opt", "frobnicate=1"],
            "error: failed to solve: unknown option 'frobnicate': llbgen's frontend takes filename, platform, "
            "target, no-cache, build-arg:NAME", id="unknown-option",
        ),
        pytest.param(
            {"image.py": "def build(ctx):\n    return ctx.base_image('debian:trixie')\n"}, [],
            "error: failed to solve: image.py:2: no pinned reference for base image 'debian:trixie': pass one as a "
            "build argument, --opt build-arg:base:debian:trixie=REF@sha256:...", id="no-base-pin",
        ),
        pytest.param(
            {"image.py": "def build(ctx):\n\n    return ctx.image('greeter')\n"}, [],
            "error: failed to solve: image.py:3: unknown image 'greeter'; known images: image. llbgen's frontend "
            "sees only the files of the dockerfile directory", id="other-image-absent",
        ),
        pytest.param(
            {"app/image.py": "def build(ctx):\n    pass\n"}, ["--opt", "filename=app/image.py", "--opt", "target=nope"],
            "error: failed to solve: unknown image 'nope'; known images: app.", id="unknown-target",
        ),
        pytest.param(
            {"image.py": "def build(ctx):\n    return 42\n"}, [],
            "error: failed to solve: image.py:1: build() of image 'image' returned int, not a llbgen.State",
            id="not-a-state",
        ),
    ],
)
def test_frontend_errors_are_one_clear_message(
    files: dict[str, str], args: list[str], message: str, stack: dict[str, str], frontend_image: str, tmp_path: Path
) -> None:
    for path, text in files.items():
        (tmp_path / "def" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "def" / path).write_text(text)
    proc = _buildctl(
        _env(stack), "--frontend", "gateway.v0", "--opt", f"source={frontend_image}",
        "--local", f"dockerfile={tmp_path / 'def'}", *args,
    )  # fmt: skip
    assert proc.returncode != 0
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr


@pytest.mark.buildkit
def test_build_args_platform_and_no_cache(
    stack: dict[str, str], frontend_image: str, base_ref: str, tmp_path: Path
) -> None:
    def build(*extra: str) -> subprocess.CompletedProcess[str]:
        return _buildctl(
            _env(stack), "--frontend", "gateway.v0", "--opt", f"source={frontend_image}",
            "--local", f"dockerfile={FIXTURES / 'greeter'}", "--opt", "platform=linux/arm64",
            "--opt", f"build-arg:base:debian:trixie={base_ref}", "--opt", "build-arg:GREETING=hi there",
            "--output", f"type=local,dest={tmp_path / 'out'}", *extra,
        )  # fmt: skip

    proc = build()
    assert proc.returncode == 0, proc.stderr[-4000:]
    # One platform: a single result, exported without a platform directory.
    assert (tmp_path / "out" / "usr" / "local" / "bin" / "greet").read_text() == "#!/bin/sh\necho 'hi there'\n"
    again = build("--no-cache")
    assert again.returncode == 0, again.stderr[-4000:]
    assert "add the greet script" in _steps(again.stderr)
    assert "add the greet script" not in _steps(again.stderr, cached=True)


NOISY = '''
import os
import sys

import llbgen

print("printed while the definition is imported")
os.write(1, b"written to fd 1 directly\\n")


def build(ctx):
    print("printed by build()", file=sys.stdout, flush=True)
    return llbgen.scratch().file(llbgen.mkfile("/hello", 0o644, "hi\\n"))
'''


@pytest.mark.buildkit
def test_definition_output_stays_off_the_protocol_stream(
    stack: dict[str, str], frontend_image: str, tmp_path: Path
) -> None:
    (tmp_path / "def").mkdir()
    (tmp_path / "def" / "image.py").write_text(NOISY)
    proc = _buildctl(
        _env(stack), "--frontend", "gateway.v0", "--opt", f"source={frontend_image}",
        "--local", f"dockerfile={tmp_path / 'def'}", "--output", f"type=local,dest={tmp_path / 'out'}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "out" / "hello").read_text() == "hi\n"

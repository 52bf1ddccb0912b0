"""Structure tests of the maker image: `llbgen test maker` (both platforms, arm64 under QEMU).

Each tool's version: the pinned ones exactly, BuildKit's and buildx's as the stack pins them
(scripts/install-buildkit, scripts/stack-buildx: read from there, not from image.py), Debian's
from trixie; each Go program built for the target's machine (its ELF header, since a binary of
the build platform would run here too); llbgen working (its compiled dependencies load in the
target's Python, and it marshals a definition); docker-credential-env answering from the
environment as the docker config's credential store. test/spec.yaml has the image's configuration.
"""

from __future__ import annotations

import re
from pathlib import Path

import llbgen
from llbgen.structure import Check, CommandTest, FileExistenceTest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def stack_pin(script: str, variable: str) -> str:
    """A version the stack pins, from its script (``VARIABLE=v1.2.3``)."""
    found = re.search(rf"^{variable}=(v[0-9][^\s#]*)", (SCRIPTS / script).read_text(), re.M)
    if not found:
        raise ValueError(f"scripts/{script} pins no {variable}")
    return found[1]


BUILDKIT = stack_pin("install-buildkit", "BUILDKIT_VERSION")
BUILDX = stack_pin("stack-buildx", "BUILDX_VERSION")
CRANE = "v0.22.1"
# The ELF e_machine bytes (offset 18, little-endian) of each architecture.
E_MACHINE = {"amd64": "3e 00", "arm64": "b7 00"}
UNAME = {"amd64": "x86_64", "arm64": "aarch64"}

HELLO = """
import llbgen

def build(ctx):
    return llbgen.scratch().file(llbgen.mkfile("/hello", 0o644, "hello\\n"))
"""


def version(tool: str, argv: list[str], pattern: str) -> CommandTest:
    return CommandTest(f"{tool} version", argv, expected_output=[pattern])


def tests(ctx: llbgen.BuildContext) -> list[Check]:
    arch = ctx.target_platform.architecture
    escape = re.escape
    checks: list[Check] = [
        # Debian trixie's packages
        version("bash", ["bash", "--version"], r"^GNU bash, version 5\.2\."),
        version("make", ["make", "--version"], r"^GNU Make 4\.4"),
        version("git", ["git", "--version"], r"^git version 2\.47\."),
        version("jq", ["jq", "--version"], r"^jq-1\.7\b"),
        version("curl", ["curl", "--version"], r"^curl 8\.14\."),
        version("shellcheck", ["shellcheck", "--version"], r"(?m)^version: 0\.10\."),
        version("docker", ["docker", "--version"], r"^Docker version 26\.1\."),
        version("python3", ["python3", "--version"], r"^Python 3\.13\."),
        # the pinned Go programs
        version("buildctl", ["buildctl", "--version"], rf"^buildctl github\.com/moby/buildkit {escape(BUILDKIT)}\b"),
        version("buildx", ["buildx", "version"], rf"^github\.com/docker/buildx {escape(BUILDX)}\b"),
        version("docker buildx", ["docker", "buildx", "version"], rf"^github\.com/docker/buildx {escape(BUILDX)}\b"),
        version("crane", ["crane", "version"], rf"^{escape(CRANE)}$"),
        # llbgen from this repository, its compiled dependencies loaded by the target's Python
        version("llbgen", ["python3", "-c", "import importlib.metadata as m; print(m.version('llbgen'))"], r"^0\.1\.0$"),
        CommandTest(
            "llbgen marshals a definition",
            ["llbgen", "llb", "hello", "--format", "json"],
            dir="/tmp/project",
            files={"/tmp/project/images/hello/image.py": HELLO},
            expected_output=[r'"mkfile":\{"path":"/hello"', r'"Digest":"sha256:[0-9a-f]{64}"'],
        ),
        CommandTest(
            "grpc and protobuf are the target's",
            ["python3", "-c", "import platform, grpc, yaml; from google.protobuf.internal import api_implementation as a; "
             "print(platform.machine(), grpc.__version__, a.Type(), yaml.__with_libyaml__)"],
            expected_output=[rf"^{UNAME[arch]} 1\.85\.1 upb True$"],
        ),  # fmt: skip
        # docker-credential-env as the credential store
        CommandTest(
            "docker-credential-env answers from the environment",
            ["sh", "-c", "echo 127.0.0.1:5000 | docker-credential-env get"],
            env={"ANY_REGISTRY_USERNAME": "ci", "ANY_REGISTRY_PASSWORD": "from-the-env"},
            expected_output=[r'"Username": "ci"', r'"Secret": "from-the-env"'],
        ),
        CommandTest(
            "no variables: not found, so anonymous",
            ["sh", "-c", "echo https://index.docker.io/v1/ | docker-credential-env get"],
            exit_code=1,
            expected_output=["^credentials not found in native keychain$"],
        ),
        FileExistenceTest("buildx is a docker CLI plugin", "/usr/local/libexec/docker/cli-plugins/docker-buildx",
                          permissions="-rwxr-xr-x", uid=0, gid=0),  # fmt: skip
    ]
    for binary in ("buildctl", "crane", "docker-buildx"):
        path = f"/usr/local/libexec/docker/cli-plugins/{binary}" if binary == "docker-buildx" else f"/usr/local/bin/{binary}"
        checks.append(
            CommandTest(
                f"{binary} is built for {arch}",
                ["od", "-An", "-tx1", "-j18", "-N2", path],
                expected_output=[rf"^\s*{E_MACHINE[arch]}\s*$"],
            )
        )
    return checks

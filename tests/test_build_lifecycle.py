"""How builds start, end, fail and share a daemon: errors, Ctrl-C, a dying daemon, concurrency, cache."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import pytest

from llbgen.client.connection import PROBE_TIMEOUT
from tests.conftest import Cli

pytestmark = pytest.mark.buildkit  # every test here builds on the stack's daemon

SLEEPER = '''
import llbgen

def build(ctx):
    base = ctx.base_image("debian:trixie")
    return base.run(["sh", "-c", "echo started; sleep " + ctx.arg("SECONDS", "300")], name="sleeper", ignore_cache=True).root
'''

FAILING = '''
import llbgen

def build(ctx):
    base = ctx.base_image("debian:trixie")
    ready = base.run("sh -c 'echo preparing'").root
    return ready.run(
        "sh -c 'echo first line; echo second line >&2; exit 3'",
    ).root
'''


def start(cli: Cli, *args: str) -> subprocess.Popen[str]:
    """llbgen as a terminal starts it: with SIGINT's default action, which Python turns into
    KeyboardInterrupt. (A shell's background job, such as a CI runner's, may run this suite with
    SIGINT ignored; a child inherits that, and Python leaves an ignored SIGINT ignored.)"""
    return subprocess.Popen(
        [sys.executable, "-m", "llbgen", *args],
        cwd=cli.cwd,
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def step_lines(stderr: str, needle: str) -> list[str]:
    """The plain-progress lines of the step whose name contains ``needle``."""
    number = next(
        line.split()[0] for line in stderr.splitlines() if line.startswith("#") and needle in line
    )
    return [line for line in stderr.splitlines() if line.split(" ", 1)[0] == number]


def sleeping(marker: str) -> bool:
    return subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True).returncode == 0


def test_failed_step_reports_definition_line_command_exit_code_and_log(project: Cli) -> None:
    path = project.write_image("failing", FAILING)
    result = project("build", "failing", "--platform", "linux/amd64", "--progress", "plain")
    assert result.code == 1
    report = result.stderr[result.stderr.index("llbgen: error:") :]
    line = next(n for n, t in enumerate(path.read_text().splitlines(), 1) if "ready.run(" in t)
    assert f"images/failing/image.py:{line}" in report
    assert "exit 3" in report and "exit code: 3" in report
    assert "first line" in report and "second line" in report
    assert "Traceback" not in result.stderr


def test_ctrl_c_cancels_the_build_on_the_daemon(project: Cli) -> None:
    project.write_image("sleeper", SLEEPER)
    marker = str(300 + int(uuid.uuid4().int % 1000))
    # PYTHONFAULTHANDLER: a client that does not exit is made to print where each thread is
    proc = start(attrs.evolve(project, env={**project.env, "PYTHONFAULTHANDLER": "1"}),
                 "build", "sleeper", "--progress", "plain", "--arg", f"SECONDS={marker}")  # fmt: skip
    try:
        wait_for(lambda: sleeping(marker), 120, "the build step to start")
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            _, stderr = proc.communicate(timeout=30)
            pytest.fail(f"llbgen did not exit within 30 s of Ctrl-C; its threads:\n{stderr[-6000:]}")
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    wait_for(lambda: not sleeping(marker), 15, "the daemon to stop the cancelled step")


@pytest.fixture
def private_daemon(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A buildkitd of this test's own, so killing it disturbs no other test."""
    state = tmp_path / "bk"
    address = f"unix://{state}/buildkitd.sock"
    state.mkdir()
    proc = subprocess.Popen(
        ["buildkitd", "--addr", address, "--root", str(state / "root"),
         "--config", str(Path(os.environ.get("LLBGEN_STACK_DIR", "/var/lib/llbgen-stack")) / "buildkitd.toml")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(
            lambda: subprocess.run(["buildctl", "--addr", address, "debug", "workers"], capture_output=True).returncode == 0,
            30,
            "the private buildkitd",
        )
        yield address, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # A daemon killed mid-build leaves its container's mounts behind.
        with open("/proc/self/mountinfo") as mountinfo:
            mounts = [line.split()[4] for line in mountinfo if line.split()[4].startswith(str(state))]
        for mount in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)


def test_killed_daemon_gives_a_clear_error_quickly(project: Cli, private_daemon) -> None:  # type: ignore[no-untyped-def]
    address, daemon = private_daemon
    project.write_image("sleeper", SLEEPER)
    marker = str(1300 + int(uuid.uuid4().int % 1000))
    proc = start(project, "build", "sleeper", "--progress", "plain", "--addr", address, "--arg", f"SECONDS={marker}")
    try:
        wait_for(lambda: sleeping(marker), 180, "the build step to start")
        daemon.kill()
        _, stderr = proc.communicate(timeout=60)  # a client that waits for a timer would hang here
    finally:
        proc.kill()
        subprocess.run(["pkill", "-f", f"sleep {marker}"])
    assert proc.returncode == 1, stderr
    # What makes it quick is what it reacts to: the closed connection, not a deadline or a keepalive
    # timer (a wall clock here would measure the machine's load as much as llbgen).
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("llbgen: error: lost the connection to BuildKit: "), last
    assert not re.search("deadline|keepalive|timed? ?out", last, re.I), last
    assert "Traceback" not in stderr


def test_four_builds_at_once_on_one_daemon(project: Cli, tmp_path: Path) -> None:
    project.write_image(
        "numbered",
        '''
import llbgen

def build(ctx):
    base = ctx.base_image("debian:trixie")
    n = ctx.arg("N")
    return base.run(["sh", "-c", f"sleep 2; echo {n} > /n"]).root
''',
    )
    def run(n: int) -> tuple[int, str, str]:
        out = tmp_path / f"out{n}"
        result = project(
            "build", "numbered", "--platform", "linux/amd64", "--progress", "plain",
            "--arg", f"N={n}-{uuid.uuid4().hex}", "--output", f"type=tar,dest={out}.tar",
        )  # fmt: skip
        return result.code, result.stderr, str(out)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(4)))
    for code, stderr, _ in results:
        assert code == 0, stderr
    import tarfile

    for n, (_, _, out) in enumerate(results):
        with tarfile.open(out + ".tar") as tar:
            assert tar.extractfile("n").read().decode().startswith(f"{n}-")  # type: ignore[union-attr]


def test_unreachable_daemon_is_one_line_within_seconds(project: Cli, tmp_path: Path) -> None:
    for address in (f"unix://{tmp_path}/nothing.sock", "tcp://127.0.0.1:1"):
        result = project("build", "hello", "--addr", address)
        assert result.code == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot reach BuildKit" in lines[0] and address in lines[0], result.stderr
        # The refused connection answered the probe, not its deadline (PROBE_TIMEOUT, the promised
        # "within 10 s"): llbgen did not wait for it. (No wall clock: it would race a loaded machine.)
        assert f"did not answer within {PROBE_TIMEOUT:.0f}s" not in result.stderr and PROBE_TIMEOUT <= 10


def test_tls_failure_is_explained(project: Cli, stack: dict[str, str], tmp_path: Path) -> None:
    # The registry speaks plain HTTP: a TLS handshake with it fails.
    ca = tmp_path / "ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k.pem"),
         "-out", str(ca), "-days", "1", "-subj", "/CN=test"],
        check=True, capture_output=True,
    )  # fmt: skip
    result = project("build", "hello", "--addr", "tcp://127.0.0.1:5000", "--tlscacert", str(ca))
    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "TLS" in lines[0], result.stderr


def test_missing_platform_is_explained(project: Cli) -> None:
    project.write_image("anyarch", "import llbgen\ndef build(ctx):\n    return llbgen.scratch().file(llbgen.mkfile('/a', 0o644, 'a'))\n")
    result = project("build", "anyarch", "--platform", "linux/riscv64")
    assert result.code == 1
    assert "cannot build for linux/riscv64" in result.stderr and "QEMU" in result.stderr


def test_embedded_daemon_starts_is_reused_and_stops(project: Cli, tmp_path: Path) -> None:
    project.env.pop("BUILDKIT_HOST")
    project.env["XDG_DATA_HOME"] = str(tmp_path / "data")
    project.write_image("file", "import llbgen\ndef build(ctx):\n    return llbgen.scratch().file(llbgen.mkfile('/a', 0o644, 'a'))\n")
    try:
        first = project("build", "file", "--progress", "plain", "--output", f"type=local,dest={tmp_path / 'o1'}")
        assert first.code == 0, first.stderr
        status = project("daemon", "status")
        assert status.code == 0 and "running" in status.text
        pid = (tmp_path / "data/llbgen/buildkitd/buildkitd.pid").read_text()
        second = project("build", "file", "--progress", "plain", "--output", f"type=local,dest={tmp_path / 'o2'}")
        assert second.code == 0 and "CACHED" in second.stderr
        assert (tmp_path / "data/llbgen/buildkitd/buildkitd.pid").read_text() == pid
        assert (tmp_path / "o2/a").read_text() == "a"
    finally:
        stop = project("daemon", "stop")
    assert stop.code == 0 and "stopped" in stop.text
    after = project("daemon", "status")
    assert after.code == 3 and "not running" in after.text


def test_no_buildkitd_says_what_to_install(project: Cli, tmp_path: Path) -> None:
    project.env.pop("BUILDKIT_HOST")
    project.env["XDG_DATA_HOME"] = str(tmp_path / "data")
    project.env["PATH"] = "/usr/bin:/bin"
    project.env["PYTHONPATH"] = os.pathsep.join(sys.path)
    result = project("build", "hello")
    assert result.code == 1
    assert "no buildkitd was found" in result.stderr and "scripts/install-buildkit" in result.stderr


def test_second_build_is_cached_and_no_cache_runs_again(project: Cli) -> None:
    project.write_image(
        "cachable",
        f'''
import llbgen

def build(ctx):
    return ctx.base_image("debian:trixie").run("sh -c 'echo {uuid.uuid4().hex} > /stamp'").root
''',
    )
    first = project("build", "cachable", "--platform", "linux/amd64", "--progress", "plain")
    second = project("build", "cachable", "--platform", "linux/amd64", "--progress", "plain")
    third = project("build", "cachable", "--platform", "linux/amd64", "--progress", "plain", "--no-cache")
    assert first.code == second.code == third.code == 0
    assert step_lines(first.stderr, "> /stamp")[-1].split()[1] == "DONE"
    assert step_lines(second.stderr, "> /stamp")[-1].split()[1] == "CACHED"
    assert step_lines(third.stderr, "> /stamp")[-1].split()[1] == "DONE"


def test_registry_cache_export_and_import(project: Cli, stack: dict[str, str], private_daemon) -> None:  # type: ignore[no-untyped-def]
    address, _ = private_daemon
    registry = stack["LLBGEN_REGISTRY"]
    cache_ref = f"{registry}/llbgen-test/cache:{uuid.uuid4().hex[:12]}"
    project.write_image(
        "cachable",
        f'''
import llbgen

def build(ctx):
    return ctx.base_image("debian:trixie").run("sh -c 'echo {uuid.uuid4().hex} > /stamp'").root
''',
    )
    export = project(
        "build", "cachable", "--platform", "linux/amd64", "--progress", "plain",
        "--cache-to", f"type=registry,ref={cache_ref},mode=max",
    )  # fmt: skip
    assert export.code == 0, export.stderr
    # A daemon that never ran the step finds it in the registry cache.
    imported = project(
        "build", "cachable", "--platform", "linux/amd64", "--progress", "plain",
        "--addr", address, "--cache-from", f"type=registry,ref={cache_ref}",
    )  # fmt: skip
    assert imported.code == 0, imported.stderr
    assert step_lines(imported.stderr, "> /stamp")[-1].split()[1] == "CACHED"


def test_docker_container_address_goes_through_dial_stdio(project: Cli, stack: dict[str, str], tmp_path: Path) -> None:
    """docker-container://NAME runs 'docker exec -i NAME buildctl dial-stdio' per connection.

    There is no Docker engine here, so a stand-in 'docker' checks the arguments and runs the same
    'buildctl dial-stdio' against the stack's daemon: the bytes take the real path.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    docker = bin_dir / "docker"
    docker.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        '[ "$1 $2 $3 $4 $5" = "exec -i buildkitd-box buildctl dial-stdio" ] || exit 64\n'
        f'exec buildctl --addr {stack["BUILDKIT_HOST"]} dial-stdio\n'
    )
    docker.chmod(0o755)
    project.env["PATH"] = f"{bin_dir}{os.pathsep}{project.env['PATH']}"
    project.write_image("file", "import llbgen\ndef build(ctx):\n    return llbgen.scratch().file(llbgen.mkfile('/a', 0o644, 'via dial-stdio'))\n")
    result = project(
        "build", "file", "--addr", "docker-container://buildkitd-box", "--progress", "plain",
        "--output", f"type=local,dest={tmp_path / 'out'}",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert (tmp_path / "out/a").read_text() == "via dial-stdio"
    assert "exec -i buildkitd-box buildctl dial-stdio" in log.read_text()

"""The resident llbgen (``llbgen resident start``): commands handed over to a forked copy of a
process that has everything imported, run as they would have run in-process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llbgen.resident import fingerprint, runtime_dir
from tests.conftest import Cli

# An image whose definition reports where and how it runs (on stderr: stdout is the definition).
PROBE = """\
import json, os, sys, tempfile, time
import llbgen

def build(ctx):
    if ctx.arg("SLEEP"):
        print("sleeping", file=sys.stderr, flush=True)
        time.sleep(float(ctx.arg("SLEEP")))
    umask = os.umask(0)
    os.umask(umask)
    print("PROBE " + json.dumps({
        "ppid": os.getppid(), "cwd": os.getcwd(), "marker": os.environ.get("PROBE_MARKER"), "umask": umask,
        "tmp": tempfile.gettempdir(),
    }), file=sys.stderr)
    return llbgen.scratch().file(llbgen.mkfile("/probe", 0o644, b"probe"))
"""


def probe(stderr: str) -> dict[str, object]:
    line = next(line for line in stderr.splitlines() if line.startswith("PROBE "))
    return json.loads(line.removeprefix("PROBE "))  # type: ignore[no-any-return]


def start_resident(cli: Cli, tmp_path: Path, **env: str) -> tuple[Path, int]:
    """Starts a resident llbgen for ``cli`` (private XDG_RUNTIME_DIR, ``env``); its socket and pid."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    cli.env.update(XDG_RUNTIME_DIR=str(runtime), LLBGEN_RESIDENT="on", **env)
    cli.write_image("probe", PROBE)
    started = cli("resident", "start")
    assert started.code == 0, started.stderr
    socket = Path(started.text.strip())
    return socket, int(socket.with_suffix(".pid").read_text())


@pytest.fixture
def resident(cli: Cli, tmp_path: Path) -> Iterator[tuple[Cli, int]]:
    """``cli`` with a resident llbgen of its own; yields its pid."""
    # Short: the waiting child binds a session's socket in it (tmp_path is too long for one).
    resident_tmp = tempfile.mkdtemp(prefix="llbgen-test-")
    _, pid = start_resident(cli, tmp_path, DOCKER_HUB_PASSWORD="hunter2", TMPDIR=resident_tmp)
    try:
        yield cli, pid
    finally:
        cli("resident", "stop")
        shutil.rmtree(resident_tmp, ignore_errors=True)


def test_commands_run_in_the_resident_process_as_they_would_in_process(resident: tuple[Cli, int]) -> None:
    cli, pid = resident
    cli.env["PROBE_MARKER"] = "from the client"
    (cli.cwd / "sub").mkdir()
    # Not the directory the resident process started with (its waiting child made a session's
    # server there already).
    cli.env["TMPDIR"] = str(cli.cwd / "sub")
    old = os.umask(0o027)
    try:
        there = subprocess.run(
            [sys.executable, "-m", "llbgen", "--images", "../images", "llb", "probe", "--format", "json"],
            cwd=cli.cwd / "sub", env=cli.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        here = subprocess.run(
            [sys.executable, "-m", "llbgen", "--images", "../images", "llb", "probe", "--format", "json"],
            cwd=cli.cwd / "sub", env={**cli.env, "LLBGEN_RESIDENT": "off"}, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
    finally:
        os.umask(old)
    assert there.returncode == here.returncode == 0, there.stderr + here.stderr
    assert there.stdout == here.stdout and there.stdout.startswith("{")
    remote, local = probe(there.stderr), probe(here.stderr)
    assert remote["ppid"] == pid and local["ppid"] != pid  # a child of the resident process
    assert remote["cwd"] == local["cwd"] == str(cli.cwd / "sub")
    assert remote["marker"] == local["marker"] == "from the client"
    assert remote["umask"] == local["umask"] == 0o027
    assert remote["tmp"] == local["tmp"] == str(cli.cwd / "sub")


def test_the_resident_process_keeps_no_credentials_from_the_shell_that_started_it(
    resident: tuple[Cli, int],
) -> None:
    _, pid = resident
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert not [v for v in environ if v.startswith(b"DOCKER_HUB_PASSWORD=")]
    assert any(v.startswith(b"PATH=") for v in environ)


def test_errors_and_exit_statuses_are_the_commands_own(resident: tuple[Cli, int]) -> None:
    cli, _ = resident
    unknown = cli("llb", "nope")
    assert unknown.code == 2 and unknown.stderr.startswith("llbgen: error: unknown image 'nope'"), unknown
    cli.write_image("broken", "import llbgen\ndef build(ctx):\n    return {}['missing']\n")
    broken = cli("llb", "broken")
    assert broken.code == 1, broken
    assert broken.stderr.startswith("llbgen: error: images/broken/image.py:3: "), broken.stderr
    assert "Traceback" not in broken.stderr
    usage = cli("llb", "probe", "--frobnicate")
    assert usage.code == 2 and "--frobnicate" in usage.stderr


def test_ctrl_c_reaches_the_command(resident: tuple[Cli, int]) -> None:
    cli, _ = resident
    proc = subprocess.Popen(
        [sys.executable, "-m", "llbgen", "llb", "probe", "--arg", "SLEEP=30"],
        cwd=cli.cwd, env=cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    assert proc.stderr.readline().strip() == "sleeping"
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 130
    assert time.monotonic() - start < 5
    assert "llbgen: interrupted" in proc.stderr.read()


def test_stop_and_status(resident: tuple[Cli, int]) -> None:
    cli, pid = resident
    resident_tmp = Path(cli.env["TMPDIR"])
    assert cli("resident", "status").code == 0
    assert cli("llb", "probe").code == 0
    # The waiting child has (or soon has) a session's server ready, on a socket of its own...
    deadline = time.monotonic() + 5
    while not list(resident_tmp.glob("llbgen-session-*/session.sock")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(list(resident_tmp.glob("llbgen-session-*/session.sock"))) == 1
    assert cli("resident", "stop").text == "stopped\n"
    # ...and removes it when it is stopped, as the child that ran `llb` (no session) did.
    deadline = time.monotonic() + 5
    while list(resident_tmp.glob("llbgen-session-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list(resident_tmp.glob("llbgen-session-*"))
    status = cli("resident", "status")
    assert status.code == 3 and status.text.startswith("not running: ")
    # commands run in-process again
    result = cli("llb", "probe")
    assert result.code == 0 and probe(result.stderr)["ppid"] != pid


def test_a_waiting_child_that_cannot_get_ready_still_runs_commands(cli: Cli, tmp_path: Path) -> None:
    """Getting ready ahead only saves time: what fails there (an address that cannot be dialled)
    is logged and the commands run all the same; a $TMPDIR too long for a socket moves the
    session's to /tmp."""
    long_tmp = tmp_path / ("t" * 100)
    long_tmp.mkdir()
    socket, pid = start_resident(cli, tmp_path, TMPDIR=str(long_tmp), BUILDKIT_HOST="tcp://no-port")
    try:
        result = cli("llb", "probe")
        assert result.code == 0, result.stderr
        assert probe(result.stderr)["ppid"] == pid
        log = socket.with_suffix(".log").read_text()
        assert "not connecting ahead to tcp://no-port: invalid address" in log
    finally:
        cli("resident", "stop")


def test_the_fingerprint_follows_the_code(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("A = 1\n")
    (package / "sub" / "b.py").write_text("B = 1\n")
    first = fingerprint(str(package))
    assert fingerprint(str(package)) == first
    (package / "sub" / "b.py").write_text("B = 22\n")
    assert fingerprint(str(package)) != first
    (package / "__pycache__").mkdir()
    second = fingerprint(str(package))
    (package / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    (package / "notes.txt").write_text("not code\n")
    assert fingerprint(str(package)) == second


def test_the_runtime_directory_must_be_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert Path(runtime_dir()) == tmp_path / "llbgen"
    assert (tmp_path / "llbgen").stat().st_mode & 0o777 == 0o700
    os.chmod(tmp_path / "llbgen", 0o755)
    with pytest.raises(PermissionError, match="mode 0700"):
        runtime_dir()


@pytest.mark.buildkit
def test_a_build_through_the_resident_process(project: Cli, tmp_path: Path) -> None:
    """On the stack: a multi-platform build with a local export, progress on the client's stderr."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    project.env.update(XDG_RUNTIME_DIR=str(runtime), LLBGEN_RESIDENT="on")
    started = project("resident", "start")
    assert started.code == 0
    log = Path(started.text.strip()).with_suffix(".log")
    try:
        out = tmp_path / "out"
        result = project(
            "build", "hello", "--platform", "linux/amd64,linux/arm64", "--progress", "plain",
            "-o", f"type=local,dest={out}",
        )  # fmt: skip
        assert result.code == 0, result.stderr[-3000:]
        assert "exporting to client directory" in result.stderr
        for platform, arch in (("linux_amd64", "x86_64"), ("linux_arm64", "aarch64")):
            assert (out / platform / "usr" / "share" / "hello" / "arch").read_text().strip() == arch
        assert os.access(out / "linux_amd64" / "usr" / "local" / "bin" / "hello", os.X_OK)
        assert ": llbgen build\n" in log.read_text()  # it was the resident process that built it
    finally:
        project("resident", "stop")


def test_a_client_in_a_deleted_directory_or_without_stdin_runs_in_process(resident: tuple[Cli, int]) -> None:
    cli, pid = resident
    gone = cli.cwd / "gone"
    gone.mkdir()
    images = str(cli.cwd / "images")
    script = (
        f"import os, subprocess, sys; os.chdir({str(gone)!r}); os.rmdir({str(gone)!r}); "
        f"sys.exit(subprocess.run([sys.executable, '-m', 'llbgen', '--images', {images!r}, 'llb', 'probe']).returncode)"
    )
    in_deleted = subprocess.run([sys.executable, "-c", script], env=cli.env, capture_output=True, text=True, timeout=60)
    # The probe image itself asks for the working directory: an error at its line, no traceback.
    assert in_deleted.returncode == 1, in_deleted.stderr
    assert in_deleted.stderr.startswith(f"llbgen: error: {images}/probe/image.py:"), in_deleted.stderr
    assert "Traceback" not in in_deleted.stderr
    closed_stdin = subprocess.run(
        [sys.executable, "-m", "llbgen", "llb", "probe", "--format", "json"], cwd=cli.cwd, env=cli.env,
        capture_output=True, text=True, timeout=60, preexec_fn=lambda: os.close(0),
    )  # fmt: skip
    assert closed_stdin.returncode == 0, closed_stdin.stderr
    assert probe(closed_stdin.stderr)["ppid"] != pid  # ran in-process

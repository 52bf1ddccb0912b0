"""Structure tests (``llbgen.structure``, ``llbgen test``).

The first part is pure: the spec's validation, the judging of outcomes, and the generated check
scripts run with this machine's shell. The second part runs ``llbgen test`` on the stack, with a
scratch image holding one static binary and the repository's hello image, on amd64 and on arm64
(under QEMU).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

import llbgen
from llbgen.llb.definition import marshal
from llbgen.llb.errors import DefinitionError, UsageError
from llbgen.llb.platform import Platform
from llbgen.pb import ops_pb2
from llbgen.project import Project
from llbgen.structure import CommandTest, FileContentTest, FileExistenceTest
from llbgen.structure.compiler import HARNESS_DIR, RESULTS, _script, check_id
from llbgen.structure.evaluate import (
    CONTENT_LIMIT,
    CommandOutcome,
    ContentOutcome,
    FileOutcome,
    NoResult,
    evaluate,
    read_outcome,
)
from llbgen.structure.report import format_report
from llbgen.structure.runner import CheckResult, _SuiteProject, checks_for, collect, load_suite
from tests.conftest import FAKE_DEBIAN, ROOT, Cli

AMD64, ARM64 = Platform.parse("linux/amd64"), Platform.parse("linux/arm64")
HERE = Path(__file__).resolve()


def line_of(text: str) -> int:
    """The line of this file that contains ``text`` (once)."""
    lines = [n for n, line in enumerate(HERE.read_text().splitlines(), 1) if text in line]
    assert len(lines) == 1, lines
    return lines[0]


# -- the spec --------------------------------------------------------------------------------------


def test_spec_values_are_immutable_and_normalised() -> None:
    check = CommandTest("version", "tool --version", expected_output=r"^tool 1\.", env={"A": "1"},
                        setup=["mkdir /w", ["touch", "/w/x"]], files={"/w/in": "data"})
    assert check.command == ("tool", "--version")
    assert check.expected_output == (r"^tool 1\.",)
    assert check.env == (("A", "1"),) and check.files == (("/w/in", b"data"),)
    assert check.setup == (("mkdir", "/w"), ("touch", "/w/x"))
    assert check == CommandTest("version", ["tool", "--version"], expected_output=[r"^tool 1\."],
                                env={"A": "1"}, setup=[["mkdir", "/w"], ["touch", "/w/x"]],
                                files={"/w/in": b"data"})
    with pytest.raises(AttributeError):
        check.name = "other"  # type: ignore[misc]
    assert FileExistenceTest("f", "/x", permissions="0755").permissions == 0o755
    assert FileExistenceTest("f", "/x", permissions="0o640").permissions == 0o640
    assert FileExistenceTest("f", "/x", permissions=0o4755).permissions == 0o4755
    assert FileExistenceTest("f", "/x", permissions="drwxrwxrwt").permissions == "drwxrwxrwt"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: CommandTest("bad regex", ["x"], expected_output="a(b"), "invalid regular expression 'a(b'"),
        (lambda: CommandTest("empty", []), "must not be empty"),
        (lambda: CommandTest("code", ["x"], exit_code=256), "exit_code must be between 0 and 255"),
        (lambda: CommandTest("helper", ["x"], helper=llbgen.scratch()), "give image_mount= too"),
        (lambda: CommandTest("mount", ["x"], image_mount="/"), "choose a directory such as /image"),
        (lambda: CommandTest("setup", ["x"], setup="mkdir /w"), "setup is a list of commands"),  # type: ignore[arg-type]
        (lambda: CommandTest("files", ["x"], files={"rel": "x"}), "must be absolute"),
        (lambda: CommandTest("", ["x"]), "non-empty name"),
        (lambda: FileExistenceTest("rel", "usr/bin"), "must be absolute"),
        (lambda: FileExistenceTest("mode", "/x", permissions="rwxr-xr-x"), "must be like '-rwxr-xr-x'"),
        (lambda: FileExistenceTest("mode", "/x", permissions=0o17777), "is not a mode"),
        (lambda: FileExistenceTest("absent", "/x", should_exist=False, uid=0), "need should_exist=True"),
        (lambda: FileContentTest("bad", "/x", excluded_contents=["[z-a]"]), "invalid regular expression"),
    ],
)
def test_spec_mistakes_are_reported_at_the_users_line(make, message: str) -> None:
    with pytest.raises(DefinitionError) as info:
        make()
    assert message in info.value.message
    assert info.value.location is not None and info.value.location.filename == str(HERE)


def test_error_location_is_the_line_that_made_the_check() -> None:
    with pytest.raises(DefinitionError) as info:
        FileContentTest("typo", "/etc/x", expected_contents=["(unclosed"])  # the line of the mistake
    assert info.value.location is not None
    assert info.value.location.line == line_of("# the line of the " + "mistake")


# -- judging outcomes --------------------------------------------------------------------------------


def test_command_expectations() -> None:
    check = CommandTest("c", ["x"], expected_output=[r"^v1\.2$", "ok"], excluded_output="error",
                        expected_error="warn", excluded_error="^fatal")
    assert evaluate(check, CommandOutcome(0, "ok\nv1.2\n", "a warning\n")) == []
    problems = evaluate(check, CommandOutcome(2, "v1.20 error here\n", "fatal: x\n"))
    assert problems == [
        "exit code is 2, expected 0",
        r"stdout: expected /^v1\.2$/ not found",
        "stdout: expected /ok/ not found",
        "stdout: excluded /error/ found in line 'v1.20 error here'",
        "stderr: expected /warn/ not found",
        "stderr: excluded /^fatal/ found in line 'fatal: x'",
    ]


def test_exit_codes_any_and_timeouts() -> None:
    assert evaluate(CommandTest("c", ["x"], exit_code=None), CommandOutcome(3)) == []
    assert evaluate(CommandTest("c", ["x"], exit_code=3), CommandOutcome(3)) == []
    assert evaluate(CommandTest("c", ["x"], timeout=2), CommandOutcome(124)) == [
        "timed out after 2 s (exit code 124)"
    ]
    assert evaluate(CommandTest("c", ["x"]), CommandOutcome(124)) == ["exit code is 124, expected 0"]


def test_setup_failure_and_missing_results_fail_the_check() -> None:
    check = CommandTest("c", ["x"], exit_code=None)
    assert evaluate(check, CommandOutcome(1, setup_failure="setup step 1 (false) exited with 1")) == [
        "setup step 1 (false) exited with 1"
    ]
    assert evaluate(check, NoResult("no exit code recorded")) == ["no exit code recorded"]


def test_file_expectations() -> None:
    regular = stat.S_IFREG | 0o755
    assert evaluate(FileExistenceTest("f", "/x", permissions="-rwxr-xr-x", uid=0, gid=0),
                    FileOutcome(True, regular, 0, 0)) == []
    assert evaluate(FileExistenceTest("f", "/x", permissions=0o755), FileOutcome(True, regular)) == []
    assert evaluate(FileExistenceTest("f", "/x", permissions="drwxr-xr-x"), FileOutcome(True, regular)) == [
        "permissions are -rwxr-xr-x, expected drwxr-xr-x"
    ]
    assert evaluate(FileExistenceTest("f", "/x", permissions=0o644, uid=1, gid=2),
                    FileOutcome(True, regular, 0, 0)) == [
        "mode is 0755 (-rwxr-xr-x), expected 0644",
        "uid is 0, expected 1",
        "gid is 0, expected 2",
    ]
    assert evaluate(FileExistenceTest("f", "/x"), FileOutcome(False, error="No such file")) == [
        "/x does not exist (No such file)"
    ]
    assert evaluate(FileExistenceTest("f", "/x", should_exist=False), FileOutcome(False)) == []
    assert evaluate(FileExistenceTest("f", "/x", should_exist=False), FileOutcome(True, regular)) == [
        "/x exists (-rwxr-xr-x), expected it not to"
    ]


def test_content_expectations() -> None:
    check = FileContentTest("c", "/etc/x", expected_contents="^a=1$", excluded_contents="secret")
    assert evaluate(check, ContentOutcome(True, "b=2\na=1\n")) == []
    assert evaluate(check, ContentOutcome(True, "a=12\nsecret=3\n")) == [
        "contents: expected /^a=1$/ not found",
        "contents: excluded /secret/ found in line 'secret=3'",
    ]
    assert evaluate(check, ContentOutcome(False, error="Is a directory")) == ["cannot read /etc/x: Is a directory"]


def test_read_outcome_of_each_kind(tmp_path: Path) -> None:
    (tmp_path / "code").write_text("0\n")
    (tmp_path / "stat").write_text("81ed 0 1000\n")
    assert read_outcome(FileExistenceTest("f", "/x"), tmp_path) == FileOutcome(True, 0o100755, 0, 1000)
    (tmp_path / "content").write_bytes(b"x" * (CONTENT_LIMIT + 1))
    outcome = read_outcome(FileContentTest("c", "/x"), tmp_path)
    assert isinstance(outcome, ContentOutcome) and outcome.truncated and len(outcome.content) == CONTENT_LIMIT
    (tmp_path / "code").write_text("1\n")
    (tmp_path / "stderr").write_text("stat: cannot statx '/x': No such file or directory\n")
    assert read_outcome(FileExistenceTest("f", "/x"), tmp_path) == FileOutcome(
        False, error="stat: cannot statx '/x': No such file or directory"
    )
    assert isinstance(read_outcome(CommandTest("c", ["x"]), tmp_path / "absent"), NoResult)


# -- the generated scripts, run here with /bin/sh ----------------------------------------------------


def run_script(check: CommandTest | FileExistenceTest | FileContentTest, tmp_path: Path,
               env: dict[str, str] | None = None) -> Path:
    """Runs the check's script as its step would (helper mode: this machine's tools)."""
    harness = tmp_path / "harness"
    (harness / "out" / RESULTS).mkdir(parents=True)
    if isinstance(check, CommandTest):
        (harness / "files").mkdir()
        for index, (_, data) in enumerate(check.files):
            (harness / "files" / str(index)).write_bytes(data)
    script = _script(check, check_id(check.name), AMD64, in_image=False).replace(HARNESS_DIR, str(harness))
    subprocess.run(["/bin/sh", "-c", script, "sh"], check=True, cwd=tmp_path,
                   env={"PATH": os.environ["PATH"], **(env or {})}, timeout=30)
    return harness / "out" / RESULTS / check_id(check.name)


def test_command_script_quotes_arguments_and_captures_everything(tmp_path: Path) -> None:
    work = tmp_path / "work dir"
    check = CommandTest(
        "quoting", ["sh", "-c", 'printf "%s|" "$@"; echo "$GREETING" >&2; cat "$1/in file"; exit 3', "sh",
                    str(work), "it's", "$HOME", "a\nb"],
        files={f"{work}/in file": "from files\n"},
        setup=[["sh", "-c", f"echo set up > '{work}/extra'"]],
        env={"GREETING": "hi"},
        exit_code=3,
    )
    result = run_script(check, tmp_path, {"GREETING": "hi"})
    outcome = read_outcome(check, result)
    assert outcome == CommandOutcome(3, f"{work}|it's|$HOME|a\nb|from files\n", "hi\n")
    assert evaluate(check, outcome) == []
    assert (work / "extra").read_text() == "set up\n"


def test_failed_setup_step_skips_the_command(tmp_path: Path) -> None:
    check = CommandTest("setup", ["touch", str(tmp_path / "ran")], setup=[["true"], ["sh", "-c", "echo no >&2; exit 4"]])
    outcome = read_outcome(check, run_script(check, tmp_path))
    assert isinstance(outcome, CommandOutcome)
    assert outcome.setup_failure == "setup step 2 (sh -c echo no >&2; exit 4) exited with 4"
    assert outcome.setup_log == "no\n"
    assert not (tmp_path / "ran").exists()


def test_command_not_found_and_timeout(tmp_path: Path) -> None:
    missing = CommandTest("missing", ["no-such-command-here"], exit_code=127, expected_error="not found")
    assert evaluate(missing, read_outcome(missing, run_script(missing, tmp_path / "a"))) == []
    slow = CommandTest("slow", ["sleep", "10"], timeout=0.5)
    assert evaluate(slow, read_outcome(slow, run_script(slow, tmp_path / "b"))) == ["timed out after 0.5 s (exit code 124)"]


def test_file_and_content_scripts(tmp_path: Path) -> None:
    target = tmp_path / "it's a file"
    target.write_text("answer=42\n")
    target.chmod(0o640)
    link = tmp_path / "link"
    link.symlink_to(target)
    uid, gid = os.getuid(), os.getgid()
    for check in [
        FileExistenceTest("file", str(target), permissions="-rw-r-----", uid=uid, gid=gid),
        FileExistenceTest("link", str(link), permissions="lrwxrwxrwx"),
        FileExistenceTest("followed", str(link), follow_symlinks=True, permissions=0o640),
        FileExistenceTest("absent", str(tmp_path / "absent"), should_exist=False),
        FileContentTest("content", str(link), expected_contents="^answer=42$"),
    ]:
        outcome = read_outcome(check, run_script(check, tmp_path / "runs" / check.name))
        assert evaluate(check, outcome) == [], (check.name, outcome)
    missing = FileContentTest("missing", str(tmp_path / "absent"))
    [problem] = evaluate(missing, read_outcome(missing, run_script(missing, tmp_path / "runs" / "missing")))
    assert problem.startswith(f"cannot read {tmp_path}/absent:") and "No such file" in problem


# -- tests.py, the compiled graph, the report ----------------------------------------------------


@pytest.fixture
def fake_project(tmp_path: Path) -> Project:
    bases = tmp_path / "bases.json"
    bases.write_text(json.dumps({"debian:trixie": FAKE_DEBIAN}))
    return Project(ROOT / "images", bases_file=bases)


def exec_ops(definition_ops: tuple[bytes, ...]) -> list[ops_pb2.Op]:
    ops = [ops_pb2.Op.FromString(data) for data in definition_ops]
    return [op for op in ops if op.WhichOneof("op") == "exec"]


@pytest.mark.parametrize("platform", [AMD64, ARM64])
def test_checks_run_on_the_image_steps_of_llbgen_build(fake_project: Project, platform: Platform) -> None:
    ctx = fake_project.context(platform, {}, AMD64)
    image = marshal(fake_project.state("hello", ctx), platform=platform)
    suite = load_suite(fake_project, "hello")
    runner = _SuiteProject(fake_project.root, fake_project.bases_file, suite=suite)
    tests = marshal(runner.state(runner.pseudo, runner.context(platform, {}, AMD64)), platform=platform)
    # every step of the image (all but the terminal op) is in the test graph, with the same digest
    assert set(image.digests[:-1]) <= set(tests.digests)
    compiled = runner.compiled[platform]
    assert [c.check.name for c in compiled.checks] == [c.name for c in checks_for(suite, ctx)]
    checks = [op for op in exec_ops(tests.ops) if any(m.dest == f"{HARNESS_DIR}/out" for m in op.exec.mounts)]
    # one step per check, but for the metadata test (judged from the config, no step)
    assert len(checks) == len([c for c in compiled.checks if c.observed is None]) == len(compiled.checks) - 1
    for op in checks:  # each check runs on the target platform (under QEMU for arm64)
        assert (op.platform.Architecture, op.platform.OS) == (platform.architecture, "linux")


def test_tests_py_shapes(tmp_path: Path, fake_project: Project) -> None:
    images = tmp_path / "images"
    for name, tests_py in {
        "listed": "from llbgen.structure import FileExistenceTest\nTESTS = [FileExistenceTest('root', '/')]\n",
        "empty": "X = 1\n",
        "wrong": "def tests(ctx):\n    return ['not a check']\n",
        "twice": "from llbgen.structure import FileExistenceTest as F\n"
                 "def tests(ctx):\n    return [F('same', '/a'), F('same', '/b')]\n",
        "broken": "def tests(ctx):\n    return 1 / 0\n",
        "none": None,
    }.items():
        (images / name).mkdir(parents=True)
        (images / name / "image.py").write_text("import llbgen\ndef build(ctx):\n    return llbgen.scratch()\n")
        if tests_py is not None:
            (images / name / "tests.py").write_text(tests_py)
    project = Project(images, bases_file=fake_project.bases_file)
    ctx = project.context(AMD64, {})
    assert [c.name for c in checks_for(load_suite(project, "listed"), ctx)] == ["root"]
    with pytest.raises(DefinitionError, match="defines neither tests"):
        load_suite(project, "empty")
    with pytest.raises(DefinitionError, match="'not a check' is not a CommandTest"):
        checks_for(load_suite(project, "wrong"), ctx)
    with pytest.raises(DefinitionError, match="two checks are named 'same'"):
        checks_for(load_suite(project, "twice"), ctx)
    with pytest.raises(DefinitionError) as info:
        checks_for(load_suite(project, "broken"), ctx)
    assert str(info.value) .endswith("ZeroDivisionError: division by zero")
    assert info.value.location is not None and info.value.location.line == 2
    with pytest.raises(UsageError, match="has no structure tests"):
        load_suite(project, "none")


def test_collect_reads_flat_and_per_platform_exports(tmp_path: Path, fake_project: Project) -> None:
    suite = load_suite(fake_project, "hello")
    runner = _SuiteProject(fake_project.root, fake_project.bases_file, suite=suite, select="^greeting is")
    for platform in (AMD64, ARM64):
        runner.state(runner.pseudo, runner.context(platform, {}, AMD64))
    for platform in (AMD64, ARM64):
        [item] = runner.compiled[platform].checks
        result = tmp_path / platform.id / RESULTS / item.id
        result.mkdir(parents=True)
        (result / "code").write_text("0\n")
        (result / "stat").write_text("81a4 0 0\n" if platform == AMD64 else "81ed 0 0\n")
    results = collect(runner.compiled, tmp_path)
    assert [(str(r.platform), r.passed) for r in results] == [("linux/amd64", True), ("linux/arm64", False)]
    report = format_report("hello", results)
    assert report.splitlines()[0] == "PASS  linux/amd64  file     greeting is installed"
    assert report.splitlines()[1] == "FAIL  linux/arm64  file     greeting is installed"
    assert "      - mode is 0755 (-rwxr-xr-x), expected 0644" in report
    assert report.endswith("hello: 1 passed, 1 failed (1 check on 2 platforms)\n")


def test_report_shows_a_failed_commands_output() -> None:
    check = CommandTest("llc targets", ["llc", "--version"], excluded_output=r"^ +(?!bpf\b)\S+ +- ")
    outcome = CommandOutcome(0, "  Registered Targets:\n    bpf    - BPF (host endian)\n    x86-64 - 64-bit X86\n")
    result = CheckResult(check, ARM64, outcome, tuple(evaluate(check, outcome)))
    assert format_report("llvm", [result]) == textwrap.dedent(
        """\
        FAIL  linux/arm64  command  llc targets
              command (in the image): llc --version
              - stdout: excluded /^ +(?!bpf\\b)\\S+ +- / found in line '    x86-64 - 64-bit X86'
              exit code: 0
              stdout:
                |   Registered Targets:
                |     bpf    - BPF (host endian)
                |     x86-64 - 64-bit X86
              stderr: (empty)
        llvm: 0 passed, 1 failed (1 check on 1 platform)
        """
    )


# -- llbgen test on the stack --------------------------------------------------------------------

PROBE_IMAGE = '''
"""A scratch image with one static binary (ldconfig from the Debian base) and a config file."""

import llbgen

PLATFORMS = ("linux/amd64", "linux/arm64")


def build(ctx):
    base = ctx.base_image("debian:trixie")
    return (
        llbgen.scratch()
        .file(
            llbgen.copy(base, "/usr/sbin/ldconfig", "/usr/local/bin/ldconfig", create_dest_path=True)
            .mkdir("/etc", 0o755)
            .mkfile("/etc/probe.conf", 0o640, "answer=42\\n", owner=(1000, 1000))
            .symlink("/usr/local/bin/ldconfig", "/usr/local/bin/lc")
        )
        .with_env("PATH", "/usr/local/bin")
        .with_user("1000:1000")
    )
'''

PROBE_TESTS = '''
from llbgen.structure import CommandTest, FileContentTest, FileExistenceTest

UNAME = {"amd64": "x86_64", "arm64": "aarch64"}


def tests(ctx):
    machine = UNAME[ctx.target_platform.architecture]
    return [
        # in the scratch image itself: no shell there, the harness brings its own
        CommandTest("version", ["ldconfig", "--version"], expected_output=r"^ldconfig \\(Debian GLIBC"),
        CommandTest("usage error", "ldconfig --bogus", exit_code=64, expected_error="unrecognized option '--bogus'"),
        CommandTest("no shell in the image", ["sh", "-c", "true"], exit_code=127),
        CommandTest("runs as the image's user", ["ldconfig"], exit_code=1, expected_error="Permission denied"),
        # in the helper, with the image mounted
        CommandTest("helper: machine", ["uname", "-m"], image_mount="/image", expected_output=f"^{machine}$"),
        CommandTest("helper: static", ["ldd", "/image/usr/local/bin/ldconfig"], image_mount="/image",
                    expected_output="statically linked"),
        CommandTest("helper: env, files and setup", ["cat", "/work/copy"], image_mount="/image",
                    env={"WORD": "forty-two"}, files={"/work/in.txt": "in\\n"},
                    setup=[["sh", "-c", 'echo "$WORD $(cat /work/in.txt)" > /work/copy']],
                    expected_output="^forty-two in$"),
        FileExistenceTest("binary", "/usr/local/bin/ldconfig", permissions="-rwxr-xr-x", uid=0, gid=0),
        FileExistenceTest("config owner and mode", "/etc/probe.conf", permissions=0o640, uid=1000, gid=1000),
        FileExistenceTest("symlink", "/usr/local/bin/lc", permissions="lrwxrwxrwx"),
        FileExistenceTest("symlink target", "/usr/local/bin/lc", follow_symlinks=True, permissions="0755"),
        FileExistenceTest("no shell", "/bin/sh", should_exist=False),
        FileContentTest("config", "/etc/probe.conf", expected_contents="^answer=42$", excluded_contents="password"),
        # checks that must fail, and do
        CommandTest("must fail: version", ["ldconfig", "--version"], expected_output="LLVM version 19"),
        CommandTest("must fail: excluded", ["ldconfig", "--version"], excluded_output="GLIBC"),
        CommandTest("must fail: exit code", ["ldconfig", "--bogus"]),
        CommandTest("must fail: setup", ["true"], image_mount="/image", setup=[["false"]]),
        CommandTest("must fail: timeout", ["sleep", "30"], image_mount="/image", timeout=1),
        FileExistenceTest("must fail: mode", "/usr/local/bin/ldconfig", permissions=0o644),
        FileExistenceTest("must fail: missing", "/etc/missing.conf"),
        FileExistenceTest("must fail: present", "/etc/probe.conf", should_exist=False),
        FileContentTest("must fail: content", "/etc/probe.conf", expected_contents="^answer=43$"),
    ]
'''

STATUS = re.compile(r"^(PASS|FAIL)  (linux/\w+)\s+(\w+)\s+(.+)$")


@pytest.fixture
def probe(project: Cli) -> Cli:
    project.write_image("probe", PROBE_IMAGE)
    (project.cwd / "images" / "probe" / "tests.py").write_text(PROBE_TESTS)
    return project


def statuses(stdout: str) -> dict[tuple[str, str], str]:
    found = {}
    for line in stdout.splitlines():
        match = STATUS.match(line)
        if match:
            found[(match[4], match[2])] = match[1]
    return found


def failure_details(stdout: str, name: str, platform: str) -> str:
    block = stdout.split(f"FAIL  {platform}")
    return next(b for b in block if re.match(rf"\s+\w+\s+{re.escape(name)}\n", b))


@pytest.mark.buildkit
def test_probe_on_both_platforms_reports_every_check(probe: Cli) -> None:
    result = probe("test", "probe", "--platform", "linux/amd64,linux/arm64", "--progress", "plain")
    assert result.code == 1, result.stderr
    found = statuses(result.text)
    names = re.findall(r'(?:CommandTest|FileExistenceTest|FileContentTest)\("([^"]+)"', PROBE_TESTS)
    assert len(names) == 22
    assert found == {
        (name, platform): "FAIL" if name.startswith("must fail") else "PASS"
        for name in names
        for platform in ("linux/amd64", "linux/arm64")
    }
    assert result.text.endswith("probe: 26 passed, 18 failed (22 checks on 2 platforms)\n")
    out = result.text
    for platform in ("linux/amd64", "linux/arm64"):
        version = failure_details(out, "must fail: version", platform)
        assert "- stdout: expected /LLVM version 19/ not found" in version
        assert "| ldconfig (Debian GLIBC" in version  # the command's output, shown on failure
        assert "excluded /GLIBC/ found in line 'ldconfig (Debian GLIBC" in failure_details(out, "must fail: excluded", platform)
        code = failure_details(out, "must fail: exit code", platform)
        assert "- exit code is 64, expected 0" in code and "| ldconfig: unrecognized option '--bogus'" in code
        assert "- setup step 1 (false) exited with 1" in failure_details(out, "must fail: setup", platform)
        assert "- timed out after 1 s" in failure_details(out, "must fail: timeout", platform)
        assert "- mode is 0755 (-rwxr-xr-x), expected 0644" in failure_details(out, "must fail: mode", platform)
        assert "- /etc/missing.conf does not exist" in failure_details(out, "must fail: missing", platform)
        assert "expected it not to" in failure_details(out, "must fail: present", platform)
        assert "| answer=42" in failure_details(out, "must fail: content", platform)
    # every check is a step of the one build, on its platform; arm64 ones under QEMU
    assert "[linux/arm64] test 'helper: machine': uname -m" in result.stderr
    assert "[linux/amd64] test 'version': ldconfig --version" in result.stderr


@pytest.mark.buildkit
def test_passing_selection_exits_zero_and_proves_emulation(probe: Cli) -> None:
    result = probe("test", "probe", "-k", "^(?!must fail)", "-v", "--progress", "plain")
    assert result.code == 0, result.text + result.stderr
    assert result.text.endswith("probe: 26 passed, 0 failed (13 checks on 2 platforms)\n")
    machine = failure_details(result.text.replace("PASS  ", "FAIL  "), "helper: machine", "linux/arm64")
    assert "        | aarch64\n" in machine
    machine = failure_details(result.text.replace("PASS  ", "FAIL  "), "helper: machine", "linux/amd64")
    assert "        | x86_64\n" in machine


@pytest.mark.buildkit
def test_hello_tests_pass_on_both_platforms(project: Cli) -> None:
    result = project("test", "hello", "-v", "--progress", "plain")
    assert result.code == 0, result.text + result.stderr
    found = statuses(result.text)
    assert {platform for _, platform in found} == {"linux/amd64", "linux/arm64"}
    assert set(found.values()) == {"PASS"} and len(found) == 18  # tests.py and test/spec.yaml
    assert "| built on aarch64, running on aarch64" in result.text
    assert "| built on x86_64, running on x86_64" in result.text


@pytest.mark.buildkit
def test_one_platform_and_a_mistake_in_tests_py(probe: Cli) -> None:
    tests_py = probe.cwd / "images" / "probe" / "tests.py"
    tests_py.write_text(PROBE_TESTS.replace('excluded_contents="password"', 'excluded_contents="pass(word"'))
    result = probe("test", "probe", "--platform", "linux/arm64", "--progress", "plain")
    assert result.code == 1
    line = next(n for n, text in enumerate(tests_py.read_text().splitlines(), 1) if "pass(word" in text)
    assert f"images/probe/tests.py:{line}: invalid regular expression 'pass(word'" in result.stderr


def test_usage_errors(cli: Cli) -> None:
    result = cli("test", "debian-base")
    assert result.code == 2 and "image 'debian-base' has no structure tests" in result.stderr
    result = cli("test", "nope")
    assert result.code == 2 and "unknown image 'nope'" in result.stderr
    result = cli("test", "hello", "-k", "(")
    assert result.code == 2 and "invalid check filter" in result.stderr

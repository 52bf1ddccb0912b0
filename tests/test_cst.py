"""container-structure-test spec files: reading them (fast tier) and running them (on the stack)."""

from __future__ import annotations

import re
import stat
import textwrap
from pathlib import Path

import pytest

from llbgen.llb.errors import DefinitionError
from llbgen.structure.cst import go_expand, load_spec, spec_files
from llbgen.structure.evaluate import (
    CommandOutcome,
    ContentOutcome,
    FileOutcome,
    evaluate,
    evaluate_metadata,
    go_filemode,
)
from llbgen.structure.spec import CommandTest, FileContentTest, FileExistenceTest, MetadataTest
from tests.conftest import Cli
from tests.test_structure import PROBE_IMAGE as STRUCTURE_PROBE
from tests.test_structure import failure_details, statuses

IMAGE_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/root", "TOOL": "bpftool"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(DefinitionError) as info:
        load_spec(write(tmp_path, text), IMAGE_ENV)
    return str(info.value)


# -- Go's os.Expand and os.FileMode, written down from Go's documented behaviour ------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$TOOL version", "bpftool version"),
        ("${TOOL}-x", "bpftool-x"),
        ("$HOME/$TOOL", "/root/bpftool"),
        ("$MISSING!", "!"),
        ("cost: $", "cost: $"),  # a final $ stays
        ("a $ b", "a $ b"),  # $ before a non-name character stays
        ("${}x", "x"),  # bad syntax is dropped
        ("${TOOL", "TOOL"),  # "${" without a closing brace: the two characters are dropped
        ("$1 and $$", " and "),  # special one-character names expand (to nothing here)
        ("$TOOL_2", ""),  # the longest name: TOOL_2, unknown
    ],
)
def test_go_expand(text: str, expected: str) -> None:
    assert go_expand(text, lambda name: IMAGE_ENV.get(name, "")) == expected


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (stat.S_IFREG | 0o755, "-rwxr-xr-x"),
        (stat.S_IFDIR | 0o755, "drwxr-xr-x"),
        (stat.S_IFLNK | 0o777, "Lrwxrwxrwx"),
        (stat.S_IFREG | stat.S_ISUID | 0o755, "urwxr-xr-x"),
        (stat.S_IFDIR | stat.S_ISVTX | 0o777, "dtrwxrwxrwx"),
        (stat.S_IFCHR | 0o666, "Dcrw-rw-rw-"),
        (stat.S_IFBLK | 0o660, "Drw-rw----"),
        (stat.S_IFIFO | 0o644, "prw-r--r--"),
        (stat.S_IFREG | stat.S_ISGID | 0o2750 & 0o777, "grwxr-x---"),
    ],
)
def test_go_filemode(mode: int, expected: str) -> None:
    assert go_filemode(mode) == expected


# -- reading a spec ------------------------------------------------------------------------------


def test_every_kind_is_read_with_its_defaults(tmp_path: Path) -> None:
    checks = load_spec(
        write(
            tmp_path,
            """
            schemaVersion: "2.0.0"
            globalEnvVars:
              - key: WHERE
                value: "$HOME/x"
            commandTests:
              - name: version
                command: "$TOOL"
                args: ["version", "${HOME}"]
                envVars:
                  - key: MODE
                    value: "$HOME"
                setup: [["mkdir", "-p", "/work"]]
                teardown: [["rm", "-rf", "/work"]]
                expectedOutput: ["^bpftool v"]
                excludedError: ["warning"]
            fileExistenceTests:
              - name: binary
                path: "/usr/local/bin/$TOOL"
                permissions: "-rwxr-xr-x"
                isExecutableBy: other
              - name: gone
                path: /etc/shadow-
                shouldExist: false
              - name: owned
                path: /etc
                uid: 0
                gid: 0
            fileContentTests:
              - name: config
                path: /etc/os-release
                expectedContents: ["ID=debian"]
            metadataTest:
              envVars:
                - key: PATH
                  value: "/usr/.*"
                  isRegex: true
              labels:
                - key: org.opencontainers.image.title
                  value: hello
              entrypoint: ["/usr/local/bin/hello"]
              cmd: []
              workdir: /src
              user: "1000"
              exposedPorts: ["8080/tcp"]
              unboundEnvVars:
                - key: SECRET
            """,
        ),
        IMAGE_ENV,
    )
    command, binary, gone, owned, content, metadata = checks
    assert command == CommandTest(
        "version",
        ["bpftool", "version", "/root"],
        env={"WHERE": "/root/x", "MODE": "$HOME"},
        setup=[["mkdir", "-p", "/work"]],
        teardown=[["rm", "-rf", "/work"]],
        expected_output=["^bpftool v"],
        excluded_error=["warning"],
        exit_code=0,
        multiline=False,
        on_base=True,
    )
    assert binary == FileExistenceTest(
        "binary", "/usr/local/bin/bpftool", go_permissions="-rwxr-xr-x", executable_by="other"
    )
    assert gone == FileExistenceTest("gone", "/etc/shadow-", should_exist=False)
    assert (owned.uid, owned.gid, owned.permissions, owned.go_permissions) == (0, 0, None, None)
    assert content == FileContentTest(
        "config", "/etc/os-release", expected_contents=["ID=debian"], multiline=False
    )
    assert isinstance(metadata, MetadataTest)
    assert metadata.entrypoint == ("/usr/local/bin/hello",) and metadata.cmd == ()
    assert (metadata.workdir, metadata.user, metadata.exposed_ports) == ("/src", "1000", ("8080/tcp",))
    assert metadata.unbound_env == ("SECRET",)
    assert metadata.env[0].is_regex and not metadata.labels[0].is_regex


def test_an_omitted_exit_code_means_zero_and_empty_keys_are_absent(tmp_path: Path) -> None:
    [check] = load_spec(
        write(
            tmp_path,
            """
            schemaVersion: "2.0.0"
            commandTests:
              - name: plain
                command: "true"
                expectedOutput:
            """,
        ),
        IMAGE_ENV,
    )
    assert isinstance(check, CommandTest)
    assert (check.exit_code, check.expected_output, check.command) == (0, (), ("true",))


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('schemaVersion: "2.0.0"\ncommandTest: []\n', 2, "unknown key 'commandTest' in the spec"),
        (
            'schemaVersion: "2.0.0"\ncommandTests:\n  - name: a\n    command: ls\n    exitcode: 1\n',
            5,
            "unknown key 'exitcode' in command test",
        ),
        (
            'schemaVersion: "2.0.0"\ncommandTests:\n  - name: a\n    command: ls\n    exitCode: one\n',
            5,
            "exitCode must be an integer, not 'one'",
        ),
        (
            'schemaVersion: "2.0.0"\ncommandTests:\n  - name: a\n    command: ls\n    args: ls -l\n',
            5,
            "args must be a list",
        ),
        ('schemaVersion: "2.0.0"\ncommandTests:\n  - name: a\n', 3, "needs a non-empty 'command'"),
        (
            'schemaVersion: "2.0.0"\nfileExistenceTests:\n  - name: a\n    path: /a\n    shouldExist: maybe\n',
            5,
            "shouldExist must be true or false",
        ),
        (
            'schemaVersion: "2.0.0"\nfileExistenceTests:\n  - name: a\n    path: /a\n    permissions: "0755"\n',
            3,
            "written as Go prints a mode",
        ),
        (
            'schemaVersion: "2.0.0"\nfileExistenceTests:\n  - name: a\n    path: /a\n    isExecutableBy: all\n',
            3,
            "executable_by 'all' is not one of",
        ),
        (
            'schemaVersion: "2.0.0"\nfileContentTests:\n  - name: a\n    path: /a\n    expectedContents: ["(x"]\n',
            3,
            "invalid regular expression '(x'",
        ),
        ('schemaVersion: "2.0.0"\nlicenseTests:\n  - debian: true\n', 2, "licenseTests are not supported"),
        ('schemaVersion: "2.0.0"\ncontainerRunOptions:\n  user: root\n', 2, "containerRunOptions are not supported"),
        ('schemaVersion: "1.0.0"\n', 1, "schemaVersion '1.0.0' is not supported"),
        ("commandTests: []\n", 1, "needs a non-empty 'schemaVersion'"),
        ('schemaVersion: "2.0.0"\ncommandTests:\n  - name: [a\n', 4, "invalid YAML"),
        (
            'schemaVersion: "2.0.0"\nmetadataTest:\n  envVars:\n    - value: x\n',
            4,
            "needs a non-empty 'key'",
        ),
    ],
)
def test_mistakes_are_reported_at_their_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    error = error_of(tmp_path, text)
    assert error.startswith(f"{tmp_path / 'spec.yaml'}:{line}: "), error
    assert message in error


def test_spec_files_for_an_architecture(tmp_path: Path) -> None:
    (tmp_path / "test" / "arm64").mkdir(parents=True)
    (tmp_path / "test" / "arm64" / "spec.yaml").write_text("")
    assert spec_files(tmp_path, "amd64") == []
    (tmp_path / "test" / "spec.yaml").write_text("")
    assert spec_files(tmp_path, "amd64") == [tmp_path / "test" / "spec.yaml"]
    assert spec_files(tmp_path, "arm64") == [
        tmp_path / "test" / "spec.yaml",
        tmp_path / "test" / "arm64" / "spec.yaml",
    ]


# -- judging with container-structure-test's semantics ----------------------------------------------


def test_regexes_in_spec_checks_anchor_at_the_ends_of_the_text() -> None:
    output = "line one\nbpftool v7.5.0\n"
    go_style = CommandTest("v", ["bpftool"], expected_output=["^bpftool v7"], multiline=False)
    python_style = CommandTest("v", ["bpftool"], expected_output=["^bpftool v7"])
    assert evaluate(go_style, CommandOutcome(0, output)) == ["stdout: expected /^bpftool v7/ not found"]
    assert evaluate(python_style, CommandOutcome(0, output)) == []
    content = FileContentTest("c", "/f", excluded_contents=["^two$"], multiline=False)
    assert evaluate(content, ContentOutcome(True, "one\ntwo\n")) == []


def test_go_permissions_and_executable_by() -> None:
    check = FileExistenceTest("b", "/bin/x", go_permissions="-rwxr-xr-x", executable_by="other")
    assert evaluate(check, FileOutcome(True, stat.S_IFREG | 0o755)) == []
    assert evaluate(check, FileOutcome(True, stat.S_IFREG | 0o750)) == [
        "permissions are -rwxr-x---, expected -rwxr-xr-x",
        "not executable by other (-rwxr-x---)",
    ]
    setuid = FileExistenceTest("s", "/bin/su", go_permissions="urwxr-xr-x")
    assert evaluate(setuid, FileOutcome(True, stat.S_IFREG | stat.S_ISUID | 0o755)) == []


def test_metadata_against_an_image_config() -> None:
    config = {
        "Env": ["PATH=/usr/local/bin:/usr/bin", "LANG=C.UTF-8"],
        "Entrypoint": ["/usr/local/bin/hello"],
        "Labels": {"org.opencontainers.image.title": "hello"},
        "WorkingDir": "/src",
    }
    passing = MetadataTest(
        "metadata",
        env=[("LANG", "C.UTF-8")],
        labels=[("org.opencontainers.image.title", "hello")],
        entrypoint=["/usr/local/bin/hello"],
        cmd=[],
        workdir="/src",
        unbound_env=["SECRET"],
        unexposed_ports=["22/tcp"],
    )
    assert evaluate_metadata(passing, config) == []
    failing = MetadataTest(
        "metadata",
        env=[("LANG", "C"), ("SECRET", "x")],
        labels=[("org.opencontainers.image.title", "^hi$", True)],
        entrypoint=["/bin/sh"],
        cmd=["--help"],
        workdir="/",
        user="nobody",
        unbound_env=["LANG"],
        exposed_ports=["8080/tcp"],
        volumes=["/data"],
    )
    assert evaluate_metadata(failing, config) == [
        "env LANG is 'C.UTF-8', expected 'C'",
        "env SECRET is not set",
        "env LANG is set, expected it not to be",
        "label org.opencontainers.image.title is 'hello', expected /^hi$/",
        "entrypoint is ['/usr/local/bin/hello'], expected ['/bin/sh']",
        "cmd is [], expected ['--help']",
        "workdir is '/src', expected '/'",
        "user is '', expected 'nobody'",
        "port 8080/tcp is not exposed",
        "volume /data is not declared",
    ]


# -- llbgen test with spec files, on the stack --------------------------------------------------

# test_structure's scratch probe image, with a config for the metadata test to check.
PROBE_IMAGE = STRUCTURE_PROBE.replace(
    '''        .with_env("PATH", "/usr/local/bin")
        .with_user("1000:1000")''',
    '''        .with_env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .with_env("MODE", "probe")
        .with_user("1000:1000")
        .with_entrypoint("/usr/local/bin/ldconfig")
        .with_label("org.example.role", "probe")''',
)
assert PROBE_IMAGE != STRUCTURE_PROBE

# Every kind of check, passing and failing; each name says which it must do.
PROBE_SPEC = r'''
schemaVersion: "2.0.0"
globalEnvVars:
  - key: GREETING
    value: "mode $MODE"
commandTests:
  - name: version
    command: ldconfig
    args: ["--version"]
    expectedOutput: ["^ldconfig \\(Debian GLIBC"]
  - name: the base's tools are under the image
    command: which
    args: ["ldconfig"]
    expectedOutput: ["^/usr/local/bin/ldconfig\n$"]
  - name: env, setup and teardown
    command: sh
    # $NAME in args expands from the image's environment only (WORD is not in it)
    args: ["-c", "printenv GREETING WORD; cat /tmp/work/in; echo \"[$WORD]\""]
    envVars:
      - key: WORD
        value: forty-two
    setup: [["mkdir", "-p", "/tmp/work"], ["sh", "-c", "echo in > /tmp/work/in"]]
    teardown: [["rm", "-rf", "/tmp/work"], ["false"]]
    expectedOutput: ["^mode probe\nforty-two\nin\n\\[\\]\n$"]
  - name: arguments expand the image's environment
    command: echo
    args: ["$MODE", "${MODE}-x"]
    expectedOutput: ["^probe probe-x\n$"]
  - name: usage error
    command: ldconfig
    args: ["--bogus"]
    exitCode: 64
    expectedError: ["unrecognized option"]
    excludedError: ["Segmentation"]
  - name: "must fail: anchors are at the text's ends"
    command: sh
    args: ["-c", "echo one; echo two"]
    expectedOutput: ["^two$"]
  - name: "must fail: exit code"
    command: ldconfig
    args: ["--bogus"]
  - name: "must fail: excluded output"
    command: ldconfig
    args: ["--version"]
    excludedOutput: ["GLIBC"]
  - name: "must fail: expected error"
    command: "true"
    expectedError: ["."]
fileExistenceTests:
  - name: binary
    path: /usr/local/bin/ldconfig
    permissions: "-rwxr-xr-x"
    uid: 0
    gid: 0
    isExecutableBy: other
  - name: symlink
    path: /usr/local/bin/lc
    permissions: Lrwxrwxrwx
  - name: no shell in the image itself
    path: /bin/sh
    shouldExist: false
  - name: config owner
    path: /etc/probe.conf
    uid: 1000
    gid: 1000
  - name: "must fail: permissions"
    path: /etc/probe.conf
    permissions: "-rw-r--r--"
  - name: "must fail: executable"
    path: /etc/probe.conf
    isExecutableBy: any
  - name: "must fail: missing"
    path: /etc/missing.conf
fileContentTests:
  - name: config
    path: /etc/probe.conf
    expectedContents: ["answer=42"]
    excludedContents: ["password"]
  - name: "must fail: content"
    path: /etc/probe.conf
    expectedContents: ["^answer=43"]
metadataTest:
  envVars:
    - key: MODE
      value: probe
    - key: PATH
      value: "^/usr/local/bin:"
      isRegex: true
  unboundEnvVars:
    - key: GREETING
  labels:
    - key: org.example.role
      value: probe
  entrypoint: ["/usr/local/bin/ldconfig"]
  cmd: []
  user: "1000:1000"
'''

# Only for arm64: one check that passes there and a metadata test that fails.
ARM64_SPEC = r'''
schemaVersion: "2.0.0"
commandTests:
  - name: "arm64: machine"
    command: uname
    args: ["-m"]
    expectedOutput: ["^aarch64\n$"]
metadataTest:
  entrypoint: ["/bin/sh"]
  workdir: /src
  exposedPorts: ["8080/tcp"]
'''


@pytest.mark.buildkit
def test_spec_files_run_with_container_structure_test_semantics(project: Cli) -> None:
    project.write_image("probe", PROBE_IMAGE)
    test_dir = project.cwd / "images" / "probe" / "test"
    (test_dir / "arm64").mkdir(parents=True)
    (test_dir / "spec.yaml").write_text(PROBE_SPEC)
    (test_dir / "arm64" / "spec.yaml").write_text(ARM64_SPEC)

    result = project("test", "probe", "--platform", "linux/amd64,linux/arm64", "--progress", "plain")
    assert result.code == 1, result.stderr
    found = statuses(result.text)
    names = re.findall(r"^  - name: \"?([^\"\n]+)\"?$", PROBE_SPEC, re.MULTILINE)
    assert len(names) == 18
    expected = {
        (name, platform): "FAIL" if name.startswith("must fail") else "PASS"
        for name in [*names, "metadata (test/spec.yaml)"]
        for platform in ("linux/amd64", "linux/arm64")
    }
    expected[("arm64: machine", "linux/arm64")] = "PASS"
    expected[("metadata (test/arm64/spec.yaml)", "linux/arm64")] = "FAIL"
    assert found == expected, result.text
    out = result.text
    for platform in ("linux/amd64", "linux/arm64"):
        assert "- stdout: expected /^two$/ not found" in failure_details(out, "must fail: anchors are at the text's ends", platform)
        assert "- exit code is 64, expected 0" in failure_details(out, "must fail: exit code", platform)
        assert "- permissions are -rw-r-----, expected -rw-r--r--" in failure_details(out, "must fail: permissions", platform)
        assert "- not executable by any (-rw-r-----)" in failure_details(out, "must fail: executable", platform)
        assert "- contents: expected /^answer=43/ not found" in failure_details(out, "must fail: content", platform)
    metadata = failure_details(out, "metadata (test/arm64/spec.yaml)", "linux/arm64")
    assert "- entrypoint is ['/usr/local/bin/ldconfig'], expected ['/bin/sh']" in metadata
    assert "- workdir is '', expected '/src'" in metadata
    assert "- port 8080/tcp is not exposed" in metadata


@pytest.mark.buildkit
def test_a_mistake_in_a_spec_file_names_its_line(project: Cli) -> None:
    project.write_image("probe", PROBE_IMAGE)
    spec = project.cwd / "images" / "probe" / "test" / "spec.yaml"
    spec.parent.mkdir()
    spec.write_text(PROBE_SPEC.replace("    uid: 1000\n", "    uid: root\n"))
    result = project("test", "probe", "--platform", "linux/amd64", "--progress", "plain")
    line = next(n for n, text in enumerate(spec.read_text().splitlines(), 1) if "uid: root" in text)
    assert result.code == 1
    assert f"images/probe/test/spec.yaml:{line}: uid must be an integer, not 'root'" in result.stderr
    assert "Traceback" not in result.stderr

"""``llbgen lint``: pins (image digest, http checksum, git commit, Debian source version and
sha256), network only in system-package images, shellcheck over embedded scripts and scripts/.

Checked on the marshalled graphs; replaces the former tests/test_pinned.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import FAKE_DEBIAN, ROOT


def lint(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (cwd / "stack").mkdir(exist_ok=True)
    (cwd / "stack" / "bases.json").write_text(json.dumps({"debian:trixie": FAKE_DEBIAN}))
    (cwd / "stack" / "llbgen.toml").write_text('bases-file = "bases.json"\n')
    env = dict(os.environ, LLBGEN_CONFIG=str(cwd / "stack" / "llbgen.toml"))
    return subprocess.run(
        [sys.executable, "-m", "llbgen", "lint", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))


@pytest.fixture(autouse=True)
def _shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed: run scripts/stack-up (it installs Debian's shellcheck)")


def test_the_repositorys_images_and_scripts_pass(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "images", tmp_path / "images", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    run = lint(tmp_path)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")


BAD = '''
import llbgen

SCRIPT = """
set -eu
for f in $(ls /src); do echo $f; done
"""

def build(ctx):
    base = llbgen.image("debian:trixie")
    files = llbgen.merge([
        llbgen.http("https://example.invalid/x.tar.gz"),
        llbgen.git("https://example.invalid/x.git", "main"),
        llbgen.http("https://example.invalid/y.tar.gz", checksum="sha256:" + "1" * 64),
    ])
    fetched = base.run(["sh", "/llbgen/fetch-debian-source.sh", "linux"], network="none").root
    online = base.run(["sh", "-c", SCRIPT, "script"]).root
    return llbgen.merge([files, fetched, online, base.run("true", network="host").root])
'''


def test_every_kind_of_finding_at_its_line(tmp_path: Path) -> None:
    write(tmp_path, "images/bad/image.py", BAD)
    run = lint(tmp_path, "--scripts", "")
    assert run.returncode == 1, run.stderr
    lines = run.stdout.splitlines()
    at = "images/bad/image.py"
    expected = [
        f"{at}:9: image not pinned by digest: docker.io/library/debian:trixie",
        f"{at}:11: http source without checksum: https://example.invalid/x.tar.gz",
        f"{at}:12: git source not pinned to a commit: git://example.invalid/x.git#main",
        f"{at}:15: Debian source 'linux' without upstream version and orig sha256",
        f"{at}:16: run step with network access (the daemon's default) in image 'bad'",
        f"{at}:17: run step with network access (host) in image 'bad'",
        f"{at}:5: SC2045 (error): Iterating over ls output is fragile. Use globs.",
        f"{at}:5: SC2086 (info): Double quote to prevent globbing and word splitting.",
    ]
    for line in expected:
        assert any(got.startswith(line) for got in lines), (line, lines)
    assert len(lines) == len(expected), lines


def test_system_package_images_may_use_the_network(tmp_path: Path) -> None:
    write(tmp_path, "images/pkgs/image.py", '''
        import llbgen

        SYSTEM_PACKAGES = True

        def build(ctx):
            return ctx.base_image("debian:trixie").run("apt-get update", network="host").root
    ''')  # fmt: skip
    write(tmp_path, "images/user/image.py", '''
        import llbgen

        def build(ctx):
            return ctx.image("pkgs").run("true", network="none").root
    ''')  # fmt: skip
    run = lint(tmp_path, "--scripts", "")
    assert (run.returncode, run.stdout) == (0, ""), run.stderr
    (tmp_path / "images/pkgs/image.py").write_text(
        (tmp_path / "images/pkgs/image.py").read_text().replace("SYSTEM_PACKAGES = True", "")
    )
    run = lint(tmp_path, "user", "--scripts", "")
    assert run.returncode == 1
    assert run.stdout.startswith("images/pkgs/image.py:6: run step with network access (host) in image 'pkgs'")


def test_scripts_directory_is_shellchecked(tmp_path: Path) -> None:
    write(tmp_path, "images/ok/image.py", '''
        import llbgen

        def build(ctx):
            return ctx.base_image("debian:trixie").run("true", network="none").root
    ''')  # fmt: skip
    write(tmp_path, "scripts/deploy", "#!/usr/bin/env bash\nset -eu\nrm -rf $1/cache\n")
    write(tmp_path, "scripts/notes.txt", "not a script $x\n")
    run = lint(tmp_path)
    assert run.returncode == 1
    assert run.stdout.splitlines() == [
        "scripts/deploy:3: SC2086 (info): Double quote to prevent globbing and word splitting."
    ]


def test_the_repositorys_debian_sources_are_seen(tmp_path: Path) -> None:
    """bpftool's two Debian source downloads reach the lint: moving one pin's checksum away shows."""
    shutil.copytree(ROOT / "images", tmp_path / "images", ignore=shutil.ignore_patterns("__pycache__"))
    source = tmp_path / "images/sources/debian.py"
    text = source.read_text()
    marker = '["sh", "/llbgen/fetch-debian-source.sh", package, upstream, orig_sha256]'
    assert marker in text
    source.write_text(text.replace(marker, '["sh", "/llbgen/fetch-debian-source.sh", package, upstream, "none"]'))
    run = lint(tmp_path, "bpftool", "--scripts", "")
    assert run.returncode == 1
    found = sorted(line.split(": ", 1)[1] for line in run.stdout.splitlines())
    assert found == [
        "Debian source 'elfutils' without upstream version and orig sha256",
        "Debian source 'linux' without upstream version and orig sha256",
    ]

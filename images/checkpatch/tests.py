"""Structure tests of the checkpatch image: `llbgen test checkpatch` (both platforms, arm64 under QEMU).

Each of fixes.pl's edits is shown on a patch (test/patches/): the kernel's unedited checkpatch.pl
reports it, the image's does not, and a real finding of the same kind is still reported. The
wrapper is run on small git repositories the checks' setup makes in /workspace, the image's
working directory, as `docker run -v "$PWD:/workspace"` would mount one. test/spec.yaml has the
checks of the image's files and configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import llbgen
from llbgen.structure import Check, CommandTest

HERE = Path(__file__).resolve().parent
PATCHES = HERE / "test" / "patches"
OURS = "/opt/checkpatch/checkpatch.pl"
PRISTINE = "/opt/pristine/checkpatch.pl"
# checkpatch.pl's options in the wrapper that matter here: C99_COMMENT_TOLERANCE ignored makes
# every // comment an error, --strict shows CHECKs (CAMELCASE).
FLAGS = ["--no-tree", "--strict", "--no-summary", "--show-types", "--quiet", "--ignore", "C99_COMMENT_TOLERANCE"]
PATCH = "/tmp/change.patch"

# Sourced by the setup of the wrapper's checks: a repository in the current directory (/workspace).
REPO = r"""
git init -q -b main
git config user.name 'Ada Lovelace'
git config user.email ada@example.org
SOB='Signed-off-by: Ada Lovelace <ada@example.org>'
# put FILE LINE...: write FILE with these lines
put() { f=$1; shift; mkdir -p "$(dirname "$f")"; printf '%s\n' "$@" >"$f"; }
# commit SUBJECT [PARAGRAPH...]: commit the whole tree
commit() { local m=() p; for p in "$@"; do m+=(-m "$p"); done; git add -A; git commit -q --allow-empty "${m[@]}"; }
counter() { put bpf/counter.c '/* SPDX-License-Identifier: GPL-2.0 */' '/* Copyright Ada Lovelace */' '' "$@"; }
counter 'unsigned int counter;'
commit 'bpf: count packets' "$SOB"
"""
LONG_SUBJECT = "docs: a subject of seventy-six characters is one character more than allowed"
SUBJECT_75 = "bpf: " + "é" * 70  # 75 characters, 145 bytes
assert len(LONG_SUBJECT) == 76 and len(SUBJECT_75) == 75, (len(LONG_SUBJECT), len(SUBJECT_75))


def fix_checks(pristine_helper: llbgen.State) -> list[Check]:
    """For each fix: the unedited script reports the patch, ours does not; a real finding stays."""

    def run(name: str, patch: str, script: str, **expect: object) -> CommandTest:
        where = {"image_mount": "/image", "helper": pristine_helper} if script == PRISTINE else {}
        return CommandTest(
            name, [script, *FLAGS, PATCH], files={PATCH: (PATCHES / patch).read_text()},
            **where, **expect,  # type: ignore[arg-type]
        )  # fmt: skip

    c99 = r"^ERROR:C99_COMMENTS: do not use C99 // comments\n#\d+: FILE: "
    return [
        run("SPDX line of a .c file: the unedited checkpatch.pl reports it", "spdx-line.patch", PRISTINE,
            exit_code=1, expected_output=[c99 + r"bpf/counter\.c:1:$"]),
        run("SPDX line of a .c file: ours accepts it", "spdx-line.patch", OURS, excluded_output=["C99_COMMENTS"]),
        run("C99 comments elsewhere are still errors", "c99-comments.patch", OURS, exit_code=1,
            expected_output=[c99 + r"bpf/counter\.c:4:$", c99 + r"bpf/counter\.h:1:$"],
            excluded_output=[r"bpf/counter\.c:1:"]),
        run("Co-authored-by: the unedited checkpatch.pl reports it", "co-authored-by.patch", PRISTINE,
            exit_code=1, expected_output=[r"^WARNING:BAD_SIGN_OFF: Non-standard signature: Co-authored-by:"]),
        run("Co-authored-by: ours accepts it", "co-authored-by.patch", OURS, excluded_output=["BAD_SIGN_OFF"]),
        run("a misspelt tag is still reported", "misspelt-tag.patch", OURS, exit_code=1,
            expected_output=[r"^WARNING:BAD_SIGN_OFF: Non-standard signature: Co-authered-by:"]),
        run("_Static_assert: the unedited checkpatch.pl reports it", "static-assert.patch", PRISTINE,
            exit_code=1, expected_output=[r"^CHECK:CAMELCASE: Avoid CamelCase: <_Static_assert>$"]),
        run("_Static_assert: ours accepts it", "static-assert.patch", OURS, excluded_output=["CAMELCASE"]),
        run("CamelCase is still reported", "camel-case.patch", OURS, exit_code=1,
            expected_output=[r"^CHECK:CAMELCASE: Avoid CamelCase: <droppedPackets>$"],
            excluded_output=["_Static_assert>"]),
    ]  # fmt: skip


def fixes_pl_checks(pristine_helper: llbgen.State) -> list[Check]:
    """fixes.pl stops the build when the script it edits is not the one it was written for."""
    # The line the _Static_assert edit looks for, changed: that edit must fail, the file stay as it was.
    moved = r"""
cp /opt/pristine/checkpatch.pl /tmp/checkpatch.pl
sed -i '/^#CamelCase$/{n;s/ &&$/ \&\& 1 \&\&/}' /tmp/checkpatch.pl
grep -q '^\s*if (\$var !~ /^\$Constant\$/ && 1 &&$' /tmp/checkpatch.pl
sha256sum /tmp/checkpatch.pl >/tmp/before
"""
    return [
        CommandTest(
            "fixes.pl applies to the pinned checkpatch.pl",
            ["sh", "-c", "cp /opt/pristine/checkpatch.pl /tmp/ && perl /opt/pristine/fixes.pl /tmp/checkpatch.pl"],
            image_mount="/image", helper=pristine_helper,
            expected_output=[r"^fixes\.pl: applied: .*SPDX", r"^fixes\.pl: applied: Co-authored-by", r"^fixes\.pl: applied: _Static_assert"],
        ),
        CommandTest(
            "fixes.pl fails, and writes nothing, when an edit does not apply",
            ["sh", "-c", "perl /opt/pristine/fixes.pl /tmp/checkpatch.pl; echo status $?; sha256sum -c /tmp/before"],
            image_mount="/image", helper=pristine_helper, setup=[["bash", "-euc", moved]],
            expected_output=[r"^status 1$", r"^/tmp/checkpatch\.pl: OK$"],
            expected_error=[r"^fixes\.pl: error: _Static_assert is not CAMELCASE: its pattern matches 0 times"],
        ),
    ]  # fmt: skip


def wrapper(name: str, setup: str, args: Sequence[str] = (), **expect: object) -> CommandTest:
    """`checkpatch ARGS` in /workspace, after the repository REPO makes and ``setup``."""
    return CommandTest(
        name, ["checkpatch", *args], files={"/tmp/repo.sh": REPO},
        setup=[["bash", "-euc", f". /tmp/repo.sh\n{setup}"]], **expect,  # type: ignore[arg-type]
    )  # fmt: skip


def wrapper_checks() -> list[Check]:
    clean = r"""
git tag v1
counter 'unsigned int counter;' '_Static_assert(sizeof(counter) == 4, "32 bits");'
commit 'bpf: counter is 32 bits' 'Say so.' 'Co-authored-by: Charles Babbage <charles@example.org>' "$SOB"
put bpf/new.c '// SPDX-License-Identifier: GPL-2.0' '' 'unsigned int other;'
commit "$SUBJECT_75" 'A subject of exactly 75 characters.' "$SOB"
""".replace("$SUBJECT_75", SUBJECT_75)
    findings = rf"""
git tag v1
counter 'unsigned int counter = oldCamel;'
commit 'bpf: before the branch' "$SOB"
git update-ref refs/remotes/origin/main HEAD
counter 'unsigned int counter = packetCount;'
commit 'bpf: count with CamelCase' "$SOB"
put README 'more words'
commit '{LONG_SUBJECT}' 'No sign-off here.'
"""
    return [
        wrapper(
            "commits since the nearest branch or tag: findings, message, subject", findings, exit_code=1,
            expected_output=[
                r"^2 commit\(s\) on top of origin/main$",
                r"^\[1/2\] [0-9a-f]+ bpf: count with CamelCase$",
                r"^CHECK:CAMELCASE: Avoid CamelCase: <packetCount>$",
                r"^\[2/2\] [0-9a-f]+ docs: ",
                r"^ERROR:MISSING_SIGN_OFF: ",
                r"^ERROR:SUBJECT_WIDTH: the subject is 76 characters long, more than 75$",
            ],
            excluded_output=["oldCamel", r"before the branch", "::"],
        ),
        wrapper(
            "clean commits pass: the three fixes, a 75-character subject", clean,
            expected_output=[r"^2 commit\(s\) on top of v1$", r"has no obvious style problems", r"^checkpatch: nothing reported$"],
            excluded_output=["ERROR", "WARNING", "CHECK"],
        ),
        wrapper("-q passes --quiet", clean, ["-q"], expected_output=[r"^checkpatch: nothing reported$"],
                excluded_output=["no obvious style problems", "NOTE:"]),
        wrapper(
            "renovate's commits are exempt from the subject check",
            f"""git tag v1
put go.mod 'module example.org/x'
GIT_AUTHOR_NAME='renovate[bot]' GIT_AUTHOR_EMAIL='29139614+renovate[bot]@users.noreply.github.com' \\
    commit '{LONG_SUBJECT}' 'Signed-off-by: renovate[bot] <29139614+renovate[bot]@users.noreply.github.com>'
""",
            expected_output=[r"^1 commit\(s\) on top of v1$", r"^checkpatch: nothing reported$"],
            excluded_output=["SUBJECT_WIDTH"],
        ),
        wrapper(
            "options after -- go to checkpatch.pl", "git tag v1\ncounter 'unsigned int counter = packetCount;'\ncommit 'bpf: camel' \"$SOB\"",
            ["--", "--ignore", "CAMELCASE"], expected_output=[r"^checkpatch: nothing reported$"],
            excluded_output=["Avoid CamelCase"],
        ),
        wrapper(
            "GITHUB_REF: the pull request's commits, as annotations",
            rf"""git checkout -q -b pr
counter 'unsigned int counter = packetCount;'
commit 'bpf: count with CamelCase' "$SOB"
counter 'unsigned int counter; // a C99 comment'
commit '{LONG_SUBJECT}' "$SOB"
git checkout -q main
put bpf/main.c '/* SPDX-License-Identifier: GPL-2.0 */' '' 'unsigned int other = mainCamel;'
commit 'bpf: main moves on' "$SOB"
git checkout -q --detach
git merge -q --no-ff -m 'Merge pr into main' pr
""",
            env={"GITHUB_REF": "refs/pull/42/merge"}, exit_code=1,
            expected_output=[
                r"^2 commit\(s\) of pull request #42$",
                r"^::warning::CHECK:CAMELCASE: Avoid CamelCase: <packetCount>$",
                r"^::error::ERROR:C99_COMMENTS: ",
                r"^::error::ERROR:SUBJECT_WIDTH: the subject is 76 characters long",
            ],
            excluded_output=["mainCamel", "\x1b"],
        ),
        wrapper(
            "uncommitted changes are checked",
            "git tag v1\nput README words\ncommit 'docs: a readme' \"$SOB\"\ncounter 'unsigned int counter = dirtyCamel;'",
            exit_code=1, expected_output=[r"^1 commit\(s\) on top of v1$", r"^uncommitted changes$", r"<dirtyCamel>"],
        ),
        wrapper(
            "-a: every C file under bpf/, vendored headers excepted", ALL_FILES, ["-a"], exit_code=1,
            expected_output=[r"^checking 2 files under bpf/$", r"^CHECK:CAMELCASE: Avoid CamelCase: <allCamel>$",
                             r"^CHECK:LONG_LINE: line length of 1\d\d exceeds 100 columns$"],
            excluded_output=["vendorCamel", "second pass"],
        ),
        wrapper(
            "-a -i: no --strict, then a second pass for the downgraded types", ALL_FILES, ["-a", "-i"], exit_code=1,
            expected_output=[r"^second pass: ", r"^CHECK:LONG_LINE: line length of 1\d\d exceeds 100 columns$"],
            excluded_output=["CAMELCASE", "vendorCamel"],
        ),
    ]  # fmt: skip


ALL_FILES = r"""
put bpf/lib/a.c '/* SPDX-License-Identifier: GPL-2.0 */' '' 'unsigned int allCamel;' \
    "unsigned int $(printf 'x%.0s' $(seq 100));"
put bpf/include/linux/vendored.h '/* SPDX-License-Identifier: GPL-2.0 */' '' 'unsigned int vendorCamel;'
"""


def tests(ctx: llbgen.BuildContext) -> list[Check]:
    # The image with the kernel's files as they come, and fixes.pl, in /opt/pristine.
    pristine_helper = ctx.image("checkpatch").file(
        llbgen.copy(ctx.helper("checkpatch/image").pristine(ctx), "/scripts", "/opt/pristine",
                    contents_only=True, create_dest_path=True)
        .mkfile("/opt/pristine/fixes.pl", 0o644, (HERE / "fixes.pl").read_text()),
        name="the unedited checkpatch.pl and fixes.pl in /opt/pristine",
    )  # fmt: skip
    return [*fix_checks(pristine_helper), *fixes_pl_checks(pristine_helper), *wrapper_checks()]

"""Structure tests as LLB: one run step per check and platform, their results merged into one state.

A check never fails the build. Its step runs a small POSIX shell script that records what it
observed into files (exit code, stdout, stderr; ``stat`` or the file's contents) in a writable
mount, and always exits 0; Python then judges the files (``evaluate``).

The shell and the tools come from the *helper*, the pinned Debian base for the same platform,
mounted read-only at ``/.llbgen-test/helper``. A command test runs with the image under test as
its root, so it sees exactly the image's filesystem, environment, working directory and user,
even when the image is ``scratch`` with one static binary: the helper's ``dash`` is started
through the helper's own dynamic loader (``ld-linux-*.so --library-path ...``), which needs
nothing from the image, and the command itself is executed normally. File tests use the helper's
``stat`` and ``head`` the same way, so paths (and symlinks) resolve inside the image.
With ``image_mount`` a command test runs in the helper instead, with the image mounted read-only;
with ``on_base`` it runs on the helper and the image merged, the image on top. A metadata test
has no step: the image config is known when the checks are compiled.

Steps for linux/arm64 (any platform other than the daemon's) run under QEMU through binfmt_misc,
as every arm64 step does. The image's own steps are the very states ``llbgen build`` makes, so
they have the same digests and come from the cache.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shlex
from collections.abc import Sequence

import attrs

from llbgen.client.imageconfig import image_config
from llbgen.llb.errors import DefinitionError
from llbgen.llb.fileop import mkdir, mkfile
from llbgen.llb.merge import merge
from llbgen.llb.mounts import Mount, bind
from llbgen.llb.platform import Platform
from llbgen.llb.sources import scratch
from llbgen.llb.state import State
from llbgen.structure.evaluate import CONTENT_LIMIT, MetadataOutcome, Outcome
from llbgen.structure.spec import (
    HARNESS_DIR,
    Check,
    CommandTest,
    FileContentTest,
    FileExistenceTest,
    MetadataTest,
)

HELPER_DIR = f"{HARNESS_DIR}/helper"
OUT_DIR = f"{HARNESS_DIR}/out"
FILES_DIR = f"{HARNESS_DIR}/files"
#: The directory of the results state that holds one directory per check.
RESULTS = "results"

#: Debian's multiarch directory and dynamic loader for each platform (architecture, variant).
LOADERS: dict[tuple[str, str], tuple[str, str]] = {
    ("amd64", ""): ("x86_64-linux-gnu", "ld-linux-x86-64.so.2"),
    ("arm64", ""): ("aarch64-linux-gnu", "ld-linux-aarch64.so.1"),
    ("arm", "v7"): ("arm-linux-gnueabihf", "ld-linux-armhf.so.3"),
    ("386", ""): ("i386-linux-gnu", "ld-linux.so.2"),
    ("ppc64le", ""): ("powerpc64le-linux-gnu", "ld64.so.2"),
    ("s390x", ""): ("s390x-linux-gnu", "ld64.so.1"),
    ("riscv64", ""): ("riscv64-linux-gnu", "ld-linux-riscv64-lp64d.so.1"),
}


@attrs.frozen
class CompiledCheck:
    check: Check
    #: The check's directory in the results (stable: derived from its name, so cache keys are).
    id: str
    #: What a check without a step observed when it was compiled (a metadata test: the config).
    observed: Outcome | None = None


@attrs.frozen
class CompiledSuite:
    platform: Platform
    checks: tuple[CompiledCheck, ...]
    #: ``/results/<CompiledCheck.id>/`` for each check, with what its step recorded.
    results: State


def _results_dir() -> State:
    """Where checks write, writable by any user; one op for every check, so it never changes."""
    return scratch().file(mkdir(f"/{RESULTS}", 0o777), name="structure test results")


def check_id(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:48] or "check"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _helper_prefix(platform: Platform) -> list[str]:
    """argv that runs a helper program from ``HELPER_DIR`` whatever the root filesystem is."""
    try:
        triplet, loader = LOADERS[(platform.architecture, platform.variant)]
    except KeyError:
        known = ", ".join(f"linux/{a}" + (f"/{v}" if v else "") for a, v in LOADERS)
        raise DefinitionError(
            f"structure tests cannot run on {platform}: no Debian loader known for it (known: {known})"
        ) from None
    libdir = f"{HELPER_DIR}/usr/lib/{triplet}"
    # --inhibit-cache: the image's /etc/ld.so.cache (if any) is not the helper's
    return [f"{libdir}/{loader}", "--inhibit-cache", "--library-path", libdir]


def _script(check: CommandTest | FileExistenceTest | FileContentTest, cid: str, platform: Platform, in_image: bool) -> str:
    out = f"{OUT_DIR}/{RESULTS}/{cid}"
    if in_image:
        prefix = " ".join(shlex.quote(a) for a in _helper_prefix(platform))
        helper = f'h() {{ p=$1; shift; {prefix} {HELPER_DIR}/usr/bin/"$p" "$@"; }}'
    else:
        helper = 'h() { "$@"; }'
    lines = [f"O={out}", helper, 'h mkdir "$O" || exit 1']
    if isinstance(check, CommandTest):
        log = '>>"$O/setup.log" 2>&1'
        if check.files:
            copies = []
            for index, (path, _) in enumerate(check.files):
                parent = posixpath.dirname(posixpath.normpath(path))
                copies.append(f"h mkdir -p {shlex.quote(parent)}")
                copies.append(f"h cp {FILES_DIR}/{index} {shlex.quote(path)}")
            lines.append(f'{{ {" && ".join(copies)}; }} {log} || {{ echo "0 $?" >"$O/setup-failed"; exit 0; }}')
        for index, step in enumerate(check.setup, 1):
            lines.append(f'{{ {shlex.join(step)}; }} {log} || {{ echo "{index} $?" >"$O/setup-failed"; exit 0; }}')
        command = shlex.join(check.command)
        if check.timeout is not None:
            command = f"h timeout -k 5 {check.timeout:g} {command}"
        lines.append(f'{command} >"$O/stdout" 2>"$O/stderr"')
        if check.teardown:
            lines.append('echo $? >"$O/code"')
            lines += [f'{{ {shlex.join(step)}; }} >>"$O/teardown.log" 2>&1' for step in check.teardown]
            return "\n".join([*lines, "exit 0"]) + "\n"
    elif isinstance(check, FileExistenceTest):
        follow = "-L " if check.follow_symlinks else ""
        lines.append(f"h stat {follow}-c '%f %u %g' -- {shlex.quote(check.path)} >\"$O/stat\" 2>\"$O/stderr\"")
    else:
        lines.append(
            f'h head -c {CONTENT_LIMIT + 1} -- {shlex.quote(check.path)} >"$O/content" 2>"$O/stderr"'
        )
    lines += ['echo $? >"$O/code"', "exit 0"]
    return "\n".join(lines) + "\n"


def compile_check(
    check: CommandTest | FileExistenceTest | FileContentTest, image: State, *, helper: State, platform: Platform
) -> tuple[CompiledCheck, State]:
    """The run step of one check, and the state of its result directory."""
    cid = check_id(check.name)
    in_image = not (isinstance(check, CommandTest) and check.image_mount is not None)
    script = _script(check, cid, platform, in_image)
    mounts: list[Mount] = [bind(OUT_DIR, _results_dir())]
    name = f"[{platform}] test {check.name!r}"
    env: dict[str, str] = {}
    user = dir = None
    if isinstance(check, CommandTest):
        env = dict(check.env)
        user, dir = check.user, check.dir
        if check.files:
            action = mkfile("/0", 0o644, check.files[0][1])
            for index, (_, data) in enumerate(check.files[1:], 1):
                action = action.mkfile(f"/{index}", 0o644, data)
            fixtures = scratch().file(action, name=f"files of {check.name!r}")
            mounts.append(bind(FILES_DIR, fixtures, readonly=True))
        name += f": {shlex.join(check.command)}"
    else:
        user, dir = "0:0", "/"
        name += f": {'stat' if isinstance(check, FileExistenceTest) else 'read'} {check.path}"
    if in_image:
        mounts.append(bind(HELPER_DIR, helper, readonly=True))
        root = image
        if isinstance(check, CommandTest) and check.on_base:
            # image-tools' test stage: a distribution with the image's files copied on top
            base = merge([helper, image], name=f"[{platform}] the helper base under the image")
            root = image.with_output(base.output)
        argv = [*_helper_prefix(platform), f"{HELPER_DIR}/usr/bin/dash", "-c", script, "sh"]
    else:
        assert isinstance(check, CommandTest) and check.image_mount is not None
        mounts.append(bind(check.image_mount, image, readonly=True))
        root = check.helper or helper
        argv = ["/bin/sh", "-c", script, "sh"]
    step = root.run(
        argv, mounts=mounts, env=env, user=user, dir=dir, platform=platform, name=name
    )
    return CompiledCheck(check, cid), step.mount(OUT_DIR)


def compile_checks(
    image: State, checks: Sequence[Check], *, helper: State, platform: Platform
) -> CompiledSuite:
    """All checks of an image for one platform, their results merged into one state."""
    compiled = []
    outputs = []
    seen: dict[str, str] = {}
    for check in checks:
        if isinstance(check, MetadataTest):
            config = image_config(image, platform)["config"]
            item = CompiledCheck(check, check_id(check.name), MetadataOutcome(config))
        else:
            item, out = compile_check(check, image, helper=helper, platform=platform)
            outputs.append(out)
        if item.id in seen:
            raise DefinitionError(f"two structure tests are named {check.name!r}: names must be unique")
        seen[item.id] = check.name
        compiled.append(item)
    if outputs:
        results = merge(outputs, name=f"[{platform}] collect test results")
    else:
        results = _results_dir()
    return CompiledSuite(platform, tuple(compiled), results)

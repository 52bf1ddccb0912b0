"""``llbgen lint``: what a release depends on is pinned, fetched only where it may be, and sound.

Checked on the marshalled graphs of every image and platform, so nothing a definition computes
escapes:

- **pins**: registry images by digest, http sources by checksum, git sources by commit, Debian
  source packages (``fetch-debian-source.sh``) by upstream version and orig-tarball sha256;
- **network**: a run step with network access (any mode but ``none``) belongs in an image that
  declares ``SYSTEM_PACKAGES = True`` in its ``image.py``: system packages are installed in an
  image of their own, which other images build on, so that every other step is hermetic. The
  pinned Debian source download is the one exception (its result is checked against the pin);
- **shell**: ``shellcheck`` (Debian's package) over every script a definition embeds (``sh -c``
  texts, executable files it writes) and over the shell scripts of ``scripts/``.

One line per finding, ``file:line: message``, at the line of the script in the definition's file
when the text can be found there, else at the line that created the step. Exit status 1 if any.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from llbgen.llb.definition import Definition, marshal
from llbgen.llb.errors import LLBGenError
from llbgen.llb.location import Location, display_path
from llbgen.pb import ops_pb2
from llbgen.project import DEFINITION_FILE, Project
from llbgen.release.inputs import ImageInputs, image_inputs
from llbgen.release.plan import select

SHA256 = re.compile(r"^[0-9a-f]{64}$")
DEBIAN_FETCH = "fetch-debian-source.sh"
SHELLS = {"sh": "sh", "dash": "dash", "bash": "bash"}
_SHEBANG = re.compile(r"^#!\s*(?:/usr)?/bin/(?:env\s+)?(sh|bash|dash)\b")


@attrs.frozen(order=True)
class Finding:
    where: str  # file:line
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@attrs.frozen
class Script:
    text: str
    shell: str
    location: Location | None


def _where(definition: Definition, digest: str) -> Location | None:
    locations = definition.locations.get(digest)
    return locations[0] if locations else None


def _fmt(location: Location | None, fallback: str) -> str:
    return str(location) if location is not None else fallback


def _owner(project: Project, location: Location | None, default: str) -> str:
    """The image whose definition created a step: the image directory its file is in, else ``default``."""
    if location is None:
        return default
    path = Path(location.filename).resolve()
    root = project.root.resolve()
    if path.is_relative_to(root):
        parts = path.relative_to(root).parts
        if len(parts) > 1 and (root / parts[0] / DEFINITION_FILE).is_file():
            return parts[0]
    return default


def check_definition(
    definition: Definition, image: str, system_images: set[str], project: Project
) -> tuple[list[Finding], list[Script]]:
    """The pin and network findings of one marshalled graph, and the shell scripts it embeds."""
    findings: list[Finding] = []
    scripts: list[Script] = []
    fallback = f"{display_path(str(project.root / image / DEFINITION_FILE))}:1"
    for digest, data in definition:
        op = ops_pb2.Op.FromString(data)
        kind = op.WhichOneof("op")
        where = _where(definition, digest)
        at = _fmt(where, fallback)
        if kind == "source":
            ident, attrs_ = op.source.identifier, dict(op.source.attrs)
            if ident.startswith("docker-image://") and "@sha256:" not in ident:
                findings.append(Finding(at, f"image not pinned by digest: {ident.removeprefix('docker-image://')}"))
            elif ident.startswith(("http://", "https://")) and "http.checksum" not in attrs_:
                findings.append(Finding(at, f"http source without checksum: {ident}"))
            elif ident.startswith("git://") and not (
                "git.checksum" in attrs_ or re.search(r"#[0-9a-f]{40}(:|$)", ident)
            ):
                findings.append(Finding(at, f"git source not pinned to a commit: {ident}"))
        elif kind == "exec":
            args = list(op.exec.meta.args)
            fetch = next((i for i, a in enumerate(args) if a.endswith(DEBIAN_FETCH)), None)
            if fetch is not None:
                package, version, checksum = (args[fetch + 1 : fetch + 4] + ["", "", ""])[:3]
                if not version or not SHA256.match(checksum):
                    findings.append(Finding(at, f"Debian source {package!r} without upstream version and orig sha256"))
            elif op.exec.network != ops_pb2.NONE and _owner(project, where, image) not in system_images:
                mode = "host" if op.exec.network == ops_pb2.HOST else "the daemon's default"
                findings.append(
                    Finding(
                        at,
                        f"run step with network access ({mode}) in image {_owner(project, where, image)!r}: "
                        "pass network=\"none\", or install system packages in an image that declares "
                        "SYSTEM_PACKAGES = True and build on it",
                    )
                )
            if len(args) >= 3 and Path(args[0]).name in SHELLS and args[1] == "-c":
                scripts.append(Script(args[2], SHELLS[Path(args[0]).name], where))
        elif kind == "file":
            for action in op.file.actions:
                if action.WhichOneof("action") != "mkfile":
                    continue
                text = action.mkfile.data.decode("utf-8", "replace")
                shebang = _SHEBANG.match(text)
                if shebang or action.mkfile.path.endswith(".sh"):
                    scripts.append(Script(text, SHELLS[shebang.group(1)] if shebang else "sh", where))
    return findings, scripts


def graphs(inputs: ImageInputs) -> Iterator[Definition]:
    for platform, state in inputs.states.items():
        yield marshal(state, platform=platform)


def _source_line(script: Script, sources: Sequence[Path]) -> tuple[str, int] | None:
    """Where ``script``'s text starts in one of the definition files (its first line's number)."""
    candidates = [Path(script.location.filename)] if script.location else []
    candidates += [p for p in sources if p not in candidates]
    for path in candidates:
        try:
            content = path.read_text()
        except OSError:
            continue
        at = content.find(script.text)
        if at >= 0 and script.text.strip():
            return display_path(str(path)), content.count("\n", 0, at) + 1
    return None


def shellcheck(paths: Sequence[Path], shell: str | None) -> list[dict[str, object]]:
    exe = shutil.which("shellcheck")
    if exe is None:
        raise LLBGenError("shellcheck is not installed: apt-get install shellcheck (Debian's package)")
    command = [exe, "-f", "json", *(["-s", shell] if shell else []), "--", *map(str, paths)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 1):
        raise LLBGenError(f"shellcheck failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return list(json.loads(proc.stdout or "[]"))


def check_scripts(scripts: Sequence[Script], sources: Sequence[Path]) -> list[Finding]:
    findings = []
    unique = {(s.text, s.shell): s for s in scripts}
    with tempfile.TemporaryDirectory(prefix="llbgen-lint-") as tmp:
        for index, script in enumerate(unique.values()):
            path = Path(tmp) / f"{index}.sh"
            path.write_text(script.text)
            found = _source_line(script, sources)
            for comment in shellcheck([path], script.shell):
                line = int(str(comment["line"]))
                if found is not None:
                    where = f"{found[0]}:{found[1] + line - 1}"
                else:
                    where = _fmt(script.location, "?")
                findings.append(Finding(where, f"SC{comment['code']} ({comment['level']}): {comment['message']}"))
    return findings


def shell_files(directory: Path) -> list[Path]:
    """The shell scripts of a directory: files whose first line is a sh/bash shebang."""
    found = []
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        try:
            head = path.read_text(errors="replace").split("\n", 1)[0] if path.is_file() else ""
        except OSError:
            continue
        if _SHEBANG.match(head):
            found.append(path)
    return found


def lint(project: Project, names: Sequence[str], scripts_dir: Path | None) -> list[Finding]:
    findings: set[Finding] = set()
    scripts: list[Script] = []
    sources: set[Path] = set()
    for name in select(project, names):
        inputs = image_inputs(project, name)
        system_images = {n for n, m in inputs.modules.items() if getattr(m, "SYSTEM_PACKAGES", False) is True}
        for path in inputs.paths:
            sources.update(path.rglob("*.py") if path.is_dir() else [path])
        for definition in graphs(inputs):
            found, embedded = check_definition(definition, name, system_images, project)
            findings.update(found)
            scripts.extend(embedded)
    findings.update(check_scripts(scripts, sorted(sources)))
    if scripts_dir is not None:
        for comment in shellcheck(shell_files(scripts_dir), None) if shell_files(scripts_dir) else []:
            where = f"{display_path(str(comment['file']))}:{comment['line']}"
            findings.add(Finding(where, f"SC{comment['code']} ({comment['level']}): {comment['message']}"))
    return sorted(findings)


def run_lint(project: Project, names: Sequence[str], scripts: str | None) -> int:
    findings = lint(project, names, Path(scripts) if scripts else None)
    for finding in findings:
        print(finding)
    return 1 if findings else 0

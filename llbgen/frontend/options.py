"""The frontend's options: ``BUILDKIT_FRONTEND_OPT_<i>=key=value`` from the daemon.

BuildKit hands a gateway frontend every frontend attribute of the request (``buildctl --opt``,
``docker buildx build --build-arg/--platform/--target``...), plus ``source`` and, when the
dockerfile frontend forwards a ``# syntax=`` build, ``cmdline``. An option the frontend does not
know is an error rather than something silently dropped, except for those BuildKit and buildx
handle themselves.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import attrs

from llbgen.client.outputs import CacheOption
from llbgen.llb.errors import UsageError
from llbgen.llb.platform import Platform

DEFAULT_FILENAME = "image.py"
_ENV_PREFIX = "BUILDKIT_FRONTEND_OPT_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")

#: Options read by BuildKit or buildx themselves, or that only describe the request: accepted
#: and not used. (``attest:*`` is handled by the solver; ``frontend.caps`` was checked by the
#: gateway against the image's ``moby.buildkit.frontend.caps`` label before the frontend ran.)
_PASSED_BY = ("source", "cmdline", "frontend.caps", "multi-platform", "image-resolve-mode")
_PASSED_BY_PREFIXES = ("attest:", "vcs:", "sharedkey:localdir:", "input-metadata:")

#: Options with a meaning in Dockerfile builds and none here, with what to do instead.
_UNSUPPORTED = {
    "context:": "named build contexts are not supported: read other directories with "
    "llbgen.local(NAME) and pass --local NAME=DIR",
    "label:": "set image labels in the definition, with .with_label(KEY, VALUE)",
    "force-network-mode": "set the network of a step in the definition, with run(..., network=...)",
    "add-hosts": "extra hosts are not supported",
    "shm-size": "shm size is not supported",
    "ulimit": "ulimits are not supported",
    "cgroup-parent": "cgroup parents are not supported",
    "hostname": "set the hostname of a step in the definition, with run(..., hostname=...)",
    "requestid": "subrequests (buildx --call/--check/--print) are not supported",
    "context": "remote build contexts are not supported: pass the context with --local context=DIR",
}

KNOWN = ("filename", "platform", "target", "no-cache", "build-arg:NAME")


@attrs.frozen
class FrontendOptions:
    filename: str = DEFAULT_FILENAME
    platforms: tuple[Platform, ...] = ()
    target: str = ""
    args: Mapping[str, str] = attrs.field(factory=dict)
    no_cache: bool = False
    #: The local that holds the definition (buildx: ``dockerfilekey``).
    dockerfile_local: str = "dockerfile"
    #: ``local-sessionid:NAME``: buildx serves a local from another session (bake targets that
    #: share a directory).
    local_sessions: Mapping[str, str] = attrs.field(factory=dict)
    #: ``buildctl --import-cache``: the solver passes them on as this option.
    cache_imports: tuple[CacheOption, ...] = ()
    #: The ``# syntax=`` value when the dockerfile frontend forwarded the build.
    cmdline: str = ""


def from_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The options the daemon set, as grpcclient.opts() reads them (``key=value`` per variable)."""
    environ = os.environ if environ is None else environ
    opts: dict[str, str] = {}
    for name, value in environ.items():
        if name.startswith(_ENV_PREFIX):
            key, _, val = value.partition("=")
            opts[key] = val
    return opts


def workers_from_environ(environ: Mapping[str, str] | None = None) -> list[Platform]:
    """Platforms of ``BUILDKIT_WORKERS`` (JSON: ``[{"ID":..., "Platforms":[{"architecture":...}]}]``)."""
    environ = os.environ if environ is None else environ
    try:
        workers: Any = json.loads(environ.get("BUILDKIT_WORKERS", "") or "null")
    except ValueError:
        return []
    platforms: list[Platform] = []
    for worker in workers or []:
        for p in worker.get("Platforms") or worker.get("platforms") or []:
            platform = Platform(p.get("os", ""), p.get("architecture", ""), p.get("variant", "")).normalized()
            if platform not in platforms:
                platforms.append(platform)
    return platforms


def parse(opts: Mapping[str, str]) -> FrontendOptions:
    """Validates the options; raises UsageError naming the option and what to do instead."""
    args: dict[str, str] = {}
    sessions: dict[str, str] = {}
    fields: dict[str, Any] = {}
    for key in sorted(opts):
        value = opts[key]
        if key.startswith("build-arg:"):
            name = key[len("build-arg:") :]
            if not name:
                raise UsageError("option build-arg: needs a name (build-arg:NAME=VALUE)")
            args[name] = value
        elif key.startswith("local-sessionid:"):
            sessions[key[len("local-sessionid:") :]] = value
        elif key == "dockerfilekey":
            if not _NAME.match(value):
                raise UsageError(f"option dockerfilekey={value!r}: expected the name of a local")
            fields["dockerfile_local"] = value
        elif key == "filename":
            fields["filename"] = _filename(value)
        elif key == "platform":
            fields["platforms"] = _platforms(value)
        elif key == "target":
            if value and not _NAME.match(value):
                raise UsageError(f"option target={value!r}: expected an image name, e.g. target=hello")
            fields["target"] = value
        elif key == "no-cache":
            if value not in ("", "true", "1"):
                raise UsageError(
                    f"option no-cache={value!r}: llbgen images have no stages to pick; "
                    "pass no-cache with no value (buildctl --no-cache) to run every step again"
                )
            fields["no_cache"] = True
        elif key == "cache-imports":
            fields["cache_imports"] = _cache_imports(value)
        elif key == "cmdline":
            fields["cmdline"] = value
        elif key in _PASSED_BY or key.startswith(_PASSED_BY_PREFIXES):
            continue
        elif key == "requestid" and not value:
            continue
        else:
            hint = _unsupported(key)
            if hint is not None:
                raise UsageError(f"option {key!r} is not supported by llbgen's frontend: {hint}")
            raise UsageError(f"unknown option {key!r}: llbgen's frontend takes {', '.join(KNOWN)}")
    return FrontendOptions(args=args, local_sessions=sessions, **fields)


def _filename(value: str) -> str:
    path = value.strip().replace("\\", "/").lstrip("/")
    while path.startswith("./"):
        path = path[2:]
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") for p in parts):
        raise UsageError(
            f"option filename={value!r}: expected a path inside the dockerfile directory, e.g. image.py "
            "or hello/image.py"
        )
    if not parts[-1].endswith(".py"):
        raise UsageError(f"option filename={value!r}: an image definition is a Python file (*.py)")
    return path


def _platforms(value: str) -> tuple[Platform, ...]:
    platforms: list[Platform] = []
    for item in value.split(","):
        if not item.strip():
            continue
        try:
            platform = Platform.parse(item)
        except ValueError as exc:
            raise UsageError(f"option platform: {exc}") from None
        if platform not in platforms:
            platforms.append(platform)
    return tuple(platforms)


def _cache_imports(value: str) -> tuple[CacheOption, ...]:
    """JSON ``[{"Type": "registry", "Attrs": {"ref": ...}}]``, as the client sends it."""
    if not value:
        return ()
    try:
        entries = json.loads(value)
        return tuple(
            CacheOption(str(e["Type"]), {str(k): str(v) for k, v in (e.get("Attrs") or {}).items()})
            for e in entries
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"option cache-imports: expected a JSON list of cache sources ({exc})") from None


def _unsupported(key: str) -> str | None:
    for prefix, hint in _UNSUPPORTED.items():
        if key == prefix or (prefix.endswith(":") and key.startswith(prefix)):
            return hint
    return None

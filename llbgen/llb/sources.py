"""Source ops: where a graph's files come from (registry images, the client, git, http, OCI layouts)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

import attrs

from llbgen.llb import reference, wire
from llbgen.llb.errors import invalid
from llbgen.llb.graph import MarshalContext, Metadata, Output, StepOptions, Vertex, op_bytes
from llbgen.llb.location import Location, caller
from llbgen.llb.paths import clean, join
from llbgen.llb.platform import Platform
from llbgen.llb.state import State

_PLATFORM_SPECIFIC = ("docker-image://", "oci-layout://")
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")


@attrs.frozen(eq=False)
class SourceOp(Vertex):
    identifier: str
    attrs: tuple[tuple[str, str], ...]
    caps: frozenset[str]
    platform: Platform | None
    options: StepOptions
    location: Location | None

    def inputs(self) -> Sequence[Output]:
        return ()

    def output_platform(self) -> Platform | None:
        return self.platform

    def encode(self, ctx: MarshalContext) -> tuple[bytes, Metadata]:
        attributes = dict(self.attrs)
        caps = set(self.caps)
        if self.identifier.startswith("local://") and "local.session" not in attributes:
            attributes["local.unique"] = ctx.local_unique_id
            caps.add("source.local.unique")
        platform = None
        if self.identifier.startswith(_PLATFORM_SPECIFIC):
            platform = self.platform or ctx.platform
        body = wire.str_field(1, self.identifier) + wire.string_map_field(2, attributes)
        return op_bytes(ctx, (), 3, body, platform), Metadata.for_step(caps, self.options)


def _source(
    identifier: str,
    attributes: dict[str, str],
    caps: Iterable[str],
    platform: Platform | None,
    options: StepOptions,
) -> State:
    op = SourceOp(
        identifier, tuple(attributes.items()), frozenset(caps), platform, options, caller()
    )
    return State(output=Output(op), platform=platform)


def _step(name: str | None, ignore_cache: bool) -> StepOptions:
    return StepOptions(name=name, ignore_cache=ignore_cache)


def image(
    ref: str,
    *,
    platform: Platform | str | None = None,
    resolve_mode: str | None = None,
    name: str | None = None,
    ignore_cache: bool = False,
) -> State:
    """A registry image, e.g. ``image("debian:trixie@sha256:...")``.

    ``platform`` picks the variant of a multi-platform image (default: the platform being built);
    ``resolve_mode`` is ``default``, ``pull`` or ``local``.
    """
    try:
        normalized = reference.normalize(ref)
    except ValueError as exc:
        raise invalid(str(exc)) from None
    attributes = {}
    caps = {"source.image"}
    if resolve_mode is not None:
        if resolve_mode not in ("default", "pull", "local"):
            raise invalid(f"resolve_mode {resolve_mode!r} is not one of default, pull, local")
        if resolve_mode != "default":  # Go's ResolveModeDefault is its zero value: not written
            attributes["image.resolvemode"] = resolve_mode
        if resolve_mode == "pull":
            caps.add("source.image.resolvemode")
    return _source(
        f"docker-image://{normalized}", attributes, caps, _platform(platform), _step(name, ignore_cache)
    )


def local(
    name: str,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    follow_paths: Sequence[str] = (),
    shared_key_hint: str = "",
    session_id: str = "",
    step_name: str | None = None,
) -> State:
    """Files sent by the client: the directory it names ``name`` (``--local name=DIR`` in buildctl).

    Patterns have ``.dockerignore`` semantics and are applied by the client before sending.
    """
    if not name:
        raise invalid("a local source needs a name, e.g. local('context')")
    attributes: dict[str, str] = {}
    caps = {"source.local"}
    if session_id:
        attributes["local.session"] = session_id
        caps.add("source.local.sessionid")
    for key, cap, values in (
        ("local.includepattern", "source.local.includepatterns", include),
        ("local.followpaths", "source.local.followpaths", follow_paths),
        ("local.excludepatterns", "source.local.excludepatterns", exclude),
    ):
        if values:
            attributes[key] = _go_json(list(values))
            caps.add(cap)
    if shared_key_hint:
        attributes["local.sharedkeyhint"] = shared_key_hint
        caps.add("source.local.sharedkeyhint")
    return _source(f"local://{name}", attributes, caps, None, _step(step_name, False))


# Characters Go's encoding/json escapes that Python's json.dumps (ensure_ascii=False) writes as is.
_GO_JSON_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def _go_json(values: list[str]) -> str:
    """``json.Marshal`` of a list of strings as Go writes it: UTF-8 kept, HTML characters escaped."""
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")).translate(_GO_JSON_ESCAPES)


def git(
    url: str,
    ref: str = "",
    *,
    subdir: str = "",
    keep_git_dir: bool = False,
    checksum: str = "",
    name: str | None = None,
) -> State:
    """A git repository at ``ref`` (branch, tag or commit); ``checksum`` pins the commit."""
    remote = url if "://" in url or _SCP_LIKE.match(url) else f"https://{url}"
    host, path, scheme = _parse_git_url(remote)
    subdir = join("/", subdir)[1:]  # cleaned, relative: as Go's fragment "ref:subdir" is
    identifier = host + clean("/" + path)
    if ref or subdir:
        identifier += f"#{ref}"
        if subdir:
            identifier += f":{subdir}"
    attributes = {}
    caps = {"source.git"}
    if keep_git_dir:
        attributes["git.keepgitdir"] = "true"
        caps.add("source.git.keepgitdir")
    attributes["git.fullurl"] = remote
    caps.add("source.git.fullurl")
    attributes["git.authtokensecret"] = "GIT_AUTH_TOKEN"
    attributes["git.authheadersecret"] = "GIT_AUTH_HEADER"
    if scheme == "ssh":
        attributes["git.mountsshsock"] = "default"
        caps |= {"source.git.knownsshhosts", "source.git.mountsshsock"}
    if checksum:
        attributes["git.checksum"] = checksum
        caps.add("source.git.checksum")
    return _source(f"git://{identifier}", attributes, caps, None, _step(name, False))


_SCP_LIKE = re.compile(r"^(?:[\w.-]+@)?[\w.-]+:(?!//)")


def _parse_git_url(url: str) -> tuple[str, str, str]:
    match = _SCP_LIKE.match(url)
    if match and "://" not in url:
        host = match.group(0).rstrip(":").rpartition("@")[2]
        return host, url[match.end() :], "ssh"
    parts = urlsplit(url)
    if not parts.hostname:
        raise invalid(f"git URL {url!r} has no host")
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return host, parts.path, parts.scheme


def http(
    url: str,
    *,
    checksum: str = "",
    filename: str = "",
    mode: int = 0,
    uid: int = 0,
    gid: int = 0,
    name: str | None = None,
) -> State:
    """A file downloaded by the daemon; ``checksum`` (``sha256:...``) makes the build fail on a mismatch."""
    if not url.startswith(("http://", "https://")):
        raise invalid(f"http source {url!r} must be an http:// or https:// URL")
    if checksum and not _SHA256.match(checksum):
        raise invalid(f"checksum {checksum!r} must be sha256:<64 hex digits>")
    attributes = {}
    caps = {"source.http"}
    if checksum:
        attributes["http.checksum"] = checksum
        caps.add("source.http.checksum")
    if filename:
        attributes["http.filename"] = filename
    if mode & 0o777:  # llb.Chmod keeps the permission bits only
        attributes["http.perm"] = f"0{mode & 0o777:o}"
        caps.add("source.http.perm")
    if uid:
        attributes["http.uid"] = str(uid)
        caps.add("soruce.http.uidgid")  # sic: BuildKit's cap id is spelled this way
    if gid:
        attributes["http.gid"] = str(gid)
        caps.add("soruce.http.uidgid")
    return _source(url, attributes, caps, None, _step(name, False))


def oci_layout(
    ref: str,
    *,
    session_id: str = "",
    store_id: str = "",
    platform: Platform | str | None = None,
    name: str | None = None,
) -> State:
    """An image from an OCI layout the client serves through its session (``name@sha256:...``)."""
    attributes = {}
    if session_id:
        attributes["oci.session"] = session_id
    if store_id:
        attributes["oci.store"] = store_id
    return _source(
        f"oci-layout://{ref}", attributes, {"source.ocilayout"}, _platform(platform), _step(name, False)
    )


def scratch() -> State:
    """The empty filesystem."""
    return State()


def _platform(value: Platform | str | None) -> Platform | None:
    if value is None or isinstance(value, Platform):
        return value
    try:
        return Platform.parse(value)
    except ValueError as exc:
        raise invalid(str(exc)) from None

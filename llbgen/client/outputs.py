"""``--output``, ``--cache-to`` and ``--cache-from`` values, in buildctl's CSV syntax."""

from __future__ import annotations

import csv
from collections.abc import Mapping

import attrs

from llbgen.llb.errors import UsageError

EXPORTER_TYPES = ("image", "registry", "oci", "docker", "tar", "local")
CACHE_TYPES = ("registry", "local", "inline")


def parse_csv(text: str, flag: str) -> dict[str, str]:
    """``type=image,name=x,push=true`` → dict; quoted fields may hold commas, as in buildctl."""
    try:
        fields = next(csv.reader([text]))
    except (csv.Error, StopIteration):
        raise UsageError(f"{flag} {text!r}: expected comma-separated key=value pairs") from None
    out = {}
    for field in fields:
        key, sep, value = field.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} {text!r}: {field!r} is not key=value")
        out[key.strip().lower()] = value
    return out


@attrs.frozen
class Output:
    """One exporter: its type, its attributes for the daemon, and where files land (``dest``)."""

    type: str
    attrs: Mapping[str, str]
    dest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Output:
        fields = parse_csv(text, "--output")
        kind = fields.pop("type", "")
        if kind == "registry":  # buildx's shorthand
            kind, fields["push"] = "image", "true"
        if kind not in EXPORTER_TYPES:
            raise UsageError(f"--output type {kind!r} is not one of {', '.join(EXPORTER_TYPES)}")
        dest = fields.pop("dest", None)
        if kind in ("local", "tar") and not dest:
            raise UsageError(f"--output type={kind} needs dest=" + ("DIR" if kind == "local" else "FILE or -"))
        if kind in ("oci", "docker") and not dest:
            raise UsageError(f"--output type={kind} needs dest=FILE (or - for stdout)")
        if kind == "local" and dest == "-":
            raise UsageError("--output type=local needs a directory, not -; use type=tar,dest=- for a stream")
        if kind == "image" and fields.get("push") == "true" and not fields.get("name"):
            raise UsageError("--output type=image,push=true needs name=REF")
        return cls(kind, fields, dest)


@attrs.frozen
class CacheOption:
    type: str
    attrs: Mapping[str, str]

    @classmethod
    def parse(cls, text: str, flag: str) -> CacheOption:
        fields = parse_csv(text, flag)
        kind = fields.pop("type", "")
        if kind not in CACHE_TYPES:
            raise UsageError(f"{flag} type {kind!r} is not one of {', '.join(CACHE_TYPES)}")
        if kind == "registry" and not fields.get("ref"):
            raise UsageError(f"{flag} type=registry needs ref=REF")
        if kind == "local":
            # A directory served to the daemon as a content store (llbgen.session.content).
            from llbgen.session.content import parse_go_bool

            key = "src" if flag == "--cache-from" else "dest"
            if not fields.get(key):
                raise UsageError(f"{flag} type=local needs {key}=DIR")
            if key == "src" and "tag" in fields and not fields["tag"] and not fields.get("digest"):
                raise UsageError(f"{flag} type=local needs digest= or a non-empty tag= (default latest)")
            if key == "dest" and "reset" in fields and parse_go_bool(fields["reset"]) is None:
                raise UsageError(f"{flag} reset={fields['reset']!r}: expected true or false")
        return cls(kind, fields)

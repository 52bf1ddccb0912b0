"""Times as the content store keeps and serves them: RFC 3339 in the ingest files (Go's
``time.MarshalText``, so that containerd and BuildKit read what we write), protobuf on the wire."""

from __future__ import annotations

import calendar
import re
import time

from google.protobuf import timestamp_pb2


_TIME_RE = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d\d):(\d\d))"
)


def format_time(ns: int) -> str:
    """RFC 3339 with nanoseconds in UTC, as Go's ``time.MarshalText`` writes it."""
    seconds, rest = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if rest:
        text += "." + f"{rest:09d}".rstrip("0")
    return text + "Z"


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time (Go's ``time.UnmarshalText``)."""
    match = _TIME_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if match.group(9):
        offset = int(match.group(10)) * 3600 + int(match.group(11)) * 60
        seconds -= offset if match.group(9) == "+" else -offset
    fraction = int((match.group(7) or "0").ljust(9, "0"))
    return seconds * 1_000_000_000 + fraction


def timestamp(ns: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(ns)
    return ts

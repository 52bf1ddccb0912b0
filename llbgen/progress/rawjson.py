"""``--progress rawjson``: one JSON object per status message, as ``buildctl --progress rawjson``.

buildctl converts each ``StatusResponse`` to its ``client.SolveStatus`` and writes it with Go's
``encoding/json``: lower-case keys, empty values left out (except a status row's ``id``,
``current`` and ``timestamp`` and a log's ``data`` and ``timestamp``), byte strings in base64,
times in RFC 3339 with nanoseconds and trailing zeros dropped, and ``<``, ``>``, ``&`` escaped.
``encode`` reproduces that text; ``decode`` turns such a line back into a ``StatusResponse``.

buildctl also shifts every time so that the first step starts at the moment buildctl started
watching; this printer writes the daemon's times unchanged.
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import threading
from typing import Any, TextIO

from google.protobuf import descriptor as _descriptor
from google.protobuf.message import Message

from llbgen.pb import control_pb2
from llbgen.progress.tracker import StatusTracker, timestamp_ns

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_TIME_RE = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d\d):(\d\d))$"
)
_FD = _descriptor.FieldDescriptor


def format_time(ns: int) -> str:
    """Go's ``time.RFC3339Nano`` for a UTC time given in nanoseconds since the epoch."""
    sec, nsec = divmod(ns, 1_000_000_000)
    dt = _EPOCH + datetime.timedelta(seconds=sec)
    text = (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    )
    if nsec:
        text += "." + f"{nsec:09d}".rstrip("0")
    return text + "Z"


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time (the inverse of ``format_time``)."""
    m = _TIME_RE.match(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac = m.group(7) or ""
    nanos = int(frac.ljust(9, "0")) if frac else 0
    offset = 0
    if m.group(9):
        offset = (int(m.group(10)) * 60 + int(m.group(11))) * 60
        if m.group(9) == "-":
            offset = -offset
    dt = datetime.datetime(year, month, day, hour, minute, second, tzinfo=datetime.timezone.utc)
    seconds = (dt - _EPOCH) // datetime.timedelta(seconds=1) - offset
    return seconds * 1_000_000_000 + nanos


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _set_time(message: Message, field: str, ns: int) -> None:
    sec, nsec = divmod(ns, 1_000_000_000)
    ts = getattr(message, field)
    ts.seconds = sec
    ts.nanos = nsec


def _message_to_go(msg: Message) -> dict[str, Any]:
    """A protobuf message as Go's encoding/json writes protoc-gen-go structs: proto field names,
    every field ``omitempty``, maps with sorted keys."""
    out: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if not value:
                continue
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {
                k: _value_to_go(value_field.type, value[k]) for k in sorted(value)
            }
        elif field.is_repeated:
            if len(value):
                out[field.name] = [_value_to_go(field.type, item) for item in value]
        elif field.type == _FD.TYPE_MESSAGE:
            if msg.HasField(field.name):
                out[field.name] = _message_to_go(value)
        elif value:
            out[field.name] = _value_to_go(field.type, value)
    return out


def _value_to_go(kind: int, value: Any) -> Any:
    if kind == _FD.TYPE_MESSAGE:
        return _message_to_go(value)
    if kind == _FD.TYPE_BYTES:
        return _b64(bytes(value))
    return value


def _message_from_go(msg: Message, obj: dict[str, Any]) -> None:
    for field in msg.DESCRIPTOR.fields:
        if field.name not in obj or obj[field.name] is None:
            continue
        value = obj[field.name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target = getattr(msg, field.name)
            value_field = field.message_type.fields_by_name["value"]
            for k, v in value.items():
                if value_field.type == _FD.TYPE_MESSAGE:
                    _message_from_go(target[k], v)
                else:
                    target[k] = _value_from_go(value_field.type, v)
        elif field.is_repeated:
            target = getattr(msg, field.name)
            for item in value:
                if field.type == _FD.TYPE_MESSAGE:
                    _message_from_go(target.add(), item)
                else:
                    target.append(_value_from_go(field.type, item))
        elif field.type == _FD.TYPE_MESSAGE:
            _message_from_go(getattr(msg, field.name), value)
            getattr(msg, field.name).SetInParent()
        else:
            setattr(msg, field.name, _value_from_go(field.type, value))


def _value_from_go(kind: int, value: Any) -> Any:
    if kind == _FD.TYPE_BYTES:
        return base64.b64decode(value)
    return value


def to_json(status: control_pb2.StatusResponse) -> dict[str, Any]:
    """The ``client.SolveStatus`` buildctl makes of a status message, as a JSON-ready dict."""
    out: dict[str, Any] = {}
    vertexes = []
    for v in status.vertexes:
        item: dict[str, Any] = {}
        if v.digest:
            item["digest"] = v.digest
        if len(v.inputs):
            item["inputs"] = list(v.inputs)
        if v.name:
            item["name"] = v.name
        for field in ("started", "completed"):
            ns = timestamp_ns(v, field)
            if ns is not None:
                item[field] = format_time(ns)
        if v.cached:
            item["cached"] = True
        if v.error:
            item["error"] = v.error
        if v.HasField("progressGroup"):
            item["progressGroup"] = _message_to_go(v.progressGroup)
        vertexes.append(item)
    if vertexes:
        out["vertexes"] = vertexes
    statuses = []
    for s in status.statuses:
        item = {"id": s.ID}
        if s.vertex:
            item["vertex"] = s.vertex
        if s.name:
            item["name"] = s.name
        if s.total:
            item["total"] = int(s.total)
        item["current"] = int(s.current)
        item["timestamp"] = format_time(timestamp_ns(s, "timestamp") or 0)
        for field in ("started", "completed"):
            ns = timestamp_ns(s, field)
            if ns is not None:
                item[field] = format_time(ns)
        statuses.append(item)
    if statuses:
        out["statuses"] = statuses
    logs = []
    for log in status.logs:
        item = {}
        if log.vertex:
            item["vertex"] = log.vertex
        if log.stream:
            item["stream"] = int(log.stream)
        item["data"] = _b64(bytes(log.msg)) if log.msg else None
        item["timestamp"] = format_time(timestamp_ns(log, "timestamp") or 0)
        logs.append(item)
    if logs:
        out["logs"] = logs
    warnings = []
    for w in status.warnings:
        item = {}
        if w.vertex:
            item["vertex"] = w.vertex
        if w.level:
            item["level"] = int(w.level)
        if w.short:
            item["short"] = _b64(bytes(w.short))
        if len(w.detail):
            item["detail"] = [_b64(bytes(d)) for d in w.detail]
        if w.url:
            item["url"] = w.url
        if w.HasField("info"):
            item["sourceInfo"] = _message_to_go(w.info)
        if len(w.ranges):
            item["range"] = [_message_to_go(r) for r in w.ranges]
        warnings.append(item)
    if warnings:
        out["warnings"] = warnings
    return out


def from_json(obj: dict[str, Any] | str) -> control_pb2.StatusResponse:
    """A status message back from buildctl's rawjson (or ``--trace``) form."""
    if isinstance(obj, str):
        obj = json.loads(obj)
    assert isinstance(obj, dict)
    resp = control_pb2.StatusResponse()
    for item in obj.get("vertexes") or ():
        v = resp.vertexes.add()
        v.digest = item.get("digest", "")
        v.inputs.extend(item.get("inputs") or ())
        v.name = item.get("name", "")
        for field in ("started", "completed"):
            if item.get(field):
                _set_time(v, field, parse_time(item[field]))
        v.cached = bool(item.get("cached", False))
        v.error = item.get("error", "")
        if item.get("progressGroup") is not None:
            _message_from_go(v.progressGroup, item["progressGroup"])
            v.progressGroup.SetInParent()
    for item in obj.get("statuses") or ():
        s = resp.statuses.add()
        s.ID = item.get("id", "")
        s.vertex = item.get("vertex", "")
        s.name = item.get("name", "")
        s.total = int(item.get("total", 0))
        s.current = int(item.get("current", 0))
        _set_time(s, "timestamp", parse_time(item.get("timestamp") or "1970-01-01T00:00:00Z"))
        for field in ("started", "completed"):
            if item.get(field):
                _set_time(s, field, parse_time(item[field]))
    for item in obj.get("logs") or ():
        log = resp.logs.add()
        log.vertex = item.get("vertex", "")
        log.stream = int(item.get("stream", 0))
        log.msg = base64.b64decode(item.get("data") or "")
        _set_time(log, "timestamp", parse_time(item.get("timestamp") or "1970-01-01T00:00:00Z"))
    for item in obj.get("warnings") or ():
        w = resp.warnings.add()
        w.vertex = item.get("vertex", "")
        w.level = int(item.get("level", 0))
        w.short = base64.b64decode(item.get("short") or "")
        w.detail.extend(base64.b64decode(d) for d in item.get("detail") or ())
        w.url = item.get("url", "")
        if item.get("sourceInfo") is not None:
            _message_from_go(w.info, item["sourceInfo"])
            w.info.SetInParent()
        for r in item.get("range") or ():
            _message_from_go(w.ranges.add(), r)
    return resp


def go_json(value: Any) -> str:
    """Compact JSON escaped as Go's ``encoding/json`` escapes it (HTML-safe, U+2028/9 too)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def encode(status: control_pb2.StatusResponse) -> str:
    """One rawjson line (with its newline), as buildctl would print it."""
    return go_json(to_json(status)) + "\n"


def decode(line: str) -> control_pb2.StatusResponse:
    return from_json(line)


class RawJSONPrinter:
    """Writes each status message as one JSON line."""

    def __init__(self, stream: TextIO, *, tracker: StatusTracker | None = None) -> None:
        self.stream = stream
        self.tracker = tracker if tracker is not None else StatusTracker()
        self._lock = threading.Lock()
        self._closed = False

    def update(self, status: control_pb2.StatusResponse) -> None:
        with self._lock:
            if self._closed:
                return
            self.tracker.update(status)
            self.stream.write(encode(status))
            self.stream.flush()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self.stream.flush()

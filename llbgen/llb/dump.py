"""Human-readable views of a definition, in the shapes of ``buildctl debug dump-llb`` (JSON, dot).

The JSON is rendered from the op bytes (decoded with our protos), not from llbgen's own objects, so
it shows exactly what goes on the wire. It follows Go's ``encoding/json`` over BuildKit's structs:
proto field names in declaration order, zero values left out, enums as numbers, bytes as base64,
and the custom shapes BuildKit gives ``Op``, ``FileAction`` and ``UserOpt``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from llbgen.llb.definition import Definition
from llbgen.pb import ops_pb2

_FileActionKinds = ("copy", "mkfile", "mkdir", "rm")  # symlink is missing from Go's JSON shape too


def json_lines(definition: Definition) -> Iterator[str]:
    """One line per op: ``{"Op": ..., "Digest": ..., "OpMetadata": ...}``."""
    metadata = definition.to_pb().metadata
    for digest, data in definition:
        op = ops_pb2.Op.FromString(data)
        record = {
            "Op": _value(op),
            "Digest": digest,
            "OpMetadata": _value(metadata[digest]) if digest in metadata else None,
        }
        yield _go_json(record)


def dot(definition: Definition) -> str:
    """A Graphviz digraph of the ops, labelled as buildctl labels them."""
    lines = ["digraph {"]
    ops = [(digest, ops_pb2.Op.FromString(data)) for digest, data in definition]
    for digest, op in ops:
        label, shape = _label(digest, op)
        lines.append(f"  {_quote(digest)} [label={_quote(label)} shape={_quote(shape)}];")
    for digest, op in ops:
        for i, inp in enumerate(op.inputs):
            edge = ""
            if op.WhichOneof("op") == "exec":
                for mount in op.exec.mounts:
                    if mount.input == i and mount.dest != "/":
                        edge = mount.dest
            lines.append(f"  {_quote(inp.digest)} -> {_quote(digest)} [label={_quote(edge)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _label(digest: str, op: ops_pb2.Op) -> tuple[str, str]:
    kind = op.WhichOneof("op")
    if kind == "source":
        return op.source.identifier, "ellipse"
    if kind == "exec":
        return " ".join(op.exec.meta.args), "box"
    if kind == "merge":
        return "merge", "invtriangle"
    if kind == "diff":
        return "diff", "doublecircle"
    if kind == "build":
        return "build", "box3d"
    if kind == "file":
        names = []
        for action in op.file.actions:
            which = action.WhichOneof("action")
            if which == "copy":
                names.append(f"copy{{src={action.copy.src}, dest={action.copy.dest}}}")
            elif which == "symlink":
                s = action.symlink
                names.append(f"symlink{{oldpath={s.oldpath}, newpath={s.newpath}}}")
            elif which is not None:
                names.append(f"{which}{{path={getattr(action, which).path}}}")
        return ",".join(names), "note"
    return digest, "plaintext"


def _value(message: Message) -> dict[str, Any]:
    name = message.DESCRIPTOR.full_name
    if name == "pb.Op":
        return _op(message)  # type: ignore[arg-type]
    if name == "pb.FileAction":
        return _file_action(message)  # type: ignore[arg-type]
    if name == "pb.UserOpt":
        user = message.WhichOneof("user")
        inner: dict[str, Any] = {}
        if user == "byName":
            inner["byName"] = _value(message.byName)  # type: ignore[attr-defined]
        elif user == "byID" and message.byID:  # type: ignore[attr-defined]
            inner["byId"] = message.byID  # type: ignore[attr-defined]
        return {"User": inner}
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = _field(message, field)
        if value is not None:
            out[field.name] = value
    return out


def _op(op: ops_pb2.Op) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if op.inputs:
        out["inputs"] = [_value(i) for i in op.inputs]
    kind = op.WhichOneof("op")
    out["Op"] = {kind: _value(getattr(op, kind))} if kind else {}
    if op.HasField("platform"):
        out["platform"] = _value(op.platform)
    if op.HasField("constraints"):
        out["constraints"] = _value(op.constraints)
    return out


def _file_action(action: ops_pb2.FileAction) -> dict[str, Any]:
    kind = action.WhichOneof("action")
    return {
        "input": action.input,
        "secondaryInput": action.secondaryInput,
        "output": action.output,
        "Action": {kind: _value(getattr(action, kind))} if kind in _FileActionKinds else {},
    }


def _field(message: Message, field: Any) -> Any:
    """A field's JSON value, or None where Go's ``omitempty`` leaves it out."""
    value = getattr(message, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if not value:
            return None
        value_field = field.message_type.fields_by_name["value"]
        return {
            k: _value(v) if value_field.message_type is not None else _scalar(value_field, v)
            for k, v in sorted(value.items())
        }
    if field.is_repeated:
        if not value:
            return None
        if field.message_type is not None:
            return [_value(v) for v in value]
        return [_scalar(field, v) for v in value]
    if field.message_type is not None:
        return _value(value) if message.HasField(field.name) else None
    return _scalar(field, value) if value else None


def _scalar(field: Any, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value


def _go_json(value: Any) -> str:
    """``json.Marshal``'s bytes: compact, raw UTF-8, and HTML-safe escapes for < > &."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _quote(text: str) -> str:
    """Go's ``%q`` for the strings a graph label holds (printable text, common escapes)."""
    return json.dumps(text, ensure_ascii=False)

"""Protobuf wire encoding in Go's field order.

BuildKit digests every op as the sha256 of Go's deterministic marshal, which writes the fields of a
message that are not in a ``oneof`` first (by number) and the ``oneof`` member last. Python's
protobuf serializer orders strictly by number, so ops are encoded here, by hand, with the same
rules Go uses for proto3: zero scalars and empty strings are left out, a present sub-message is
written even when empty, oneof members are written even when zero, map entries are sorted by key
and carry both key and value, and repeated scalars are packed.

Each function returns the bytes of one field (or ``b""`` when proto3 leaves it out), so a message is
the concatenation of its fields in the order the caller writes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

_VARINT = 0
_LEN = 2
_UINT64 = (1 << 64) - 1


def varint(value: int) -> bytes:
    """Base-128 varint; negative numbers take ten bytes, as int32/int64 do on the wire."""
    value &= _UINT64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def int_field(number: int, value: int) -> bytes:
    """An int32/int64/uint32/enum/bool field with proto3 implicit presence."""
    if not value:
        return b""
    return _key(number, _VARINT) + varint(value)


def oneof_int_field(number: int, value: int) -> bytes:
    """A scalar ``oneof`` member: written even when zero, since being set is its presence."""
    return _key(number, _VARINT) + varint(value)


def bool_field(number: int, value: bool) -> bytes:
    return _key(number, _VARINT) + b"\x01" if value else b""


def bytes_field(number: int, value: bytes) -> bytes:
    if not value:
        return b""
    return _key(number, _LEN) + varint(len(value)) + value


def str_field(number: int, value: str) -> bytes:
    return bytes_field(number, value.encode()) if value else b""


def message_field(number: int, body: bytes | None) -> bytes:
    """A sub-message; ``None`` means absent, ``b""`` an empty message that is still present."""
    if body is None:
        return b""
    return _key(number, _LEN) + varint(len(body)) + body


def repeated_str_field(number: int, values: Iterable[str]) -> bytes:
    return b"".join(
        _key(number, _LEN) + varint(len(data)) + data for data in (v.encode() for v in values)
    )


def repeated_message_field(number: int, bodies: Iterable[bytes]) -> bytes:
    return b"".join(message_field(number, body) for body in bodies)


def packed_int_field(number: int, values: Iterable[int]) -> bytes:
    payload = b"".join(varint(v) for v in values)
    return bytes_field(number, payload)


def string_map_field(number: int, entries: Mapping[str, str]) -> bytes:
    """``map<string, string>``: one entry message per key, sorted, key and value always written."""
    out = []
    for key in sorted(entries):
        k, v = key.encode(), entries[key].encode()
        entry = b"\x0a" + varint(len(k)) + k + b"\x12" + varint(len(v)) + v
        out.append(message_field(number, entry))
    return b"".join(out)

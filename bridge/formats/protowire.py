"""The protobuf wire format, by hand: enough to write a few messages and read a small reply.

A format that speaks protobuf (`bridge.formats.otlp`) builds its messages from these pieces
instead of generated classes, so the package needs no protobuf runtime: a message is the
concatenation of its fields, each a key (field number and wire type, as a varint) and a value
(a varint, 8 little-endian bytes, or a length-prefixed run of bytes: strings, bytes and
embedded messages). Keys are constants of the caller (`key(1, LEN)`), built once.
`fields` reads a message back, one level at a time, for a collector's reply.
Encoding follows https://protobuf.dev/programming-guides/encoding/.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

__all__ = [
    "FIXED32",
    "FIXED64",
    "LEN",
    "VARINT",
    "WireError",
    "double",
    "fields",
    "fixed64",
    "key",
    "length_delimited",
    "signed",
    "varint",
]

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
_SMALL = tuple(bytes((n,)) for n in range(128))  # most lengths and keys: one byte, no loop
_U64 = (1 << 64) - 1
_pack_u64 = struct.Struct("<Q").pack
_pack_double = struct.Struct("<d").pack


class WireError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


def key(number: int, wire_type: int) -> bytes:
    """The key that starts a field: its number and how its value is laid out."""
    return varint(number << 3 | wire_type)


def varint(value: int) -> bytes:
    """A non-negative integer, seven bits a byte, lowest first."""
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def signed(value: int) -> bytes:
    """An int64 field's value: a negative number as its 64-bit two's complement (ten bytes)."""
    return varint(value & _U64)


def fixed64(value: int) -> bytes:
    """A fixed64 field's value (nanosecond timestamps): eight bytes, little-endian."""
    return _pack_u64(value & _U64)


def double(value: float) -> bytes:
    """A double field's value: the IEEE 754 binary64, little-endian."""
    return _pack_double(value)


def length_delimited(field_key: bytes, payload: bytes) -> bytes:
    """A string, bytes or embedded-message field: key, length, payload."""
    size = len(payload)
    return field_key + (_SMALL[size] if size < 0x80 else varint(size)) + payload


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise WireError("truncated or overlong varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(number, wire type, value) of each top-level field of a message, in order: an int for
    VARINT, FIXED64 and FIXED32 fields (unsigned), the raw bytes of a LEN field. WireError for
    bytes that are not a message (groups, unknown wire types, a field running past the end)."""
    at = 0
    while at < len(data):
        field_key, at = _read_varint(data, at)
        number, wire_type = field_key >> 3, field_key & 7
        if number == 0:
            raise WireError("field number 0")
        value: int | bytes
        if wire_type == VARINT:
            value, at = _read_varint(data, at)
        elif wire_type in (FIXED64, FIXED32):
            width = 8 if wire_type == FIXED64 else 4
            if at + width > len(data):
                raise WireError("truncated fixed-width field")
            value, at = int.from_bytes(data[at : at + width], "little"), at + width
        elif wire_type == LEN:
            size, at = _read_varint(data, at)
            if at + size > len(data):
                raise WireError("length-delimited field runs past the end")
            value, at = data[at : at + size], at + size
        else:
            raise WireError(f"wire type {wire_type}")
        yield number, wire_type, value

"""OpenTelemetry log messages from the bridge's events: read, then written as protobuf or JSON.

The encoding half of the `otlp` format (`bridge.formats.otlp`, which sends what this writes):
`group` reads a batch's lines into `LogRecord` fields grouped by resource; `protobuf_request`
writes them as an `ExportLogsServiceRequest` (opentelemetry-proto collector/logs/v1, with
`bridge.formats.protowire`: no protobuf runtime), `json_request` as OTLP/JSON (lowerCamelCase
keys, 64-bit integers as decimal strings, trace and span ids in hex, enums as integers).

Mapping: the resource is the event's `service.name`, `host.name` and `process.pid` (plus
configured attributes); `time_unix_nano` and `observed_time_unix_nano` come from the event's
own timestamp (the bridge observes an event when it captures it); the severity from `level`
(the log data model's first number of each range, as the OTel Python SDK maps logging
levels; the text is the level's name); `event_name` from `event`, which is also the body
unless the event has a `message`; W3C `trace_id` / `span_id` when valid; every other field is
a typed attribute (objects as kvlists, lists as arrays, null as an empty value), in order. A
field the record cannot read (an unreadable timestamp, a malformed trace id) stays an
attribute, as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.formats import protowire as pw
from bridge.formats.fields import BatchClock, parse_event

__all__ = [
    "RESOURCE_KEYS",
    "SEVERITY",
    "Group",
    "Record",
    "group",
    "json_request",
    "protobuf_request",
]

RESOURCE_KEYS = ("service.name", "host.name", "process.pid")
SEVERITY = {"trace": 1, "debug": 5, "info": 9, "warn": 13, "warning": 13}
SEVERITY |= {"error": 17, "critical": 21, "fatal": 21}
_ABSENT = object()
_MEMOIZED = frozenset({str, int, bool})  # not float: 0.0 == -0.0 would share an encoding
_INT64 = range(-(1 << 63), 1 << 63)
_HEX = frozenset("0123456789abcdef")
_HEAD_KEY, _NAME_KEY = object(), object()  # `memo` keys of a record's head and name fields


@dataclass(slots=True)
class Record:
    """One event, read into a LogRecord's fields."""

    time: int
    severity: int
    level: str
    body: str | None
    name: str
    trace_id: str  # lowercase hex, "" when the event has no valid one
    span_id: str
    attributes: dict[str, Any]


def _trace_context(value: Any, size: int) -> str:
    """`value` as a W3C id of `size` hex digits ("" if it is not one: all zeros is invalid)."""
    if not isinstance(value, str) or len(value) != size:
        return ""
    text = value.lower()
    if not _HEX.issuperset(text) or text.count("0") == size:
        return ""
    return text


def read(event: dict[str, Any], clock: BatchClock) -> Record:
    """The LogRecord of one event whose resource fields are taken already. `event` is
    `parse_event`'s own dict: the fields the record takes are popped, the rest are its
    attributes, in order (a field it cannot read stays an attribute, as it was)."""
    stamp = clock.ns(event.get("timestamp"), 0)
    if stamp:
        del event["timestamp"]
    level = event.get("level")
    if isinstance(level, str):
        del event["level"]
    else:
        level = ""
    name = event.get("event")
    if isinstance(name, str):
        del event["event"]
    else:
        name = ""
    body = event.get("message")
    if isinstance(body, str):
        del event["message"]
    else:
        body = name or None
    trace_id = _trace_context(event.get("trace_id"), 32)
    if trace_id:
        del event["trace_id"]
    span_id = _trace_context(event.get("span_id"), 16)
    if span_id:
        del event["span_id"]
    severity = SEVERITY.get(level.lower(), 0)
    return Record(stamp, severity, level.upper(), body, name, trace_id, span_id, event)


Memo = dict[tuple[Any, ...], Any]
"""Attributes already written in this request, by (name, type, value): a route, a method, a
host repeat from event to event. One per request, so it never outlives a batch and no thread
shares it."""


# -- protobuf: field keys of the messages written (number, wire type) ---------------------------
_K1, _K2 = pw.key(1, pw.LEN), pw.key(2, pw.LEN)  # the first and second LEN field of many
_BOOL, _INT, _DOUBLE = pw.key(2, pw.VARINT), pw.key(3, pw.VARINT), pw.key(4, pw.FIXED64)
_ARRAY, _KVLIST = pw.key(5, pw.LEN), pw.key(6, pw.LEN)
_TIME, _OBSERVED = pw.key(1, pw.FIXED64), pw.key(11, pw.FIXED64)
_SEVERITY, _SEVERITY_TEXT, _BODY = pw.key(2, pw.VARINT), pw.key(3, pw.LEN), pw.key(5, pw.LEN)
_ATTRIBUTE, _TRACE, _SPAN, _NAME = (pw.key(n, pw.LEN) for n in (6, 9, 10, 12))
_TRUE, _FALSE = _BOOL + b"\x01", _BOOL + b"\x00"


def _pb_value(value: Any) -> bytes:
    """An AnyValue."""
    if isinstance(value, str):
        return pw.length_delimited(_K1, value.encode())
    if isinstance(value, bool):  # before int: a bool is an int
        return _TRUE if value else _FALSE
    if isinstance(value, int):
        if value in _INT64:
            return _INT + pw.signed(value)
        return pw.length_delimited(_K1, str(value).encode())  # beyond int64: its digits
    if isinstance(value, float):
        return _DOUBLE + pw.double(value)
    if isinstance(value, dict):
        items = b"".join(pw.length_delimited(_K1, _pb_pair(k, v)) for k, v in value.items())
        return pw.length_delimited(_KVLIST, items)
    if isinstance(value, list):
        items = b"".join(pw.length_delimited(_K1, _pb_value(v)) for v in value)
        return pw.length_delimited(_ARRAY, items)
    return b""  # null: an empty AnyValue


def _pb_pair(name: str, value: Any) -> bytes:
    """A KeyValue."""
    return pw.length_delimited(_K1, name.encode()) + pw.length_delimited(_K2, _pb_value(value))


def _pb_attribute(field_key: bytes, name: str, value: Any) -> bytes:
    """A `repeated KeyValue attributes` field (`field_key` is its key)."""
    key, any_value = name.encode(), _pb_value(value)
    size = len(key) + len(any_value) + 4
    if size < 0x80:  # every length fits in one byte: one formatting instead of three joins
        return b"%b%c\n%c%b\x12%c%b" % (field_key, size, len(key), key, len(any_value), any_value)
    return pw.length_delimited(field_key, _pb_pair(name, value))


def _pb_record(r: Record, observed: int, memo: Memo) -> bytes:
    """A LogRecord, its fields in number order (as protobuf's own serializer writes them).

    What repeats from record to record comes from `memo`: the severity, level and body
    fields together, the name, and each attribute, looked up by its `(name, value)` pair
    from `attributes.items()` as it is (no key built per attribute; see `_pb_memo_attribute`).
    """
    found = memo.get
    head: bytes | None = found(head_key := (_HEAD_KEY, r.severity, r.level, r.body))
    if head is None:
        head = memo[head_key] = _pb_record_head(r)
    parts = [_TIME + pw.fixed64(r.time), head] if r.time else [head]
    try:
        parts += [found(pair) or _pb_memo_attribute(memo, pair) for pair in r.attributes.items()]
    except TypeError:  # a list or an object among the values (unhashable): no lookup
        parts += [_pb_memo_attribute(memo, pair) for pair in r.attributes.items()]
    if r.trace_id:
        parts.append(pw.length_delimited(_TRACE, bytes.fromhex(r.trace_id)))
    if r.span_id:
        parts.append(pw.length_delimited(_SPAN, bytes.fromhex(r.span_id)))
    parts.append(_OBSERVED + pw.fixed64(r.time or observed))
    if r.name:
        name: bytes | None = found(key := (_NAME_KEY, r.name))
        if name is None:
            name = memo[key] = pw.length_delimited(_NAME, r.name.encode())
        parts.append(name)
    return b"".join(parts)


def _pb_record_head(r: Record) -> bytes:
    """A LogRecord's severity number, severity text and body fields."""
    parts = [_SEVERITY + pw.varint(r.severity)] if r.severity else []
    if r.level:
        parts.append(pw.length_delimited(_SEVERITY_TEXT, r.level.encode()))
    if r.body is not None:
        parts.append(pw.length_delimited(_BODY, _pb_value(r.body)))
    return b"".join(parts)


def _pb_memo_attribute(memo: Memo, pair: tuple[str, Any]) -> bytes:
    """The attribute field of `pair`, remembered in `memo` when it may come again: a string
    value under the pair itself (no other type equals a string, so an int or a bool never
    finds it), an int or a bool under (name, type, value), as True == 1; never a float
    (0.0 == -0.0) or a structure."""
    name, value = pair
    kind = type(value)
    if kind is str:
        text = memo[pair] = _pb_attribute(_ATTRIBUTE, name, value)
        return text
    if kind not in _MEMOIZED:
        return _pb_attribute(_ATTRIBUTE, name, value)
    field: bytes | None = memo.get(key := (name, kind, value))
    if field is None:
        field = memo[key] = _pb_attribute(_ATTRIBUTE, name, value)
    return field


# -- JSON: OTLP's JSON mapping ------------------------------------------------------------------


def _json_value(value: Any) -> dict[str, Any]:
    """An AnyValue."""
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue" if value in _INT64 else "stringValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": [_json_pair(k, v) for k, v in value.items()]}}
    if isinstance(value, list):
        return {"arrayValue": {"values": [_json_value(v) for v in value]}}
    return {}


def _json_pair(name: str, value: Any, memo: Memo | None = None) -> dict[str, Any]:
    """A KeyValue (the same object for a repeated string attribute: orjson only reads it)."""
    kind = type(value)
    if memo is None or kind not in _MEMOIZED:
        return {"key": name, "value": _json_value(value)}
    found = memo.get(key := (name, kind, value))
    if found is None:
        found = memo[key] = {"key": name, "value": _json_value(value)}
    return found


def _json_record(r: Record, observed: int, memo: Memo) -> dict[str, Any]:
    record: dict[str, Any] = {"timeUnixNano": str(r.time)} if r.time else {}
    record["observedTimeUnixNano"] = str(r.time or observed)
    if r.severity:
        record["severityNumber"] = r.severity
    if r.level:
        record["severityText"] = r.level
    if r.body is not None:
        record["body"] = {"stringValue": r.body}
    record["attributes"] = [_json_pair(k, v, memo) for k, v in r.attributes.items()]
    if r.trace_id:
        record["traceId"] = r.trace_id
    if r.span_id:
        record["spanId"] = r.span_id
    if r.name:
        record["eventName"] = r.name
    return record


Group = tuple[list[tuple[str, Any]], list[Record]]
"""A resource's attributes and its records."""


def group(lines: Sequence[bytes], extra: Sequence[tuple[str, str]]) -> list[Group]:
    """The batch's records grouped by resource, in order of first appearance; `extra`
    resource attributes are added where the events do not set them."""
    groups: dict[tuple[Any, ...], Group] = {}
    clock = BatchClock()
    for line in lines:
        event = parse_event(line)
        values = tuple([event.pop(k, _ABSENT) for k in RESOURCE_KEYS])
        try:
            found = groups.get(key := values)
        except TypeError:  # a list or an object among them: grouped by their text
            found = groups.get(key := (repr(values),))
        if found is None:
            resource = [
                (k, v) for k, v in zip(RESOURCE_KEYS, values, strict=True) if v is not _ABSENT
            ]
            resource += [(k, v) for k, v in extra if k not in dict(resource)]
            found = groups[key] = (resource, [])
        found[1].append(read(event, clock))
    return list(groups.values())


def protobuf_request(groups: Sequence[Group], scope: Sequence[str], observed: int) -> bytes:
    """An `ExportLogsServiceRequest`: one ResourceLogs per group, each with one ScopeLogs
    (`scope`: its name and version). `observed`: the time of events that have none."""
    scope_field = pw.length_delimited(
        _K1,
        b"".join(
            pw.length_delimited(pw.key(n, pw.LEN), t.encode()) for n, t in enumerate(scope, 1)
        ),
    )
    body: list[bytes] = []
    memo: Memo = {}
    for resource, records in groups:
        pairs = b"".join(_pb_attribute(_K1, k, v) for k, v in resource)
        scope_logs = scope_field + b"".join(
            pw.length_delimited(_K2, _pb_record(r, observed, memo)) for r in records
        )
        resource_logs = pw.length_delimited(_K1, pairs) + pw.length_delimited(_K2, scope_logs)
        body.append(pw.length_delimited(_K1, resource_logs))
    return b"".join(body)


def json_request(groups: Sequence[Group], scope: Sequence[str], observed: int) -> bytes:
    """The same request in OTLP/JSON."""
    scope_object = dict(zip(("name", "version"), scope, strict=False))
    memo: Memo = {}
    resource_logs = [
        {
            "resource": {"attributes": [_json_pair(k, v) for k, v in resource]},
            "scopeLogs": [
                {
                    "scope": scope_object,
                    "logRecords": [_json_record(r, observed, memo) for r in records],
                }
            ],
        }
        for resource, records in groups
    ]
    return orjson.dumps({"resourceLogs": resource_logs})

"""`loki`: Grafana Loki's push API, `POST /loki/api/v1/push` with a JSON body (gzip allowed).

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

One request is `{"streams": [{"stream": {labels}, "values": [[ns, line, {metadata}], ...]}]}`:
one stream per label set, its values in time order. The timestamp is the event's own capture
time as a nanosecond epoch *string* (Loki refuses a number); the line is the event's JSON line
as the bridge wrote it. Labels come only from low-cardinality keys (`service_name`, `level`,
`event` by default): a label per request or user id would make a stream per id and hit Loki's
active-stream limit, so ids go to structured metadata instead (the optional third element of
a value, a flat string-to-string object, Loki 3 with schema v13; `send_structured_metadata =
false` for older Lokis, where they stay in the line alone).

Replies, as Loki's own clients read them (clients/pkg/util/client.go): 204 is success; 429 and
5xx are retried; 413 splits the batch; 400 and every other 4xx are refused for good. Loki's
`block_ingestion_status_code` (260 by default) is a 2xx that stored nothing: refused too.
"""

from __future__ import annotations

import operator
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from orjson import JSONDecodeError, dumps, loads

from bridge.events import ENVELOPE_ORDER
from bridge.formats.base import NO_QUERY, Limits, OptionError, Payload, Probe
from bridge.formats.fields import BatchClock, parse_event
from bridge.outcome import DELIVERED, Outcome, Rejected, StatusPolicy
from bridge.shrink import fit_event

__all__ = ["DEFAULT_LABELS", "DEFAULT_METADATA", "MAX_LINE_BYTES", "LokiFormat", "LokiOptions"]

# Loki's defaults (pkg/validation/limits.go): `max_line_size` "256KB" is 256,000 bytes (SI),
# label values up to 2048 bytes, 15 label names a stream, structured metadata "64kb" (64,000
# bytes of names and values) and 128 entries a line.
MAX_LINE_BYTES = 256_000
MAX_LABEL_VALUE_BYTES = 2048
MAX_LABEL_NAMES = 15
MAX_METADATA_BYTES = 64_000
MAX_METADATA_ENTRIES = 128
# Loki's own clients send at most 1 MiB a request (clients/pkg/util/config.go `BatchSize`),
# well within the 4 MiB gRPC message between distributor and ingester and the 6 MB ingestion
# burst. A line is escaped once more inside the body (at most about twice its size), so one
# cut line of MAX_LINE_BYTES always fits alone.
MAX_BODY_BYTES = 1024 * 1024
BLOCKED_STATUS = 260  # Loki's default `block_ingestion_status_code`

DEFAULT_LABELS = {"service_name": "service.name", "level": "level", "event": "event"}
DEFAULT_METADATA = {"request_id": "request_id", "trace_id": "trace_id", "user_id": "user.id"}
# One value per request, user or event: as labels they would make a stream each.
HIGH_CARDINALITY = frozenset(
    {
        "timestamp",
        "event_id",
        "request_id",
        "trace_id",
        "span_id",
        "user.id",
        "client.address",
        "url.path",
        "url.query",
        "user_agent.original",
        "process.pid",
    }
)
UNKNOWN_SERVICE = ("service_name", "unknown_service")  # what Loki itself names a nameless stream
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TENANT = re.compile(r"[a-zA-Z0-9!\-_.*'()]{1,150}")  # dskit's tenant ID characters
_TRUNCATED = {"bridge.truncated": True}
_STATUS = StatusPolicy(retry=frozenset({429}), retry_other_5xx=True, split=frozenset({413}))


def _check_names(option: str, names: Sequence[str]) -> None:
    for name in names:
        if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise OptionError(
                f"{option}.{name}",
                name,
                "a label name: letters, digits and _, not starting with a digit or __",
            )


@dataclass(frozen=True, slots=True)
class LokiOptions:
    """`labels`: label name -> event key (low-cardinality keys only); `static_labels`: label
    name -> a fixed value on every stream (`env = "prod"`); `structured_metadata`: name ->
    event key, sent when `send_structured_metadata`; `tenant`: the `X-Scope-OrgID` header."""

    labels: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LABELS))
    static_labels: dict[str, str] = field(default_factory=dict)
    structured_metadata: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_METADATA))
    send_structured_metadata: bool = True
    tenant: str | None = None

    def __post_init__(self) -> None:
        _check_names("labels", list(self.labels))
        _check_names("static_labels", list(self.static_labels))
        _check_names("structured_metadata", list(self.structured_metadata))
        for name, key in self.labels.items():
            if key in HIGH_CARDINALITY:
                raise OptionError(
                    f"labels.{name}",
                    key,
                    "a low-cardinality event key (ids make a stream each: put "
                    f"{key} in structured_metadata)",
                )
        for name in self.static_labels:
            if name in self.labels:
                raise OptionError(f"static_labels.{name}", name, "a name not also in labels")
        for name, value in self.static_labels.items():
            if len(value.encode()) > MAX_LABEL_VALUE_BYTES:
                raise OptionError(
                    f"static_labels.{name}", value, f"at most {MAX_LABEL_VALUE_BYTES} bytes"
                )
        if len(self.labels) + len(self.static_labels) > MAX_LABEL_NAMES:
            raise OptionError(
                "labels", self.labels, f"at most {MAX_LABEL_NAMES} labels with static_labels"
            )
        if len(self.structured_metadata) > MAX_METADATA_ENTRIES:
            raise OptionError(
                "structured_metadata",
                self.structured_metadata,
                f"at most {MAX_METADATA_ENTRIES} entries",
            )
        if self.tenant is not None and (
            not _TENANT.fullmatch(self.tenant) or self.tenant in (".", "..")
        ):
            raise OptionError(
                "tenant", self.tenant, "a Loki tenant ID: 1-150 of a-z A-Z 0-9 ! - _ . * ' ( )"
            )


def _text(value: Any) -> str | None:
    """A label or metadata value as Loki takes it (a string), or None to leave it out."""
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return None


class LokiFormat:
    """Groups a batch into streams by label set; each value is `[ns, line]` or
    `[ns, line, metadata]`, sorted by time within its stream (stable for equal times)."""

    name = "loki"
    content_type = "application/json"
    policy = _STATUS
    limits = Limits(max_events=None, max_body_bytes=MAX_BODY_BYTES)
    default_path = "/loki/api/v1/push"
    default_query = NO_QUERY

    def __init__(self, options: LokiOptions | None = None) -> None:
        options = options or LokiOptions()
        self._labels = tuple(options.labels.items())
        self._label_keys = tuple(options.labels.values())
        self._static = tuple(options.static_labels.items())
        self._metadata = (
            tuple(options.structured_metadata.items()) if options.send_structured_metadata else ()
        )
        self._headers = {"X-Scope-OrgID": options.tenant} if options.tenant else {}
        # The keys that must survive when a line is cut: the envelope and what labels read.
        self._keep = tuple(dict.fromkeys([*ENVELOPE_ORDER, *options.labels.values()]))

    def encode(self, lines: Sequence[bytes]) -> Payload:
        # One tight loop: this runs for every event on the delivery thread, so the common
        # case (the bridge's own lines, string values) is inlined and the rest is helpers.
        now = time.time_ns()  # only for a line without a readable timestamp of its own
        streams: dict[tuple[tuple[str, str], ...], list[tuple[int, list[Any]]]] = {}
        # Per batch, not shared (formats are used from several threads): the streams by the
        # raw values their labels read; the clock reads each second of the batch once.
        by_values: dict[tuple[Any, ...], list[tuple[int, list[Any]]]] = {}
        clock = BatchClock()
        label_keys = self._label_keys
        metadata_keys = self._metadata
        for line in lines:
            try:
                event = loads(line)
            except JSONDecodeError:
                event = parse_event(line)
            if type(event) is not dict:
                event = parse_event(line)
            text = line[:-1] if line[-1:] == b"\n" else line
            if len(text) > MAX_LINE_BYTES:
                text = self._cut(event, len(text))
            ns = clock.ns(event.get("timestamp"), now)
            value: list[Any] = [str(ns), text.decode("utf-8", "replace")]
            if metadata_keys:
                metadata: dict[str, str] = {}
                size = 0
                for name, key in metadata_keys:
                    found = event.get(key)
                    if type(found) is not str:
                        found = _text(found)
                    if found:
                        metadata[name] = found
                        size += len(name) + len(found)
                if size * 4 > MAX_METADATA_BYTES:  # UTF-8: at most 4 bytes a character
                    metadata = _within_metadata_limit(metadata)
                if metadata:
                    value.append(metadata)
            raw = tuple(map(event.get, label_keys))
            try:
                values = by_values.get(raw)
            except TypeError:  # a structured value (unhashable): never a label anyway
                values = None
            if values is None:
                values = streams.setdefault(self._stream_of(event), [])
                # Only text is remembered: 1, 1.0 and True are equal keys but other labels.
                if all(v is None or type(v) is str for v in raw):
                    by_values[raw] = values
            values.append((ns, value))
        body = {
            "streams": [
                {"stream": dict(stream), "values": [v for _, v in sorted(values, key=_FIRST)]}
                for stream, values in streams.items()
            ]
        }
        return Payload(dumps(body), self.content_type, self._headers)

    def _stream_of(self, event: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        labels = list(self._static)
        for name, key in self._labels:
            text = _text(event.get(key))
            # A value over Loki's limit would refuse the whole stream: it stays in the line.
            if text is not None and len(text.encode()) <= MAX_LABEL_VALUE_BYTES:
                labels.append((name, text))
        return tuple(labels) if labels else (UNKNOWN_SERVICE,)

    def _cut(self, event: dict[str, Any], size: int) -> bytes:
        """The event shrunk to Loki's `max_line_size`, largest values first, marked
        `bridge.truncated` (Loki would refuse the line; `fit_event` keeps it valid JSON)."""
        fitted = fit_event(event, self._keep, MAX_LINE_BYTES + 1, size)  # +1: no newline here
        if fitted is not None:
            cut = orjson.dumps(fitted)
            if len(cut) <= MAX_LINE_BYTES:
                return cut
        # Even the envelope is too large (a huge event name): keep only short envelope values.
        kept = {k: event[k] for k in ENVELOPE_ORDER if k in event and len(str(event[k])) <= 256}
        return orjson.dumps({**kept, **_TRUNCATED, "bridge.original_bytes": size})

    def interpret(self, status: int, body: bytes) -> Outcome:
        if status == BLOCKED_STATUS:
            reason = f"loki: HTTP {status}, ingestion blocked for this tenant, batch not stored"
            excerpt = body[:512].decode("utf-8", "replace")
            return Rejected(reason, status, excerpt, "rejected")
        return DELIVERED

    def secrets(self) -> Sequence[str]:
        return ()

    def probe(self, url: str) -> Probe:
        """A push of one stream with no values: Loki stores nothing and answers 204 once the
        tenant and credentials are good; 401/403 when they are not."""
        body = b'{"streams":[{"stream":{"service_name":"flask-signal-bridge-check"},"values":[]}]}'
        headers = {**self._headers, "Content-Type": self.content_type}
        return Probe("POST", headers=headers, body=body, accepted=frozenset({204}))


_FIRST = operator.itemgetter(0)


def _within_metadata_limit(metadata: dict[str, str]) -> dict[str, str]:
    """The entries that fit Loki's per-line structured metadata limit, in order: over it the
    line would be refused (what is left out is still in the line)."""
    kept: dict[str, str] = {}
    room = MAX_METADATA_BYTES
    for name, text in metadata.items():
        room -= len(name) + len(text.encode())
        if room < 0:
            break
        kept[name] = text
    return kept

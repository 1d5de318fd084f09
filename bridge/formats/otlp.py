"""`otlp`: OpenTelemetry logs over OTLP/HTTP (`POST /v1/logs`), binary protobuf or JSON.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

One `ExportLogsServiceRequest` per batch (opentelemetry-proto logs/v1 and collector/logs/v1),
written by `bridge.formats.otlpmessages` (the mapping of events to log records is described
there): binary protobuf by default (`application/x-protobuf`, the Collector's default), written
by hand so the package needs no protobuf runtime, or OTLP/JSON (`application/json`). gzip is
accepted by every OTLP/HTTP receiver.

Replies follow the OTLP/HTTP specification: only 429, 502, 503 and 504 are retried (with
Retry-After), 413 splits the batch, anything else is refused; a 200 carrying `partial_success`
is never retried: its `rejected_log_records` are counted as refused by the collector.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata

import orjson

from bridge.formats import protowire as pw
from bridge.formats.base import NO_QUERY, Limits, OptionError, Payload, Probe
from bridge.formats.otlpmessages import group, json_request, protobuf_request
from bridge.outcome import DELIVERED, Delivered, Outcome, StatusPolicy

__all__ = ["OTLP_POLICY", "OtlpFormat", "OtlpOptions"]

# The OpenTelemetry Collector's default `max_request_body_size` (confighttp), after gunzip.
DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024
OTLP_POLICY = StatusPolicy(retry=frozenset({429, 502, 503, 504}), retry_other_5xx=False)
"""OTLP/HTTP's "Retryable Response Codes"; every other 4xx and 5xx MUST NOT be retried."""
CONTENT_TYPES = {"protobuf": "application/x-protobuf", "json": "application/json"}
SCOPE_NAME = "flask-signal-bridge"
try:
    SCOPE_VERSION = metadata.version("flask-signal-bridge")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    SCOPE_VERSION = ""


@dataclass(frozen=True, slots=True)
class OtlpOptions:
    """`protocol`: "protobuf" (`application/x-protobuf`, the Collector's default) or "json";
    `resource_attributes`: extra resource attributes (`deployment.environment`, ...);
    `max_body_bytes`: the receiver's request limit (uncompressed)."""

    protocol: str = "protobuf"
    resource_attributes: dict[str, str] = field(default_factory=dict)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __post_init__(self) -> None:
        if self.protocol not in CONTENT_TYPES:
            raise OptionError("protocol", self.protocol, '"protobuf" or "json"')


class OtlpFormat:
    """An `ExportLogsServiceRequest` per batch; a `partial_success` reply counted, not retried."""

    name = "otlp"
    policy = OTLP_POLICY
    default_path = "/v1/logs"
    default_query = NO_QUERY

    def __init__(self, options: OtlpOptions) -> None:
        self.content_type = CONTENT_TYPES[options.protocol]
        self.limits = Limits(max_body_bytes=options.max_body_bytes)
        self._write = json_request if options.protocol == "json" else protobuf_request
        self._extra = tuple(options.resource_attributes.items())
        self._scope = (SCOPE_NAME, SCOPE_VERSION) if SCOPE_VERSION else (SCOPE_NAME,)

    def encode(self, lines: Sequence[bytes]) -> Payload:
        observed = time.time_ns()  # only for events without a readable timestamp
        body = self._write(group(lines, self._extra), self._scope, observed)
        return Payload(body, self.content_type)

    def interpret(self, status: int, body: bytes) -> Outcome:
        """A 2xx reply: an `ExportLogsServiceResponse` (protobuf or JSON, as sent). A
        `partial_success` naming rejected records is a `Delivered` counting them; a reply that
        cannot be read (a proxy's "OK") still means the request was accepted."""
        try:
            rejected, message = _partial_success(body)
        except (ValueError, TypeError):  # WireError and JSONDecodeError are ValueErrors
            return DELIVERED
        if not rejected and not message:
            return DELIVERED
        return Delivered(rejected=max(rejected, 0), detail=message)

    def secrets(self) -> Sequence[str]:
        return ()

    def probe(self, url: str) -> Probe:
        """An empty `ExportLogsServiceRequest` (no records: nothing stored; the specification
        says a receiver should answer it with success) in the configured encoding."""
        body = b"{}" if self.content_type == CONTENT_TYPES["json"] else b""
        headers = {"Content-Type": self.content_type}
        return Probe("POST", headers=headers, body=body, accepted=frozenset(range(200, 300)))


def _partial_success(body: bytes) -> tuple[int, str]:
    """`rejected_log_records` and `error_message` of a reply's `partial_success` (0, "")."""
    if body.lstrip()[:1] == b"{":
        reply = orjson.loads(body)
        partial = reply.get("partialSuccess") if isinstance(reply, dict) else None
        if not isinstance(partial, dict):
            return 0, ""
        rejected = partial.get("rejectedLogRecords") or 0  # an int64: a string, or a number
        message = partial.get("errorMessage")
        return int(rejected), message if isinstance(message, str) else ""
    rejected, message = 0, ""
    for number, wire_type, value in pw.fields(body):
        if number == 1 and wire_type == pw.LEN and isinstance(value, bytes):
            for inner, inner_type, item in pw.fields(value):
                if inner == 1 and inner_type == pw.VARINT and isinstance(item, int):
                    rejected = item - (1 << 64) if item >= 1 << 63 else item  # int64
                elif inner == 2 and inner_type == pw.LEN and isinstance(item, bytes):
                    message = item.decode("utf-8", "replace")
    return rejected, message

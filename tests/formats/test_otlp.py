"""The `otlp` format: OTLP/HTTP logs, checked with opentelemetry-proto as the oracle (every body
parsed by the official classes, field by field), golden requests through a real HttpSink,
partial success and every status the specification names, limits, options, and delivery into
a real collector and into oteltest's OTLP/HTTP receiver."""

from __future__ import annotations

import base64
import calendar
import gzip
import json
import threading
from collections.abc import Iterator
from http.server import HTTPServer
from pathlib import Path
from typing import Any

import pytest
import responses
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

import bridge
import tests.collector
from bridge.config import load_settings
from bridge.errors import ConfigError
from bridge.formats import get_format
from bridge.formats import protowire as pw
from bridge.formats.otlp import DEFAULT_MAX_BODY_BYTES, OtlpOptions
from bridge.outcome import DELIVERED, Delivered, Rejected, RetryLater, Split
from bridge.sinks.httptransport import HttpTransport
from tests.collector import Collector, Reply
from tests.conftest import MakeSink
from tests.delivery.helpers import fast_settings

URL = "http://otel.test:4318"  # no path: the format's /v1/logs is used
ENDPOINT = URL + "/v1/logs"
STAMP = "2026-11-25T08:30:00.123456Z"
STAMP_NS = calendar.timegm((2026, 11, 25, 8, 30, 0)) * 10**9 + 123_456_000
TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"
_ids = iter(range(1 << 30))
DROP = object()  # `line(key=DROP)`: the event has no such field


def line(**fields: Any) -> bytes:
    """One bridge event line (envelope, a unique event_id), as the emitter writes it."""
    event = {
        "timestamp": STAMP,
        "level": "info",
        "event": "user.login",
        "signal": "user-login",
        "event_id": f"ev-{next(_ids):06d}",
        "service.name": "shop",
        "host.name": "web-1",
        "process.pid": 4242,
        **fields,
    }
    return json.dumps({k: v for k, v in event.items() if v is not DROP}).encode() + b"\n"


def event_id(raw: bytes) -> str:
    return str(json.loads(raw)["event_id"])


def any_value(value: Any) -> AnyValue:
    """The AnyValue the OTel SDK would build for a Python value (the expected side)."""
    if value is None:
        return AnyValue()
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, dict):
        return AnyValue(kvlist_value=KeyValueList(values=[kv(k, v) for k, v in value.items()]))
    return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))


def kv(key: str, value: Any) -> KeyValue:
    return KeyValue(key=key, value=any_value(value))


def typed(value: AnyValue) -> Any:
    """An AnyValue read back with its kind: ("int_value", 7), nested ones as dicts/lists."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        return {p.key: typed(p.value) for p in value.kvlist_value.values}
    if kind == "array_value":
        return [typed(v) for v in value.array_value.values]
    return (kind, getattr(value, kind))


def attributes(pairs: Any) -> dict[str, Any]:
    return {p.key: typed(p.value) for p in pairs}


def parse_json(body: bytes) -> ExportLogsServiceRequest:
    """An OTLP/JSON body through the official JSON parser. OTLP's one deviation from the
    protobuf JSON mapping is hex trace and span ids (json_format reads bytes as base64): they
    are checked to be hex here and handed to the parser as base64."""
    document = json.loads(body)
    for resource_logs in document["resourceLogs"]:
        for scope_logs in resource_logs["scopeLogs"]:
            for record in scope_logs["logRecords"]:
                for key, size in (("traceId", 32), ("spanId", 16)):
                    if key in record:
                        assert size == len(record[key])
                        record[key] = base64.b64encode(bytes.fromhex(record[key])).decode()
    request = ExportLogsServiceRequest()
    json_format.Parse(json.dumps(document), request)
    return request


def parse(body: bytes, protocol: str) -> ExportLogsServiceRequest:
    if protocol == "json":
        return parse_json(body)
    request = ExportLogsServiceRequest()
    request.ParseFromString(body)
    return request


def records(request: ExportLogsServiceRequest) -> dict[str, tuple[dict[str, Any], LogRecord]]:
    """Every LogRecord by its `event_id` attribute, with its resource's attributes."""
    found = {}
    for resource_logs in request.resource_logs:
        resource = attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            assert "flask-signal-bridge" == scope_logs.scope.name
            assert bridge.__version__ == scope_logs.scope.version
            for record in scope_logs.log_records:
                found[attributes(record.attributes)["event_id"][1]] = (resource, record)
    return found


def encode(lines: list[bytes], protocol: str = "protobuf", **options: Any) -> bytes:
    return get_format("otlp", OtlpOptions(protocol=protocol, **options)).encode(lines).body


def sent(call: Any) -> bytes:
    body = call.request.body
    assert isinstance(body, bytes)
    return gzip.decompress(body) if call.request.headers.get("Content-Encoding") == "gzip" else body


PROTOCOLS = pytest.mark.parametrize("protocol", ["protobuf", "json"])


class TestEncoding:
    @PROTOCOLS
    def test_every_field_reads_back_through_the_official_classes(self, protocol: str) -> None:
        """Times, severity, body, event name, ids, typed attributes and resource, per event."""
        lines = [
            line(
                level="warning",
                trace_id=TRACE.upper(),
                span_id=SPAN,
                user_id=7,
                ratio=0.25,
                remember=True,
                note=None,
                big=-(2**63),
                long="é" * 200,
                cart={"items": [1, "two", None], "total": 9.5},
            ),
            line(event="payment.failed", level="error", message="card declined", **{"x": ""}),
        ]
        found = records(parse(encode(lines, protocol), protocol))
        resource, first = found[event_id(lines[0])]
        expected_resource = {
            "service.name": ("string_value", "shop"),
            "host.name": ("string_value", "web-1"),
            "process.pid": ("int_value", 4242),
        }
        assert expected_resource == resource
        assert (STAMP_NS, STAMP_NS) == (first.time_unix_nano, first.observed_time_unix_nano)
        assert (13, "WARNING") == (first.severity_number, first.severity_text)
        assert ("string_value", "user.login") == typed(first.body)
        assert "user.login" == first.event_name
        assert (bytes.fromhex(TRACE), bytes.fromhex(SPAN)) == (first.trace_id, first.span_id)
        expected = {
            "signal": ("string_value", "user-login"),
            "event_id": ("string_value", event_id(lines[0])),
            "user_id": ("int_value", 7),
            "ratio": ("double_value", 0.25),
            "remember": ("bool_value", True),
            "note": None,
            "big": ("int_value", -(2**63)),
            "long": ("string_value", "é" * 200),
            "cart": {
                "items": [("int_value", 1), ("string_value", "two"), None],
                "total": ("double_value", 9.5),
            },
        }
        assert expected == attributes(first.attributes)
        assert list(expected) == [a.key for a in first.attributes]  # the event's order
        _, second = found[event_id(lines[1])]
        assert (17, "ERROR") == (second.severity_number, second.severity_text)
        assert ("string_value", "card declined") == typed(second.body)
        assert "payment.failed" == second.event_name
        assert (b"", b"") == (second.trace_id, second.span_id)
        assert ("string_value", "") == attributes(second.attributes)["x"]

    @pytest.mark.parametrize(
        ("level", "number", "text"),
        [
            ("debug", 5, "DEBUG"),
            ("info", 9, "INFO"),
            ("warning", 13, "WARNING"),
            ("error", 17, "ERROR"),
            ("critical", 21, "CRITICAL"),
            ("notice", 0, "NOTICE"),
        ],
    )
    def test_levels_map_to_severity_numbers(self, level: str, number: int, text: str) -> None:
        """The log data model's numbers (DEBUG 5, INFO 9, WARN 13, ERROR 17, FATAL 21)."""
        lines = [line(level=level)]
        (_, record) = records(parse(encode(lines), "protobuf"))[event_id(lines[0])]
        assert (number, text) == (record.severity_number, record.severity_text)

    @pytest.mark.parametrize(
        ("trace_id", "span_id"),
        [("0" * 32, "0" * 16), (TRACE[:-1], SPAN + "0"), ("g" * 32, "z" * 16), (7, DROP)],
    )
    def test_invalid_trace_context_stays_an_attribute(self, trace_id: Any, span_id: Any) -> None:
        """Only valid W3C ids (hex, right length, not all zeros) become trace_id / span_id."""
        lines = [line(trace_id=trace_id, span_id=span_id)]
        (_, record) = records(parse(encode(lines), "protobuf"))[event_id(lines[0])]
        assert (b"", b"") == (record.trace_id, record.span_id)
        kept = attributes(record.attributes)
        assert trace_id == kept["trace_id"][1]
        assert (span_id is DROP) == ("span_id" not in kept)

    @PROTOCOLS
    def test_records_are_grouped_by_resource_in_order(self, protocol: str) -> None:
        """One ResourceLogs per service/host/pid, first-seen order; configured attributes
        are added, the event's own values win."""
        lines = [
            line(),
            line(**{"service.name": "billing"}),
            line(),
            line(**{"process.pid": DROP, "deployment.environment": "dev"}),
        ]
        options = {"resource_attributes": {"deployment.environment": "prod", "host.name": "x"}}
        request = parse(encode(lines, protocol, **options), protocol)
        groups = [
            (
                attributes(r.resource.attributes),
                [attributes(x.attributes)["event_id"][1] for x in r.scope_logs[0].log_records],
            )
            for r in request.resource_logs
        ]
        prod = ("string_value", "prod")
        shop, web = ("string_value", "shop"), ("string_value", "web-1")
        pid = ("int_value", 4242)
        assert [
            (
                {
                    "service.name": shop,
                    "host.name": web,
                    "process.pid": pid,
                    "deployment.environment": prod,
                },
                [event_id(lines[0]), event_id(lines[2])],
            ),
            (
                {
                    "service.name": ("string_value", "billing"),
                    "host.name": web,
                    "process.pid": pid,
                    "deployment.environment": prod,
                },
                [event_id(lines[1])],
            ),
            (
                {"service.name": shop, "host.name": web, "deployment.environment": prod},
                [event_id(lines[3])],
            ),
        ] == groups
        last = request.resource_logs[2].scope_logs[0].log_records[0]
        assert ("string_value", "dev") == attributes(last.attributes)["deployment.environment"]

    def test_an_unreadable_timestamp_is_kept_and_observed_is_the_send_time(self) -> None:
        """time_unix_nano 0 (unknown), observed_time_unix_nano set, the text an attribute."""
        lines = [line(timestamp="yesterday")]
        (_, record) = records(parse(encode(lines), "protobuf"))[event_id(lines[0])]
        assert 0 == record.time_unix_nano
        assert record.observed_time_unix_nano > STAMP_NS - 10**18  # a real clock reading
        assert ("string_value", "yesterday") == attributes(record.attributes)["timestamp"]

    @PROTOCOLS
    def test_a_time_no_uint64_holds_is_unknown_not_the_batch_refused(self, protocol: str) -> None:
        """Before 1970 or past 2262: time_unix_nano 0 and the text kept, so the official
        parser (a receiver) reads the request instead of refusing it whole as out of range."""
        lines = [
            line(timestamp="1969-12-31T23:59:59.000000Z"),
            line(timestamp="9999-12-31T23:59:59Z"),
        ]
        found = records(parse(encode([*lines, line()], protocol), protocol))
        assert [0, 0, STAMP_NS] == [record.time_unix_nano for _, record in found.values()]
        assert ("string_value", "9999-12-31T23:59:59Z") == attributes(
            found[event_id(lines[1])][1].attributes
        )["timestamp"]

    @PROTOCOLS
    def test_a_line_that_is_not_an_object_goes_out_as_its_body(self, protocol: str) -> None:
        """Never fails the batch: the text is the body, the resource is empty."""
        request = parse(encode([b"not json\n", b"[1]\n"], protocol), protocol)
        bodies = [
            (attributes(r.resource.attributes), typed(r.scope_logs[0].log_records[0].body))
            for r in request.resource_logs
        ]
        assert [({}, ("string_value", "not json"))] == bodies[:1]
        assert 2 == len(request.resource_logs[0].scope_logs[0].log_records)

    def test_json_keys_are_lower_camel_case_with_64_bit_integers_as_strings(self) -> None:
        """OTLP/JSON: timeUnixNano as a decimal string, severityNumber an integer, hex ids."""
        lines = [line(trace_id=TRACE, span_id=SPAN, n=5)]
        record = json.loads(encode(lines, "json"))["resourceLogs"][0]["scopeLogs"][0]["logRecords"][
            0
        ]
        assert {
            "timeUnixNano": str(STAMP_NS),
            "observedTimeUnixNano": str(STAMP_NS),
            "severityNumber": 9,
            "severityText": "INFO",
            "body": {"stringValue": "user.login"},
            "traceId": TRACE,
            "spanId": SPAN,
            "eventName": "user.login",
        } == {k: v for k, v in record.items() if k != "attributes"}
        assert {"key": "n", "value": {"intValue": "5"}} == record["attributes"][-1]

    def test_json_and_protobuf_carry_the_same_request(self) -> None:
        """Both encodings parse to equal messages."""
        lines = [line(trace_id=TRACE, span_id=SPAN, a=[1.5, {"b": False}]) for _ in range(3)]
        assert parse(encode(lines, "protobuf"), "protobuf") == parse(encode(lines, "json"), "json")


def golden_request(lines: list[bytes]) -> ExportLogsServiceRequest:
    """The request the official classes build for `golden_lines`."""
    first, second = (json.loads(x) for x in lines)
    scope = InstrumentationScope(name="flask-signal-bridge", version=bridge.__version__)
    shop = Resource(
        attributes=[kv("service.name", "shop"), kv("host.name", "web-1"), kv("process.pid", 4242)]
    )
    billing = Resource(
        attributes=[
            kv("service.name", "billing"),
            kv("host.name", "web-1"),
            kv("process.pid", 4243),
        ]
    )
    login = LogRecord(
        time_unix_nano=STAMP_NS,
        observed_time_unix_nano=STAMP_NS,
        severity_number=9,
        severity_text="INFO",
        body=any_value("user.login"),
        attributes=[
            kv("signal", "user-login"),
            kv("event_id", first["event_id"]),
            kv("user_id", 7),
        ],
        trace_id=bytes.fromhex(TRACE),
        span_id=bytes.fromhex(SPAN),
        event_name="user.login",
    )
    failed = LogRecord(
        time_unix_nano=STAMP_NS,
        observed_time_unix_nano=STAMP_NS,
        severity_number=17,
        severity_text="ERROR",
        body=any_value("card declined"),
        attributes=[
            kv("signal", "user-login"),
            kv("event_id", second["event_id"]),
            kv("cart", {"items": [1, "two"], "total": 9.5}),
        ],
        event_name="payment.failed",
    )
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(resource=shop, scope_logs=[ScopeLogs(scope=scope, log_records=[login])]),
            ResourceLogs(
                resource=billing, scope_logs=[ScopeLogs(scope=scope, log_records=[failed])]
            ),
        ]
    )


def golden_lines() -> list[bytes]:
    return [
        line(trace_id=TRACE, span_id=SPAN, user_id=7),
        line(
            level="error",
            event="payment.failed",
            message="card declined",
            cart={"items": [1, "two"], "total": 9.5},
            **{"service.name": "billing", "process.pid": 4243},
        ),
    ]


class TestWire:
    @pytest.mark.parametrize("use_gzip", [True, False], ids=["gzip", "plain"])
    def test_protobuf_request_is_byte_identical_to_the_official_serializer(
        self, mock: responses.RequestsMock, make_sink: MakeSink, use_gzip: bool
    ) -> None:
        """POST /v1/logs, application/x-protobuf, gzip when on, the exact bytes protobuf's
        own SerializeToString writes for the same request."""
        mock.add(responses.POST, ENDPOINT, status=200, content_type="application/x-protobuf")
        sink = make_sink(URL, format="otlp", gzip=use_gzip, headers={"X-Tenant": "t1"})
        lines = golden_lines()
        for raw in lines:
            assert sink.submit(raw)
        assert sink.flush(10.0)
        assert 1 == len(mock.calls)
        request = mock.calls[0].request
        assert ("POST", ENDPOINT) == (request.method, request.url)
        assert "application/x-protobuf" == request.headers["Content-Type"]
        assert ("gzip" if use_gzip else None) == request.headers.get("Content-Encoding")
        assert "t1" == request.headers["X-Tenant"]
        assert golden_request(lines).SerializeToString() == sent(mock.calls[0])

    def test_json_request_is_the_official_json_mapping(
        self, mock: responses.RequestsMock, make_sink: MakeSink
    ) -> None:
        """application/json; the body is the same request in OTLP/JSON, exactly."""
        mock.add(responses.POST, ENDPOINT, status=200, content_type="application/json")
        sink = make_sink(URL, format="otlp", format_options={"protocol": "json"})
        lines = golden_lines()
        for raw in lines:
            assert sink.submit(raw)
        assert sink.flush(10.0)
        assert "application/json" == mock.calls[0].request.headers["Content-Type"]
        expected = json_format.MessageToDict(golden_request(lines))
        for resource_logs in expected["resourceLogs"]:  # OTLP: hex ids, integer enums
            for record in resource_logs["scopeLogs"][0]["logRecords"]:
                record["severityNumber"] = {"SEVERITY_NUMBER_INFO": 9}.get(
                    record["severityNumber"], 17
                )
                for key in ("traceId", "spanId"):
                    if key in record:
                        record[key] = base64.b64decode(record[key]).hex()
        assert expected == json.loads(sent(mock.calls[0]))

    def test_a_url_with_a_path_is_used_as_it_is(
        self, mock: responses.RequestsMock, make_sink: MakeSink
    ) -> None:
        """A gateway's own path (Grafana Cloud's /otlp/v1/logs) is not rewritten."""
        mock.add(responses.POST, "http://otel.test/otlp/v1/logs", status=200)
        sink = make_sink("http://otel.test/otlp/v1/logs", format="otlp")
        assert sink.submit(line())
        assert sink.flush(10.0)
        assert "http://otel.test/otlp/v1/logs" == mock.calls[0].request.url


def partial_success_reply(protocol: str, rejected: int, message: str) -> tuple[bytes, str]:
    """An ExportLogsServiceResponse with partial_success, as the official classes write it."""
    reply = ExportLogsServiceResponse(
        partial_success=ExportLogsPartialSuccess(
            rejected_log_records=rejected, error_message=message
        )
    )
    if protocol == "json":
        return json_format.MessageToJson(reply).encode(), "application/json"
    return reply.SerializeToString(), "application/x-protobuf"


# google.rpc.Status{code: 3 INVALID_ARGUMENT, message}: the body OTLP/HTTP sends with a 400
STATUS_BODY = b"\x08\x03\x12\x1dlog record body is not UTF-8"


class TestReplies:
    @pytest.fixture
    def sender(self) -> Iterator[HttpTransport]:
        settings = fast_settings(URL, format="otlp")
        sender = HttpTransport(settings, get_format("otlp"))
        yield sender
        sender.close()

    @PROTOCOLS
    def test_partial_success_counts_rejected_records_and_is_not_retried(
        self, mock: responses.RequestsMock, make_sink: MakeSink, protocol: str
    ) -> None:
        """A 200 with partial_success: one request, rejected records counted as refused by
        the collector (with its message), the rest delivered."""
        body, content_type = partial_success_reply(protocol, 2, "2 log records had no body")
        mock.add(responses.POST, ENDPOINT, status=200, body=body, content_type=content_type)
        sink = make_sink(URL, format="otlp", format_options={"protocol": protocol})
        for _ in range(5):
            assert sink.submit(line())
        assert not sink.flush(10.0)  # settled, but not every line acknowledged: some were lost
        stats = sink.stats()
        assert 1 == len(mock.calls)
        assert (3, 0, {"rejected_by_collector": 2}) == (
            stats["delivered"],
            stats["retried"],
            stats["dropped_by_reason"],
        )
        assert "2 log records had no body" in stats["last_error"]

    @PROTOCOLS
    def test_a_warning_without_rejected_records_delivers_everything(
        self, sender: HttpTransport, mock: responses.RequestsMock, protocol: str
    ) -> None:
        """rejected_log_records 0 with a message (a server's warning): all delivered."""
        body, content_type = partial_success_reply(protocol, 0, "deprecated attribute")
        mock.add(responses.POST, ENDPOINT, status=200, body=body, content_type=content_type)
        outcome = sender.send([line()])
        assert Delivered(rejected=0, detail="deprecated attribute") == outcome

    @pytest.mark.parametrize(
        "body",
        [
            b"",
            b"OK",
            ExportLogsServiceResponse().SerializeToString(),
            b"{}",
            b'{"partialSuccess": {}}',
            b"\x0a\x05\x08",  # truncated
            b'{"partialSuccess": {"rejectedLogRecords": [1]}}',
        ],
    )
    def test_a_reply_without_a_readable_partial_success_is_full_success(
        self, sender: HttpTransport, mock: responses.RequestsMock, body: bytes
    ) -> None:
        """Empty, a proxy's text, an empty response or a garbled one: the 200 stands."""
        mock.add(responses.POST, ENDPOINT, status=200, body=body)
        assert DELIVERED == sender.send([line()])

    def test_a_negative_rejected_count_counts_nothing(self) -> None:
        """A hostile int64 never turns into extra deliveries."""
        body, _ = partial_success_reply("protobuf", -5, "odd")
        assert Delivered(rejected=0, detail="odd") == get_format("otlp").interpret(200, body)

    @pytest.mark.parametrize("status", [429, 502, 503, 504])
    def test_only_the_specified_statuses_are_retried_with_retry_after(
        self, sender: HttpTransport, mock: responses.RequestsMock, status: int
    ) -> None:
        """429/502/503/504 are retried, honouring Retry-After."""
        mock.add(responses.POST, ENDPOINT, status=status, headers={"Retry-After": "7"})
        outcome = sender.send([line()])
        assert isinstance(outcome, RetryLater)
        assert (status, 7.0) == (outcome.status, outcome.retry_after)

    @pytest.mark.parametrize(
        ("status", "reason"),
        [
            (400, "rejected_4xx"),
            (401, "rejected_4xx"),
            (403, "rejected_4xx"),
            (404, "rejected_4xx"),
            (408, "rejected_4xx"),
            (500, "rejected"),
            (501, "rejected"),
            (505, "rejected"),
        ],
    )
    def test_every_other_status_is_refused_for_good(
        self, sender: HttpTransport, mock: responses.RequestsMock, status: int, reason: str
    ) -> None:
        """ "All other 4xx or 5xx response status codes MUST NOT be retried."""
        mock.add(responses.POST, ENDPOINT, status=status, body=STATUS_BODY)
        outcome = sender.send([line()])
        assert isinstance(outcome, Rejected)
        assert (status, reason) == (outcome.status, outcome.drop_reason)

    def test_413_splits_the_batch(
        self, sender: HttpTransport, mock: responses.RequestsMock
    ) -> None:
        """Content Too Large: the specification's answer to an oversized request."""
        mock.add(responses.POST, ENDPOINT, status=413)
        assert isinstance(sender.send([line(), line()]), Split)

    def test_retried_then_refused_batches_by_event_id(
        self, mock: responses.RequestsMock, make_sink: MakeSink, tmp_path: Path
    ) -> None:
        """A 503 is retried and delivered; a 400 dead-letters its events with the
        collector's Status body; counted by reason."""
        dead = tmp_path / "dead.jsonl"
        mock.add(responses.POST, ENDPOINT, status=503, headers={"Retry-After": "0"})
        mock.add(responses.POST, ENDPOINT, status=200)
        mock.add(responses.POST, ENDPOINT, status=400, body=STATUS_BODY)
        sink = make_sink(URL, format="otlp", dead_letter_path=dead, batch_max_events=2)
        first, refused = [line(), line()], [line(), line()]
        for raw in first:
            assert sink.submit(raw)
        assert sink.flush(10.0)
        for raw in refused:
            assert sink.submit(raw)
        assert sink.flush(10.0)
        bodies = [records(parse(sent(c), "protobuf")) for c in mock.calls]
        assert [[event_id(x) for x in first]] * 2 + [[event_id(x) for x in refused]] == [
            list(b) for b in bodies
        ]
        letters = [json.loads(x) for x in dead.read_text().splitlines()]
        assert [event_id(x) for x in refused] == [
            json.loads(x["line"])["event_id"] for x in letters
        ]
        assert {(400, "rejected_4xx")} == {(x["status"], x["reason"]) for x in letters}
        assert "log record body is not UTF-8" in letters[0]["response"]
        stats = sink.stats()
        assert (2, 2, {"rejected_4xx": 2}, 2) == (  # retried: events
            stats["delivered"],
            stats["retried"],
            stats["dropped_by_reason"],
            stats["dead_lettered"],
        )


class TestLimits:
    def test_defaults_are_the_collectors_request_limit(self) -> None:
        """20 MiB uncompressed (the Collector's max_request_body_size), no count limit."""
        limits = get_format("otlp").limits
        assert (None, 20 * 1024 * 1024) == (limits.max_events, limits.max_body_bytes)
        assert DEFAULT_MAX_BODY_BYTES == limits.max_body_bytes

    def test_batches_near_and_over_the_limit_are_split_to_fit(
        self, mock: responses.RequestsMock, make_sink: MakeSink
    ) -> None:
        """Every request stays within max_body_bytes; every event is delivered once."""
        mock.add(responses.POST, ENDPOINT, status=200)
        sink = make_sink(URL, format="otlp", format_options={"max_body_bytes": 4096})
        lines = [line(padding="p" * 900) for _ in range(20)]
        for raw in lines:
            assert sink.submit(raw)
        assert sink.flush(10.0)
        bodies = [sent(c) for c in mock.calls]
        assert all(len(b) <= 4096 for b in bodies)
        assert len(bodies) >= 5
        delivered = [i for b in bodies for i in records(parse(b, "protobuf"))]
        assert sorted(event_id(x) for x in lines) == sorted(delivered)
        assert 20 == sink.stats()["delivered"]

    def test_an_event_over_the_limit_alone_is_dead_lettered_not_looped(
        self, mock: responses.RequestsMock, make_sink: MakeSink, tmp_path: Path
    ) -> None:
        """It is never sent; its neighbours are delivered."""
        mock.add(responses.POST, ENDPOINT, status=200)
        dead = tmp_path / "dead.jsonl"
        sink = make_sink(
            URL, format="otlp", format_options={"max_body_bytes": 4096}, dead_letter_path=dead
        )
        small, huge = [line(), line()], line(padding="p" * 5000)
        for raw in (small[0], huge, small[1]):
            assert sink.submit(raw)
        assert sink.flush(10.0)
        delivered = [i for c in mock.calls for i in records(parse(sent(c), "protobuf"))]
        assert sorted(event_id(x) for x in small) == sorted(delivered)
        letters = [json.loads(x) for x in dead.read_text().splitlines()]
        assert [(event_id(huge), "too_large")] == [
            (json.loads(x["line"])["event_id"], x["reason"]) for x in letters
        ]


def otlp_sink(**options: Any) -> dict[str, Any]:
    sink = {"type": "http", "url": "http://127.0.0.1:4318", "format": "otlp"}
    return {"BRIDGE_SINKS": [{**sink, "format_options": options}]}


class TestOptions:
    def test_options_from_the_configuration(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """protocol, resource_attributes (with ${ENV}) and max_body_bytes reach the format."""
        monkeypatch.setenv("DEPLOY_ENV", "prod")
        raw = otlp_sink(
            protocol="json",
            resource_attributes={"deployment.environment": "${DEPLOY_ENV}"},
            max_body_bytes=1_000_000,
        )
        options = load_settings(raw, {}).sinks[0].format_options
        assert OtlpOptions("json", {"deployment.environment": "prod"}, 1_000_000) == options
        assert "application/json" == get_format("otlp", options).content_type

    def test_defaults(self) -> None:
        """protobuf, no extra resource attributes, 20 MiB."""
        options = load_settings(otlp_sink(), {}).sinks[0].format_options
        assert OtlpOptions("protobuf", {}, DEFAULT_MAX_BODY_BYTES) == options
        assert "application/x-protobuf" == get_format("otlp", options).content_type

    @pytest.mark.parametrize(
        ("options", "key"),
        [
            ({"protcol": "json"}, "protcol"),
            ({"protocol": "grpc"}, "protocol"),
            ({"protocol": 1}, "protocol"),
            ({"max_body_bytes": 0}, "max_body_bytes"),
            ({"resource_attributes": ["a"]}, "resource_attributes"),
        ],
    )
    def test_mistakes_name_the_option(self, options: dict[str, Any], key: str) -> None:
        """An unknown key or a bad value: ConfigError under sinks[0].format_options.<key>."""
        with pytest.raises(ConfigError) as caught:
            load_settings(otlp_sink(**options), {})
        assert f"sinks[0].format_options.{key}" == caught.value.key


def decode_otlp(body: bytes, content_type: str) -> list[dict[str, Any]]:
    """The collector's view of an OTLP body: one dict per LogRecord, read by the official
    classes (attributes, plus `_time`, `_severity` and `_body`)."""
    request = parse(body, "json" if content_type.startswith("application/json") else "protobuf")
    return [
        {
            **{k: v[1] if isinstance(v, tuple) else v for k, v in attributes(r.attributes).items()},
            "_time": r.time_unix_nano,
            "_severity": r.severity_number,
            "_body": r.body.string_value,
            "_service": attributes(rl.resource.attributes)["service.name"][1],
        }
        for rl in request.resource_logs
        for sl in rl.scope_logs
        for r in sl.log_records
    ]


class TestEndToEnd:
    @PROTOCOLS
    def test_a_real_collector_gets_every_event_after_failing_once(
        self,
        collector: Collector,
        make_sink: MakeSink,
        monkeypatch: pytest.MonkeyPatch,
        protocol: str,
    ) -> None:
        """Over a socket, gzipped: a 503 then 200s; every event arrives once, as sent."""
        monkeypatch.setattr(tests.collector, "split_events", decode_otlp)
        collector.plan(Reply(503, headers={"Retry-After": "0"}))
        base = collector.url.removesuffix("/ingest")
        sink = make_sink(base, format="otlp", format_options={"protocol": protocol})
        lines = [line(level="error", n=n) for n in range(30)]
        for raw in lines:
            assert sink.submit(raw)
        assert sink.flush(10.0)
        assert collector.wait_for(lambda c: len(c.event_ids()) == 30)
        assert sorted(event_id(x) for x in lines) == sorted(collector.event_ids())
        requests = collector.requests()
        assert {"/v1/logs"} == {r.path for r in requests}
        assert 503 == requests[0].reply.status
        assert {"gzip"} == {r.headers["content-encoding"] for r in requests}
        assert {(STAMP_NS, 17, "user.login", "shop")} == {
            (e["_time"], e["_severity"], e["_body"], e["_service"]) for e in collector.events()
        }
        assert list(range(30)) == sorted(e["n"] for e in collector.events())


class _Received:
    """oteltest's RequestHandler side: keeps every ExportLogsServiceRequest it is handed."""

    def __init__(self) -> None:
        self.requests: list[tuple[ExportLogsServiceRequest, dict[str, str]]] = []
        self.lock = threading.Lock()

    def handle_logs(self, request: ExportLogsServiceRequest, headers: dict[str, str]) -> None:
        with self.lock:
            self.requests.append((request, headers))

    def handle_metrics(self, request: Any, headers: Any) -> None:
        raise AssertionError("only logs are sent")

    def handle_trace(self, request: Any, headers: Any) -> None:
        raise AssertionError("only logs are sent")


@pytest.fixture
def oteltest_receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, _Received]]:
    """oteltest's OTLP/HTTP sink (the receiver oteltest runs for its scripts), on 127.0.0.1 and
    an ephemeral port (it binds every interface on 4318 otherwise)."""
    sink_module = pytest.importorskip("oteltest.sink")
    import logging

    bound = threading.Event()
    port: list[int] = []

    class LocalServer(HTTPServer):
        def __init__(self, address: Any, handler: Any) -> None:
            super().__init__(("127.0.0.1", 0), handler)
            port.append(self.server_address[1])
            bound.set()

    monkeypatch.setattr(sink_module, "HTTPServer", LocalServer)
    received = _Received()
    receiver = sink_module.HttpSink(received, logging.getLogger("oteltest"), port=0)
    receiver.start()
    try:
        assert bound.wait(10.0), "oteltest's receiver did not start"
        yield f"http://127.0.0.1:{port[0]}", received
    finally:
        receiver.stop()


class TestOteltestReceiver:
    @PROTOCOLS
    def test_oteltest_receives_every_record(
        self, oteltest_receiver: tuple[str, _Received], make_sink: MakeSink, protocol: str
    ) -> None:
        """A real OTLP/HTTP receiver from PyPI parses our requests (it reads neither gzip nor
        OTLP's hex ids in JSON: sent plain; the ids are checked on protobuf only)."""
        url, received = oteltest_receiver
        sink = make_sink(url, format="otlp", gzip=False, format_options={"protocol": protocol})
        lines = [line(trace_id=TRACE, span_id=SPAN, n=n) for n in range(12)]
        for raw in lines:
            assert sink.submit(raw)
        assert sink.flush(10.0)
        assert 12 == sink.stats()["delivered"]
        with received.lock:
            found: dict[str, Any] = {}
            for request, headers in received.requests:
                assert (
                    "application/" + {"json": "json"}.get(protocol, "x-protobuf")
                    == headers["Content-Type"]
                )
                found.update(records(request))
        assert sorted(event_id(x) for x in lines) == sorted(found)
        for resource, record in found.values():
            assert ("string_value", "shop") == resource["service.name"]
            assert (STAMP_NS, 9, "user.login") == (
                record.time_unix_nano,
                record.severity_number,
                record.event_name,
            )
            if protocol == "protobuf":
                assert bytes.fromhex(TRACE) == record.trace_id


class TestProtowire:
    @pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**63 - 1, -1, -(2**63)])
    def test_varints_read_back_through_the_official_parser(self, value: int) -> None:
        """Every varint width, negatives as ten-byte two's complement (int64)."""
        encoded = pw.key(3, pw.VARINT) + pw.signed(value)
        parsed = AnyValue()
        parsed.ParseFromString(encoded)
        assert value == parsed.int_value

    @pytest.mark.parametrize(
        "data",
        [b"\x0b", b"\x00\x01", b"\x08" + b"\xff" * 11, b"\x12\x05ab", b"\x09\x01\x02", b"\x08"],
        ids=["group", "field-0", "overlong", "short-len", "short-fixed64", "no-value"],
    )
    def test_malformed_messages_raise_wire_error(self, data: bytes) -> None:
        """Groups, field 0, overlong varints and fields running past the end are refused."""
        with pytest.raises(pw.WireError):
            list(pw.fields(data))

    def test_fields_reads_each_wire_type(self) -> None:
        """VARINT, FIXED64, LEN and FIXED32 values, in order."""
        data = b"\x08\x96\x01" + b"\x11" + bytes(range(8)) + b"\x1a\x02hi" + b"\x25\x01\x00\x00\x00"
        assert [
            (1, pw.VARINT, 150),
            (2, pw.FIXED64, int.from_bytes(bytes(range(8)), "little")),
            (3, pw.LEN, b"hi"),
            (4, pw.FIXED32, 1),
        ] == list(pw.fields(data))

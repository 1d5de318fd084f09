"""The `loki` format on the wire: exact requests, Loki's own reading of them, its replies.

Oracle: no Python package carries Loki's push protocol (the Loki packages on PyPI are logging
handlers, not Loki's decoder), so `loki_view` below transcribes the rules Loki applies to a JSON
push, read from grafana/loki (commit 65e30f8): the decoding of `/loki/api/v1/push`
(pkg/loghttp/push/push.go `parsePushRequestBody` -> pkg/util/unmarshal/unmarshal.go ->
pkg/loghttp/query.go `LogProtoStream.UnmarshalJSON` and `unmarshalHTTPToLogProtoEntry`,
pkg/loghttp/labels.go `LabelSet`) and the distributor's checks with their default limits
(pkg/distributor/validator.go `ValidateLabels`/`ValidateEntry`, pkg/validation/limits.go).
Replies are Loki's: 204 empty, errors as `http.Error` text (pkg/loghttp/push/push.go
`HTTPError`) with the messages of pkg/validation/validate.go.
"""

from __future__ import annotations

import gzip
import json
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import responses

import tests.collector
from bridge import SignalBridge
from bridge.config import load_settings
from bridge.errors import ConfigError
from bridge.formats import get_format
from bridge.formats.loki import MAX_BODY_BYTES, MAX_LINE_BYTES, LokiOptions
from bridge.sinks.http import HttpSink
from tests.collector import Collector, Reply
from tests.conftest import build_app, read_events
from tests.delivery.helpers import fast_settings

BASE = "http://loki.test:3100"
PUSH = BASE + "/loki/api/v1/push"
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_INT = re.compile(r"-?[0-9]+")


class Refused(AssertionError):
    """What Loki would answer 400 to."""


@dataclass(frozen=True)
class LokiEntry:
    labels: dict[str, str]
    ns: int
    line: str
    metadata: dict[str, str]


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise Refused(f"duplicate keys {keys}")
    return dict(pairs)


def loki_view(body: bytes) -> list[LokiEntry]:
    """The entries Loki stores from a JSON push body, per the sources cited above; Refused
    where Loki answers 400."""
    request = json.loads(body, object_pairs_hook=_pairs)
    if not isinstance(request, dict) or not isinstance(request.get("streams"), list):
        raise Refused("no streams")
    entries = []
    for stream in request["streams"]:
        labels = stream.get("stream")
        if not isinstance(labels, dict) or not labels:
            raise Refused("error at least one label pair is required per stream")
        for name, value in labels.items():
            if not _LABEL.fullmatch(name) or name.startswith("__") or len(name) > 1024:
                raise Refused(f"invalid label name {name!r}")
            if not isinstance(value, str) or not value or len(value.encode()) > 2048:
                raise Refused(f"invalid label value {value!r}")
        if len(labels) - ("service_name" in labels) > 15:
            raise Refused("too many label names")
        for value in stream.get("values") or []:
            if not isinstance(value, list) or len(value) not in (2, 3):
                raise Refused("array must have at least 2 and up to 3 values")
            ts, line = value[0], value[1]
            if not isinstance(ts, str) or not _INT.fullmatch(ts) or abs(int(ts)) >= 1 << 63:
                raise Refused(f"timestamp {ts!r} is not a string of an int64")
            if not isinstance(line, str):
                raise Refused("line is not a string")
            if len(line.encode()) > 256_000:
                raise Refused("max entry size '256000' bytes exceeded")
            metadata = value[2] if len(value) == 3 else {}
            if not isinstance(metadata, dict) or not all(
                isinstance(v, str) for v in metadata.values()
            ):
                raise Refused("structured metadata must be a flat object of strings")
            size = sum(len(k) + len(v.encode()) for k, v in metadata.items() if k != "level")
            if size > 64_000 or len(metadata) > 128:
                raise Refused("structured metadata too large")
            entries.append(LokiEntry(labels, int(ts), line, metadata))
    return entries


def ns_of(timestamp: str) -> int:
    """The event's RFC 3339 time in nanoseconds, computed independently of the bridge."""
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def line(event_id: str, ts: str = "2026-11-25T08:30:00.123456Z", **fields: Any) -> bytes:
    """A bridge event line: envelope first, as the emitter writes it."""
    event = {"timestamp": ts, "level": "info", "event": "user.login", "event_id": event_id}
    event.update({"service.name": "shop", **fields})
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def ids_in(body: bytes) -> list[str]:
    return [json.loads(e.line)["event_id"] for e in loki_view(body)]


def sent(call: Any) -> bytes:
    body = call.request.body
    assert isinstance(body, bytes)
    return gzip.decompress(body) if call.request.headers.get("Content-Encoding") == "gzip" else body


def dead_letters(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def encode(lines: list[bytes], **options: Any) -> bytes:
    return get_format("loki", LokiOptions(**options)).encode(lines).body


@pytest.fixture
def loki_sink() -> Iterator[Any]:
    made: list[HttpSink] = []

    def make(url: str = BASE, **overrides: Any) -> HttpSink:
        sink = HttpSink(fast_settings(url, format="loki", **overrides))
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close(0.5)


def deliver(sink: HttpSink, lines: list[bytes]) -> None:
    for one in lines:
        assert sink.submit(one)
    assert sink.flush(10.0)


class TestGoldenRequest:
    def test_the_exact_request_for_three_events(
        self, mock: responses.RequestsMock, loki_sink: Any
    ) -> None:
        """POST /loki/api/v1/push, JSON gzipped, tenant header; streams by label set, values in
        time order, ns timestamp strings, ids in structured metadata, the line as written."""
        mock.add(responses.POST, PUSH, status=204)
        later = line("e1", "2026-11-25T08:30:00.000002Z", request_id="r1", **{"user.id": 7})
        earlier = line("e2", "2026-11-25T08:30:00.000001Z")
        error = line("e3", level="error", trace_id="t1", **{"http.route": "/login"})
        sink = loki_sink(format_options={"tenant": "team-a"}, headers={"Authorization": "Basic x"})
        deliver(sink, [later, earlier, error])
        assert 1 == len(mock.calls)
        request = mock.calls[0].request
        assert ("POST", PUSH) == (request.method, request.url)
        assert "application/json" == request.headers["Content-Type"]
        assert "gzip" == request.headers["Content-Encoding"]
        assert "team-a" == request.headers["X-Scope-OrgID"]
        assert "Basic x" == request.headers["Authorization"]
        info = {"service_name": "shop", "level": "info", "event": "user.login"}
        expected = {
            "streams": [
                {
                    "stream": info,
                    "values": [
                        ["1795595400000001000", earlier[:-1].decode()],
                        [
                            "1795595400000002000",
                            later[:-1].decode(),
                            {"request_id": "r1", "user_id": "7"},
                        ],
                    ],
                },
                {
                    "stream": {**info, "level": "error"},
                    "values": [["1795595400123456000", error[:-1].decode(), {"trace_id": "t1"}]],
                },
            ]
        }
        assert json.dumps(expected, separators=(",", ":")).encode() == sent(mock.calls[0])

    def test_plain_body_without_tenant_and_a_url_path_used_as_is(
        self, mock: responses.RequestsMock, loki_sink: Any
    ) -> None:
        """gzip off: no Content-Encoding; no tenant: no X-Scope-OrgID; a URL with a path
        (a gateway) is used as it is."""
        url = "http://gateway.test/tenant-a/loki/push"
        mock.add(responses.POST, url, status=204)
        deliver(loki_sink(url, gzip=False), [line("e1")])
        request = mock.calls[0].request
        assert "Content-Encoding" not in request.headers
        assert "X-Scope-OrgID" not in request.headers
        assert encode([line("e1")]) == request.body


class TestLokiReadsIt:
    def test_every_event_decodes_as_loki_decodes_it(self) -> None:
        """Loki's decoder accepts every body; each stored line is the event, its timestamp the
        event's own capture time, even for odd text and a line that is not JSON."""
        lines = [
            line("a", msg='quote " backslash \\ newline \n tab \t nul \u0000 é 𝄞'),
            line("b", "2026-02-28T23:59:59.999999Z", nested={"x": [1, 2, {"y": None}]}),
            line("c", "2026-11-25T09:30:00.5+01:00"),
            b"not json at all\n",
        ]
        entries = loki_view(encode(lines))
        events = {json.loads(e.line)["event_id"]: e for e in entries[:3]}
        assert {e["event_id"]: e for e in map(json.loads, lines[:3])} == {
            key: json.loads(entry.line) for key, entry in events.items()
        }
        for raw in lines[:3]:
            event = json.loads(raw)
            assert ns_of(event["timestamp"]) == events[event["event_id"]].ns
        assert ("not json at all", {"service_name": "unknown_service"}) == (
            entries[3].line,
            entries[3].labels,
        )

    def test_a_time_no_int64_holds_does_not_get_the_batch_refused(self) -> None:
        """Before 1970 or past 2262 (no int64 of nanoseconds): sent with the send time, so
        Loki takes the batch instead of refusing it whole."""
        lines = [line("old", "1969-12-31T23:59:59.000000Z"), line("far", "9999-12-31T23:59:59Z")]
        now = ns_of(datetime.now(UTC).isoformat())
        entries = loki_view(encode([*lines, line("ok")]))
        by_id = {json.loads(e.line)["event_id"]: e.ns for e in entries}
        assert ns_of("2026-11-25T08:30:00.123456Z") == by_id.pop("ok")
        assert all(now - 10**9 * 60 <= ns <= now + 10**9 * 60 for ns in by_id.values())
        assert {"old", "far"} == set(by_id)

    def test_the_oracle_refuses_what_loki_refuses(self) -> None:
        """The oracle is strict where Loki is: a numeric timestamp, a nested metadata value,
        an invalid label name, an empty label set."""
        bad = [
            {"streams": [{"stream": {"a": "b"}, "values": [[1570818238000000000, "x"]]}]},
            {"streams": [{"stream": {"a": "b"}, "values": [["1", "x", {"k": {"n": "v"}}]]}]},
            {"streams": [{"stream": {"a-b": "c"}, "values": [["1", "x"]]}]},
            {"streams": [{"stream": {}, "values": [["1", "x"]]}]},
        ]
        for body in bad:
            with pytest.raises(Refused):
                loki_view(json.dumps(body).encode())

    def test_one_stream_per_label_set_in_time_order_ties_kept(self) -> None:
        """Interleaved services and levels: one stream each; within a stream values sorted by
        time, equal times in batch order."""
        t1, t2, t3 = (f"2026-11-25T08:30:0{n}.000000Z" for n in (1, 2, 3))
        lines = [
            line("s3", t3),
            line("o1", t1, **{"service.name": "other"}),
            line("s1", t1),
            line("w2", t2, level="warning"),
            line("s2a", t2),
            line("s2b", t2),
            line("o0", "2026-11-25T08:30:00.000000Z", **{"service.name": "other"}),
        ]
        body = json.loads(encode(lines))
        by_stream = {
            json.dumps(s["stream"], sort_keys=True): [
                json.loads(v[1])["event_id"] for v in s["values"]
            ]
            for s in body["streams"]
        }
        assert 3 == len(body["streams"])
        assert sorted([["s1", "s2a", "s2b", "s3"], ["o0", "o1"], ["w2"]]) == sorted(
            by_stream.values()
        )
        for stream in body["streams"]:
            times = [int(v[0]) for v in stream["values"]]
            assert sorted(times) == times

    def test_ids_go_to_structured_metadata_never_to_labels(self) -> None:
        """request_id, trace_id and user.id are metadata (names Loki can index: user_id), values
        as strings; labels are only service_name, level, event."""
        entry = loki_view(
            encode([line("a", request_id="r", trace_id="t", span_id="s", **{"user.id": 42})])
        )[0]
        assert {"service_name": "shop", "level": "info", "event": "user.login"} == entry.labels
        assert {"request_id": "r", "trace_id": "t", "user_id": "42"} == entry.metadata

    def test_structured_metadata_can_be_turned_off_for_older_lokis(self) -> None:
        """send_structured_metadata=false: every value is [ts, line], the ids stay in the line."""
        body = json.loads(encode([line("a", request_id="r")], send_structured_metadata=False))
        assert [2] == [len(v) for s in body["streams"] for v in s["values"]]
        assert "r" == json.loads(body["streams"][0]["values"][0][1])["request_id"]

    def test_configured_and_static_labels(self) -> None:
        """labels map label names to event keys; static_labels are on every stream."""
        options = {"labels": {"app": "service.name", "route": "http.route"}}
        lines = [line("a", **{"http.route": "/x"}), line("b")]
        entries = loki_view(encode(lines, static_labels={"env": "prod"}, **options))
        assert [
            {"env": "prod", "app": "shop", "route": "/x"},
            {"env": "prod", "app": "shop"},
        ] == [e.labels for e in entries]

    def test_values_that_cannot_be_labels_stay_in_the_line(self) -> None:
        """An over-long, empty or structured value is no label (Loki would refuse the stream);
        numbers and booleans become text; no label at all: service_name=unknown_service."""
        lines = [
            line("a", event="x" * 2049),
            line("b", level={"n": 1}),
            line("c", level=True, event=3),
            b'{"event_id":"d","timestamp":"2026-11-25T08:30:00.000000Z"}\n',
        ]
        assert [
            {"service_name": "shop", "level": "info"},
            {"service_name": "shop", "event": "user.login"},
            {"service_name": "shop", "level": "true", "event": "3"},
            {"service_name": "unknown_service"},
        ] == [e.labels for e in loki_view(encode(lines))]

    def test_equal_numbers_of_other_types_make_other_streams(self) -> None:
        """level 1, 1.0 and true are three label values, not one."""
        lines = [
            line("a", level=1),
            line("b", level=1.0),
            line("c", level=True),
            line("d", level=1),
        ]
        assert [["a", "d"], ["b"], ["c"]] == [
            [json.loads(v[1])["event_id"] for v in s["values"]]
            for s in json.loads(encode(lines))["streams"]
        ]

    def test_structured_metadata_stays_within_lokis_limit(self) -> None:
        """Metadata over Loki's 64,000 bytes a line (which would refuse the line) is left out
        from the entry that overflows on; the line still holds it."""
        entry = loki_view(encode([line("a", request_id="r", trace_id="t" * 64_000)]))[0]
        assert {"request_id": "r"} == entry.metadata
        assert "t" * 64_000 == json.loads(entry.line)["trace_id"]


class TestLimits:
    def test_batches_near_the_body_limit_stay_within_it(
        self, mock: responses.RequestsMock, loki_sink: Any
    ) -> None:
        """Escape-heavy 5 KB events in batches of 1000 and 4 MiB: every request body is within
        1 MiB, Loki decodes each, and every event arrives exactly once."""
        mock.add(responses.POST, PUSH, status=204)
        lines = [line(f"e{n:04d}", blob='"\\' * 2500) for n in range(600)]
        sink = loki_sink(batch_max_events=1000, batch_max_bytes=4 * 1024 * 1024)
        deliver(sink, lines)
        bodies = [sent(call) for call in mock.calls]
        assert all(len(body) <= MAX_BODY_BYTES for body in bodies)
        assert max(len(body) for body in bodies) > MAX_BODY_BYTES // 2  # near the limit
        assert sorted(f"e{n:04d}" for n in range(600)) == sorted(
            i for body in bodies for i in ids_in(body)
        )
        assert (600, 0) == (sink.stats()["delivered"], sink.stats()["dead_lettered"])

    def test_a_line_at_the_limit_is_sent_whole(self) -> None:
        """A line of exactly max_line_size (256,000 bytes) is not touched."""
        raw = line("a", blob="")
        raw = line("a", blob="x" * (MAX_LINE_BYTES - len(raw) + 1))
        assert MAX_LINE_BYTES == len(raw) - 1
        assert raw[:-1].decode() == loki_view(encode([raw]))[0].line

    def test_an_oversize_event_is_cut_marked_and_delivered(
        self, mock: responses.RequestsMock, loki_sink: Any, tmp_path: Path
    ) -> None:
        """A 300 KB event is cut to 256,000 bytes (valid JSON, `bridge.truncated`, the original
        size, its envelope and small fields kept) and delivered, never refused or looped."""
        mock.add(responses.POST, PUSH, status=204)
        raw = line("big", request_id="r", blob="y" * 300_000)
        sink = loki_sink(dead_letter_path=tmp_path / "dead.jsonl")
        deliver(sink, [raw])
        (entry,) = loki_view(sent(mock.calls[0]))
        event = json.loads(entry.line)
        assert len(entry.line.encode()) <= MAX_LINE_BYTES
        assert (True, len(raw) - 1) == (event["bridge.truncated"], event["bridge.original_bytes"])
        assert ("big", "r", "shop") == (
            event["event_id"],
            event["request_id"],
            event["service.name"],
        )
        assert {"request_id": "r"} == entry.metadata
        assert (1, 1, []) == (
            len(mock.calls),
            sink.stats()["delivered"],
            dead_letters(tmp_path / "dead.jsonl"),
        )

    def test_events_that_escape_to_twice_their_size_fit_one_request_alone(self) -> None:
        """A line of 256,000 bytes of quotes and backslashes (each escaped again in the body)
        still makes a body within the request limit; a huge event name is cut too."""
        raw = line("q", blob="")
        raw = line("q", blob='"' * ((MAX_LINE_BYTES - len(raw) + 1) // 2))
        body = encode([raw])
        assert len(body) <= MAX_BODY_BYTES
        named = loki_view(encode([line("n", event="e" * 400_000)]))[0]
        assert ("n", True) == (
            json.loads(named.line)["event_id"],
            json.loads(named.line)["bridge.truncated"],
        )


LOKI_400 = (
    'entry for stream \'{event="user.login", level="info", service_name="shop"}\' has '
    "timestamp too old: 2026-11-01T08:30:00Z, oldest acceptable timestamp is: "
    "2026-11-18T08:30:00Z\n"
)
LOKI_429 = (
    "ingestion rate limit exceeded for user team-a (limit: 4194304 bytes/sec) while attempting "
    "to ingest '2' lines totaling '512' bytes, reduce log volume or contact your Loki "
    "administrator to see if the limit can be increased\n"
)
LOKI_429_STREAMS = (
    'maximum active stream limit exceeded when trying to create stream {service_name="shop"}, '
    "reduce the number of active streams (reduce labels or reduce label values), or contact your "
    "Loki administrator to see if the limit can be increased, user: 'team-a'\n"
)
LOKI_260 = (
    "ingestion blocked for user 'team-a' until '2026-12-01T00:00:00Z' with status code '260'\n"
)


class TestReplies:
    def test_a_mixed_run_retries_429_and_5xx_and_dead_letters_400_by_event_id(
        self, mock: responses.RequestsMock, loki_sink: Any, tmp_path: Path
    ) -> None:
        """Batches of two: 429 (rate) then 204; 503 then 204; 400 (too old); 429 (streams) then
        204: the 400's events are dead-lettered with Loki's reason, every other event is
        delivered once retried with the same body, nothing else is dropped."""
        for status, body in [
            (429, LOKI_429), (204, ""), (503, "no healthy ingesters"), (204, ""),
            (400, LOKI_400), (429, LOKI_429_STREAMS), (204, ""),
        ]:  # fmt: skip
            mock.add(responses.POST, PUSH, status=status, body=body)
        dead = tmp_path / "dead.jsonl"
        sink = loki_sink(batch_max_events=2, dead_letter_path=dead)
        lines = [line(f"e{n}") for n in range(8)]
        deliver(sink, lines)
        calls = [(call.response.status_code, ids_in(sent(call))) for call in mock.calls]
        assert [429, 204, 503, 204, 400, 429, 204] == [status for status, _ in calls]
        assert [calls[0][1], calls[2][1], calls[5][1]] == [calls[1][1], calls[3][1], calls[6][1]]
        rejected = calls[4][1]
        assert [f"e{n}" for n in range(8)] == sorted(
            [*rejected, *calls[1][1], *calls[3][1], *calls[6][1]]
        )
        letters = dead_letters(dead)
        assert rejected == [json.loads(r["line"])["event_id"] for r in letters]
        assert {(400, LOKI_400, "rejected_4xx")} == {
            (r["status"], r["response"], r["reason"]) for r in letters
        }
        stats = sink.stats()
        assert (6, 2, 6) == (stats["delivered"], stats["dead_lettered"], stats["retried"])
        assert {"rejected_4xx": 2} == stats["dropped_by_reason"]

    @pytest.mark.parametrize(
        ("status", "body", "reason"),
        [
            (260, LOKI_260, "rejected"),
            (401, "no org id\n", "rejected_4xx"),
            (408, "request timeout", "rejected_4xx"),
        ],
        ids=["blocked-260", "401-no-org-id", "408-not-retried"],
    )
    def test_refusals_are_dead_lettered_not_retried(
        self,
        mock: responses.RequestsMock,
        loki_sink: Any,
        tmp_path: Path,
        status: int,
        body: str,
        reason: str,
    ) -> None:
        """Loki's blocked-ingestion 260 stored nothing, a 401 and (as Loki's clients do) a 408
        are not retried: each event is dead-lettered once, by event_id, with the reply."""
        mock.add(responses.POST, PUSH, status=status, body=body)
        dead = tmp_path / "dead.jsonl"
        deliver(loki_sink(dead_letter_path=dead), [line("a"), line("b")])
        assert 1 == len(mock.calls)
        assert [("a", status, body[:512], reason), ("b", status, body[:512], reason)] == [
            (json.loads(r["line"])["event_id"], r["status"], r["response"], r["reason"])
            for r in dead_letters(dead)
        ]

    def test_413_splits_the_batch(self, mock: responses.RequestsMock, loki_sink: Any) -> None:
        """Loki's 413 (request body too large) sends the batch again in halves."""
        mock.add(responses.POST, PUSH, status=413, body="request body too large")
        mock.add(responses.POST, PUSH, status=204)
        sink = loki_sink(batch_max_events=4)
        deliver(sink, [line(f"e{n}") for n in range(4)])
        assert [4, 2, 2] == [len(ids_in(sent(call))) for call in mock.calls]
        assert 4 == sink.stats()["delivered"]


README_SNIPPET = """
[[sinks]]
type = "http"
format = "loki"
url = "http://loki:3100"
[sinks.format_options]
tenant = "team-a"
static_labels = { env = "prod" }
labels = { service_name = "service.name", level = "level", event = "event" }
structured_metadata = { request_id = "request_id", trace_id = "trace_id", user_id = "user.id" }
send_structured_metadata = true
"""


def settings_for(options: dict[str, Any]) -> Any:
    sink = {"type": "http", "url": BASE, "format": "loki", "format_options": options}
    return load_settings({"BRIDGE_SINKS": [sink]}, {})


class TestOptions:
    def test_the_readme_snippet_loads(self) -> None:
        """The README's TOML works as written and gives these options."""
        sinks = tomllib.loads(README_SNIPPET)["sinks"]
        options = load_settings({"BRIDGE_SINKS": sinks}, {}).sinks[0].format_options
        assert LokiOptions(tenant="team-a", static_labels={"env": "prod"}) == options

    @pytest.mark.parametrize(
        ("options", "key"),
        [
            ({"tenantt": "a"}, "tenantt"),
            ({"labels": "service.name"}, "labels"),
            ({"labels": {"service-name": "service.name"}}, "labels.service-name"),
            ({"labels": {"__name__": "event"}}, "labels.__name__"),
            ({"labels": {"rid": "request_id"}}, "labels.rid"),
            ({"labels": {"user": "user.id"}}, "labels.user"),
            ({"structured_metadata": {"user.id": "user.id"}}, "structured_metadata.user.id"),
            ({"static_labels": {"level": "x"}}, "static_labels.level"),
            ({"static_labels": {f"l{n}": "x" for n in range(13)}}, "labels"),
            ({"tenant": "team a"}, "tenant"),
            ({"tenant": ".."}, "tenant"),
            ({"send_structured_metadata": "no"}, "send_structured_metadata"),
        ],
    )
    def test_mistakes_name_the_option(self, options: dict[str, Any], key: str) -> None:
        """Unknown keys, wrong types, bad label names, id keys as labels, too many labels and a
        bad tenant are ConfigErrors naming sinks[0].format_options.<key>."""
        with pytest.raises(ConfigError) as caught:
            settings_for(options)
        assert f"sinks[0].format_options.{key}" == caught.value.key


class TestEndToEnd:
    def test_a_flask_app_ships_to_a_loki_that_fails_once(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Real events from a Flask app reach a local receiver reading bodies as Loki does,
        after a 503: every event (as the file sink saw it) is stored under its labels, at its
        own time, with its request id as metadata."""
        view: list[LokiEntry] = []

        def as_loki(body: bytes, content_type: str) -> list[dict[str, Any]]:
            entries = loki_view(body)
            view.extend(entries)
            return [json.loads(e.line) for e in entries]

        monkeypatch.setattr(tests.collector, "split_events", as_loki)
        with Collector() as collector:
            collector.plan(Reply(503, body=b"no healthy ingesters"))
            collector.always(Reply(204))
            path = tmp_path / "events.jsonl"
            sinks = [
                {"type": "file", "path": str(path)},
                {"type": "http", "url": f"http://127.0.0.1:{collector.port}", "format": "loki",
                 "batch_timeout": 0.05, "retry_initial_backoff": 0.01, "retry_max_backoff": 0.05,
                 "format_options": {"tenant": "team-a"}},
            ]  # fmt: skip
            app = build_app("shop", BRIDGE_SIGNALS=["user-login"], BRIDGE_SINKS=sinks)
            bridge = SignalBridge(app)
            try:
                for _ in range(3):
                    assert 200 == app.test_client().post("/login").status_code
                assert bridge.flush(10.0)
            finally:
                bridge.close(2.0)
            requests = collector.requests()
        events = read_events(path)
        assert 3 <= len(events)
        assert 503 == requests[0].reply.status
        assert {"/loki/api/v1/push"} == {r.path for r in requests}
        assert {"team-a"} == {r.headers["x-scope-orgid"] for r in requests}
        stored = {json.loads(e.line)["event_id"]: e for e in view[len(requests[0].events) :]}
        assert sorted(e["event_id"] for e in events) == sorted(stored)
        for event in events:
            entry = stored[event["event_id"]]
            assert ns_of(event["timestamp"]) == entry.ns
            assert {"service_name": "shop", "level": event["level"], "event": event["event"]} == (
                entry.labels
            )
            assert {"request_id": event["request_id"]} == entry.metadata

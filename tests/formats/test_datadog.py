"""The datadog format: exact requests, the official client's models and requests as oracle,
Datadog's replies (413 split, 400/401/403 dead-lettered, 408/429/5xx retried), its limits,
its options, and delivery to a real collector that fails once."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import responses
from datadog_api_client import ApiClient, Configuration
from datadog_api_client.model_utils import validate_and_convert_types
from datadog_api_client.v2.api.logs_api import LogsApi
from datadog_api_client.v2.model.content_encoding import ContentEncoding
from datadog_api_client.v2.model.http_log import HTTPLog
from datadog_api_client.v2.model.http_log_errors import HTTPLogErrors
from datadog_api_client.v2.model.http_log_item import HTTPLogItem

from bridge.config import load_settings
from bridge.errors import ConfigError
from bridge.formats import get_format
from bridge.formats.datadog import MAX_ITEM_BYTES, DatadogOptions
from bridge.outcome import Rejected, RetryLater, Split
from bridge.sinks.http import HttpSink
from tests.collector import Collector, Reply
from tests.conftest import MakeSink
from tests.delivery.helpers import fast_settings

SITE_URL = "https://http-intake.logs.datadoghq.eu"  # a site's intake: the format adds the path
INTAKE = f"{SITE_URL}/api/v2/logs"
API_KEY = "0123456789abcdef0123456789abcdef"
ACCEPTED = {"status": 202, "json": {}}  # "always 202 empty JSON" (Datadog's own test cassette)


CONFIG = Configuration()


def errors_body(status: int, title: str, detail: str) -> bytes:
    """A Datadog error reply, checked against the official `HTTPLogErrors` model."""
    body = {"errors": [{"status": str(status), "title": title, "detail": detail}]}
    model = validate_and_convert_types(body, (HTTPLogErrors,), ["reply"], True, True, CONFIG)
    assert isinstance(model, HTTPLogErrors)
    return json.dumps(body).encode()


_ids = iter(range(1 << 62))


def event(**fields: Any) -> dict[str, Any]:
    """A bridge event as the emitter writes it, with a unique event_id."""
    return {
        "timestamp": "2026-11-25T08:30:00.123456Z",
        "level": "info",
        "event": "user-login",
        "signal": "user-login",
        "event_id": f"ev-{next(_ids):06d}",
        "service.name": "shop",
        "host.name": "web-1",
        "process.pid": 4242,
        "request_id": "req-1",
        **fields,
    }


def line(e: dict[str, Any]) -> bytes:
    return json.dumps(e, separators=(",", ":")).encode() + b"\n"


def items_of(body: bytes) -> list[dict[str, Any]]:
    parsed = json.loads(body)
    assert isinstance(parsed, list)
    return parsed


def sent(call: Any) -> bytes:
    body = call.request.body
    assert isinstance(body, bytes)
    return gzip.decompress(body) if call.request.headers.get("Content-Encoding") == "gzip" else body


def validate(body: bytes) -> list[HTTPLogItem]:
    """The official client's models accept the body as `HTTPLog` and each item as
    `HTTPLogItem` (raises ApiTypeError/ApiValueError otherwise)."""
    parsed = items_of(body)
    log = validate_and_convert_types(parsed, (HTTPLog,), ["body"], True, True, CONFIG)
    assert isinstance(log, HTTPLog)
    checked = [
        validate_and_convert_types(item, (HTTPLogItem,), ["item"], True, True, CONFIG)
        for item in parsed
    ]
    assert all(isinstance(item, HTTPLogItem) for item in checked)
    return checked


def encode(events: Sequence[dict[str, Any]], **options: Any) -> bytes:
    return get_format("datadog", DatadogOptions(**options)).encode([line(e) for e in events]).body


def dead_letters(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines()]


def datadog_sink(sinks: list[HttpSink], url: str = SITE_URL, **overrides: Any) -> HttpSink:
    overrides.setdefault("format_options", {"api_key": API_KEY})
    sink = HttpSink(fast_settings(url, format="datadog", **overrides))
    sinks.append(sink)
    return sink


def deliver(sink: HttpSink, events: Sequence[dict[str, Any]]) -> None:
    for e in events:
        assert sink.submit(line(e))
    assert sink.flush(20.0)


class TestGoldenRequest:
    def test_one_batch_is_one_exact_request(
        self, mock: responses.RequestsMock, sinks: list[HttpSink]
    ) -> None:
        """POST /api/v2/logs on the site's intake, DD-API-KEY, gzip, and the exact JSON array."""
        mock.add(responses.POST, INTAKE, **ACCEPTED)
        sink = datadog_sink(
            sinks,
            format_options={"api_key": API_KEY, "ddtags": "team:shop, tier:web"},
        )
        first = event(**{"deployment.environment": "prod", "user.id": "7"})
        second = event(level="error", event="log", message="payment failed", order=12)
        deliver(sink, [first, second])
        assert 1 == len(mock.calls)
        request = mock.calls[0].request
        assert ("POST", INTAKE) == (request.method, request.url)
        headers = request.headers
        assert (API_KEY, "application/json", "gzip", "application/json") == (
            headers["DD-API-KEY"],
            headers["Content-Type"],
            headers["Content-Encoding"],
            headers["Accept"],
        )
        expected = (
            b'[{"ddsource":"flask","ddtags":"team:shop,tier:web,env:prod","hostname":"web-1",'
            b'"service":"shop","message":"user-login","timestamp":1795595400123,"level":"info",'
            b'"event":"user-login","signal":"user-login","event_id":"%s","process.pid":4242,'
            b'"request_id":"req-1","deployment.environment":"prod","user.id":"7"},'
            b'{"ddsource":"flask","ddtags":"team:shop,tier:web","hostname":"web-1",'
            b'"service":"shop","message":"payment failed","timestamp":1795595400123,'
            b'"level":"error","event":"log","signal":"user-login","event_id":"%s",'
            b'"process.pid":4242,"request_id":"req-1","order":12}]'
        ) % (first["event_id"].encode(), second["event_id"].encode())
        assert expected == sent(mock.calls[0])
        assert 2 == sink.stats()["delivered"]

    def test_a_url_with_a_path_is_used_as_it_is(
        self, mock: responses.RequestsMock, sinks: list[HttpSink]
    ) -> None:
        """A relay's own path (an Observability Pipelines worker, a proxy) is not rewritten."""
        mock.add(responses.POST, "http://relay.test:8282/custom/logs?x=1", **ACCEPTED)
        sink = datadog_sink(sinks, "http://relay.test:8282/custom/logs?x=1", gzip=False)
        deliver(sink, [event()])
        assert "http://relay.test:8282/custom/logs?x=1" == mock.calls[0].request.url
        assert "Content-Encoding" not in mock.calls[0].request.headers

    def test_timestamp_is_the_events_own_time_in_milliseconds(self) -> None:
        """`timestamp` (Datadog's first date attribute) is the capture time, never the send
        time; a timestamp that cannot be read is left as it is."""
        stamps = [
            "2026-01-02T03:04:05.678999Z",
            "2026-01-02T03:04:05.001Z",
            "2026-01-02T05:04:05.678999+02:00",
            "2026-01-02T03:04:05.678999X",
            "yesterday",
        ]
        body = encode([event(timestamp=stamp) for stamp in stamps])
        assert [
            1767323045678,
            1767323045001,
            1767323045678,
            "2026-01-02T03:04:05.678999X",
            "yesterday",
        ] == [i["timestamp"] for i in items_of(body)]

    def test_message_is_the_events_text_or_its_name(self) -> None:
        """A log record's `message` is the message; else the event name; a non-text message
        and fields named like Datadog's reserved ones are kept under args.<name>."""
        body = encode(
            [
                event(message="disk full"),
                event(),
                event(message={"code": 3}, service="billing", ddsource="x"),
            ]
        )
        got = items_of(body)
        assert ["disk full", "user-login", "user-login"] == [i["message"] for i in got]
        assert {"code": 3} == got[2]["args.message"]
        assert ("billing", "x", "shop", "flask") == (
            got[2]["args.service"],
            got[2]["args.ddsource"],
            got[2]["service"],
            got[2]["ddsource"],
        )
        assert "args.message" not in got[0]

    def test_options_set_source_service_and_tags(self) -> None:
        """ddsource, a service overriding service.name, static tags, tags from event keys
        (a comma in a value becomes `_`); a field that is missing adds no tag."""
        body = encode(
            [event(tier="a,b", **{"service.version": "1.4"}), event()],
            ddsource="python",
            service="checkout",
            ddtags="team:pay",
            tag_keys={"tier": "tier", "version": "service.version"},
        )
        got = items_of(body)
        assert [("python", "checkout", "team:pay,tier:a_b,version:1.4")] == [
            (got[0]["ddsource"], got[0]["service"], got[0]["ddtags"])
        ]
        assert "team:pay" == got[1]["ddtags"]

    def test_a_line_that_is_not_an_object_still_goes_out(self) -> None:
        """A line that is not a JSON object becomes the message of an item of its own."""
        body = get_format("datadog").encode([b"not json at all\n", b"[1,2]\n"]).body
        assert [
            {"ddsource": "flask", "message": "not json at all"},
            {"ddsource": "flask", "message": "[1,2]"},
        ] == items_of(body)


class TestOfficialClient:
    def test_every_item_validates_with_the_official_models(self) -> None:
        """HTTPLog and HTTPLogItem (datadog-api-client) accept ordinary, odd and cut items."""
        events = [
            event(),
            event(message="m", nested={"a": [1, None, True]}, ratio=0.5),
            event(message=None, service=3, big="x" * (2 * MAX_ITEM_BYTES)),
            {"only": "fields"},
        ]
        checked = validate(encode(events, api_key=API_KEY, service="svc", ddtags="a:b"))
        assert ["user-login", "m", "user-login", ""] == [i.message for i in checked]
        assert validate(get_format("datadog").encode([b"plain text\n"]).body)

    def test_the_official_client_sends_what_we_send(
        self, sinks: list[HttpSink], collector: Collector
    ) -> None:
        """LogsApi.submit_log with our items: same path, auth header, content type, encoding,
        Accept, and the same items; only the User-Agent and JSON spacing differ."""
        collector.always(Reply(202, {"Content-Type": "application/json"}, b"{}"))
        origin = f"http://127.0.0.1:{collector.port}"
        sink = datadog_sink(sinks, origin)
        deliver(sink, [event(message="hi"), event(order=5)])
        ours = collector.requests()[0]
        configuration = Configuration(
            api_key={"apiKeyAuth": API_KEY},
            server_index=1,  # "{protocol}://{name}": the client's own switch for a full origin
            server_variables={"name": f"127.0.0.1:{collector.port}", "protocol": "http"},
        )
        body = validate_and_convert_types(
            items_of(ours.body), (HTTPLog,), ["body"], True, True, configuration
        )
        with ApiClient(configuration) as client:
            assert {} == LogsApi(client).submit_log(
                body=body, content_encoding=ContentEncoding.GZIP
            )
        theirs = collector.requests()[1]
        keys = ("dd-api-key", "content-type", "content-encoding", "accept")
        assert [theirs.headers[k] for k in keys] == [ours.headers[k] for k in keys]
        assert (theirs.path, json.loads(theirs.body)) == (ours.path, json.loads(ours.body))


class TestReplies:
    def test_413_splits_the_batch_and_delivers_both_halves(
        self, mock: responses.RequestsMock, sinks: list[HttpSink], tmp_path: Path
    ) -> None:
        """Payload Too Large: the same events go again in two requests, none dead-lettered."""
        mock.add(
            responses.POST,
            INTAKE,
            status=413,
            body=errors_body(413, "Payload Too Large", "Payload too large"),
        )
        mock.add(responses.POST, INTAKE, **ACCEPTED)
        dead = tmp_path / "dead.jsonl"
        sink = datadog_sink(sinks, dead_letter_path=dead)
        events = [event() for _ in range(6)]
        deliver(sink, events)
        ids = [e["event_id"] for e in events]
        batches = [[i["event_id"] for i in items_of(sent(c))] for c in mock.calls]
        assert [ids, ids[:3], ids[3:]] == batches
        assert (6, 0, []) == (
            sink.stats()["delivered"],
            sink.stats()["dropped"],
            dead_letters(dead),
        )

    def test_413_for_one_event_dead_letters_it_too_large(
        self, mock: responses.RequestsMock, sinks: list[HttpSink], tmp_path: Path
    ) -> None:
        """One event still refused as too large is dead-lettered, never sent again."""
        reply = errors_body(413, "Payload Too Large", "Payload too large")
        mock.add(responses.POST, INTAKE, status=413, body=reply)
        dead = tmp_path / "dead.jsonl"
        sink = datadog_sink(sinks, dead_letter_path=dead)
        one = event()
        deliver(sink, [one])
        records = dead_letters(dead)
        assert [(one["event_id"], 413, "too_large")] == [
            (json.loads(r["line"])["event_id"], r["status"], r["reason"]) for r in records
        ]
        assert 1 == len(mock.calls)

    @pytest.mark.parametrize(
        ("status", "title", "hint"),
        [
            (400, "Bad Request", "Datadog could not read the payload"),
            (401, "Unauthorized", "no API key reached Datadog: set format_options.api_key"),
            (403, "Forbidden", "Datadog refused the API key: check format_options.api_key"),
        ],
    )
    def test_refusals_are_dead_lettered_with_datadogs_reason(
        self,
        mock: responses.RequestsMock,
        sinks: list[HttpSink],
        tmp_path: Path,
        status: int,
        title: str,
        hint: str,
    ) -> None:
        """400/401/403: every event dead-lettered by event_id with Datadog's reply (the API
        key scrubbed where echoed), and the last error says what to check."""
        reply = errors_body(status, title, f"{title} for key {API_KEY}")
        mock.add(responses.POST, INTAKE, status=status, body=reply)
        dead = tmp_path / "dead.jsonl"
        sink = datadog_sink(sinks, dead_letter_path=dead)
        events = [event(), event()]
        deliver(sink, events)
        records = dead_letters(dead)
        assert [(e["event_id"], status, "rejected_4xx") for e in events] == [
            (json.loads(r["line"])["event_id"], r["status"], r["reason"]) for r in records
        ]
        assert reply.decode().replace(API_KEY, "[REDACTED]") == records[0]["response"]
        stats = sink.stats()
        assert (2, 1) == (stats["dead_lettered"], len(mock.calls))
        assert f"HTTP {status}, batch refused: {hint}" in stats["last_error"]
        assert API_KEY not in json.dumps(stats) + dead.read_text()

    @pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
    def test_timeouts_throttling_and_5xx_are_retried(
        self, mock: responses.RequestsMock, sinks: list[HttpSink], tmp_path: Path, status: int
    ) -> None:
        """Request Timeout, Too Many Requests and server errors: the same batch again, then
        delivered once, nothing dead-lettered."""
        mock.add(responses.POST, INTAKE, status=status, body=errors_body(status, "x", "later"))
        mock.add(responses.POST, INTAKE, **ACCEPTED)
        dead = tmp_path / "dead.jsonl"
        sink = datadog_sink(sinks, dead_letter_path=dead)
        events = [event(), event()]
        deliver(sink, events)
        ids = [e["event_id"] for e in events]
        assert [ids, ids] == [[i["event_id"] for i in items_of(sent(c))] for c in mock.calls]
        stats = sink.stats()
        assert (2, 2, 0) == (stats["delivered"], stats["retried"], stats["dead_lettered"])


class TestLimits:
    def test_batches_hold_at_most_1000_items(
        self, mock: responses.RequestsMock, sinks: list[HttpSink]
    ) -> None:
        """2500 events with a larger configured batch: requests of at most 1000 items."""
        mock.add(responses.POST, INTAKE, **ACCEPTED)
        sink = datadog_sink(
            sinks, batch_max_events=5000, batch_max_bytes=64 * 1024 * 1024, batch_timeout=0.5
        )
        events = [event() for _ in range(2500)]
        deliver(sink, events)
        counts = [len(items_of(sent(c))) for c in mock.calls]
        assert all(n <= 1000 for n in counts), counts
        ids = [i["event_id"] for c in mock.calls for i in items_of(sent(c))]
        assert [e["event_id"] for e in events] == ids

    def test_requests_stay_within_5_mb_uncompressed(
        self, mock: responses.RequestsMock, sinks: list[HttpSink]
    ) -> None:
        """Twelve events of ~900 KB (near the 1 MB item limit) go in bodies of at most 5 MB."""
        mock.add(responses.POST, INTAKE, **ACCEPTED)
        sink = datadog_sink(sinks, batch_max_bytes=64 * 1024 * 1024, batch_timeout=0.5)
        events = [event(message="m" * 900_000) for _ in range(12)]
        deliver(sink, events)
        sizes = [len(sent(c)) for c in mock.calls]
        assert all(size <= 5_000_000 for size in sizes), sizes
        got = [i for c in mock.calls for i in items_of(sent(c))]
        assert [e["event_id"] for e in events] == [i["event_id"] for i in got]
        assert not any("bridge.truncated" in i for i in got)
        assert 12 == sink.stats()["delivered"]

    def test_an_item_over_1_mb_is_cut_marked_and_keeps_its_small_fields(self) -> None:
        """A 3 MB field is cut so the item stays under 1 MB (Datadog would truncate it
        unmarked): `bridge.truncated`, the original size, every small field whole."""
        big = event(message="start " + "y" * 3_000_000, payload={"rows": ["z" * 100] * 5000})
        body = encode([big])
        assert len(body) <= MAX_ITEM_BYTES + 2
        (item,) = items_of(body)
        validate(body)
        assert item["bridge.truncated"] is True
        assert item["bridge.original_bytes"] > 3_000_000
        assert item["message"].startswith("start yyy") and item["message"].endswith("[truncated]")
        for key in ("event_id", "request_id", "level", "hostname", "service", "process.pid"):
            assert key in item
        assert big["event_id"] == item["event_id"]

    @pytest.mark.parametrize(
        "fields",
        [
            {f"f{n}": "v" * 300 for n in range(5000)},  # thousands of small fields
            {"ctl": "\x01" * 400_000, "uni": "é" * 400_000},  # escapes and multi-byte text
        ],
        ids=["many-small-fields", "escapes"],
    )
    def test_any_oversize_event_fits_in_1_mb(self, fields: dict[str, str]) -> None:
        """Whatever makes an event large, its item ends under 1 MB with the essentials kept."""
        big = event(**fields)
        body = encode([big])
        assert len(body) <= MAX_ITEM_BYTES + 2
        (item,) = items_of(body)
        validate(body)
        assert (True, big["event_id"], "user-login") == (
            item["bridge.truncated"],
            item["event_id"],
            item["message"],
        )
        kept = [key for key in fields if key in item]
        assert len(fields) == len(kept) + item.get("bridge.dropped_fields", 0)
        assert kept, "as many fields as fit are kept"

    def test_an_oversize_event_is_delivered_cut_not_refused(
        self, mock: responses.RequestsMock, sinks: list[HttpSink]
    ) -> None:
        """Through the sink: the 2 MB event is sent once, cut, and counted delivered."""
        mock.add(responses.POST, INTAKE, **ACCEPTED)
        sink = datadog_sink(sinks, batch_max_bytes=64 * 1024 * 1024)
        big = event(message="q" * 2_000_000)
        deliver(sink, [big])
        (item,) = items_of(sent(mock.calls[0]))
        assert (big["event_id"], True) == (item["event_id"], item["bridge.truncated"])
        assert (1, 0) == (sink.stats()["delivered"], sink.stats()["dropped"])


class TestOptions:
    @staticmethod
    def load(options: dict[str, Any]) -> Any:
        sink = {"type": "http", "url": SITE_URL, "format": "datadog", "format_options": options}
        return load_settings({"BRIDGE_SINKS": [sink]}, {}).sinks[0]

    def test_the_api_key_comes_from_the_environment_and_is_a_secret(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`${DD_API_KEY}` is read at load; the header carries it; secrets() names it."""
        monkeypatch.setenv("DD_API_KEY", API_KEY)
        settings = self.load({"api_key": "${DD_API_KEY}", "ddtags": "env:prod"})
        fmt = get_format("datadog", settings.format_options)
        payload = fmt.encode([line(event())])
        assert (API_KEY, [API_KEY]) == (payload.headers["DD-API-KEY"], list(fmt.secrets()))
        assert "env:prod" == items_of(payload.body)[0]["ddtags"]
        assert API_KEY not in repr(settings) + repr(settings.format_options)

    def test_without_a_key_no_header_is_sent(self) -> None:
        """No api_key: no DD-API-KEY header (the sink's `headers` may carry it)."""
        fmt = get_format("datadog")
        assert ({"Accept": "application/json"}, []) == (
            dict(fmt.encode([line(event())]).headers),
            list(fmt.secrets()),
        )

    @pytest.mark.parametrize(
        ("options", "key", "shown"),
        [
            ({"apikey": "x"}, "apikey", "[hidden]"),
            ({"ddtags": "env: prod"}, "ddtags", "env: prod"),
            ({"ddsource": " "}, "ddsource", " "),
            ({"service": ""}, "service", ""),
            ({"tag_keys": {"my env": "deployment.environment"}}, "tag_keys", "my env"),
            ({"tag_keys": "env"}, "tag_keys", "env"),
            ({"api_key": "abc\n"}, "api_key", "[hidden]"),
        ],
        ids=["unknown", "tag-space", "source", "service", "tag-name", "tag-type", "key-newline"],
    )
    def test_bad_options_name_their_key(
        self, options: dict[str, Any], key: str, shown: Any
    ) -> None:
        """Each mistake is a ConfigError naming sinks[0].format_options.<key>; keys never shown."""
        with pytest.raises(ConfigError) as caught:
            self.load(options)
        assert (f"sinks[0].format_options.{key}", shown) == (caught.value.key, caught.value.value)


class TestEndToEnd:
    def test_the_collector_sees_datadog_logs_and_survives_failing_once(
        self, collector: Collector, make_sink: MakeSink
    ) -> None:
        """A real sink to a local intake that answers 503 once then 202: every event arrives
        once as Datadog would index it (service, host, status field, date, attributes)."""
        collector.plan(Reply(503, body=errors_body(503, "Service Unavailable", "retry")))
        collector.always(Reply(202, {"Content-Type": "application/json"}, b"{}"))
        sink = make_sink(
            f"http://127.0.0.1:{collector.port}",
            format="datadog",
            format_options=DatadogOptions(api_key=API_KEY, ddtags="env:test"),
        )
        events = [event(level="warning", n=n) for n in range(20)]
        for e in events:
            assert sink.submit(line(e))
        assert sink.flush(20.0)
        assert collector.wait_for(lambda c: len(c.events()) == 20)
        requests = collector.requests()
        assert 503 == requests[0].reply.status
        assert {("/api/v2/logs", API_KEY, "gzip")} == {
            (r.path, r.headers["dd-api-key"], r.headers["content-encoding"]) for r in requests
        }
        for r in requests:
            validate(r.body)
        got = collector.events()
        assert [e["event_id"] for e in events] == [i["event_id"] for i in got]
        assert {("shop", "web-1", "flask", "env:test", "warning", 1795595400123)} == {
            (i["service"], i["hostname"], i["ddsource"], i["ddtags"], i["level"], i["timestamp"])
            for i in got
        }
        assert list(range(20)) == [i["n"] for i in got]
        failed_once = len(requests[0].events)
        assert (20, failed_once) == (sink.stats()["delivered"], sink.stats()["retried"])


class TestPolicy:
    def test_hints_name_what_to_check_and_leave_other_statuses_alone(self) -> None:
        """StatusPolicy.hints: a hinted refusal says what to check; others read as before."""
        policy = get_format("datadog").policy
        refused = policy.classify(403, where="https://intake.test", body="{}")
        other = policy.classify(404, where="https://intake.test", body="{}")
        assert isinstance(refused, Rejected) and isinstance(other, Rejected)
        assert refused.reason.startswith("https://intake.test: HTTP 403, batch refused: Datadog")
        assert "https://intake.test: HTTP 404, batch refused" == other.reason
        assert isinstance(policy.classify(408, where="https://intake.test"), RetryLater)
        assert isinstance(policy.classify(413, where="https://intake.test"), Split)

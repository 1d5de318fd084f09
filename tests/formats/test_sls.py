"""`sls` (SLS web tracking) on the wire: the exact request, SLS's replies, limits, options."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pytest
import responses

from bridge.config import load_settings
from bridge.errors import ConfigError
from bridge.formats import get_format, options_type
from bridge.formats.sls import SlsFormat, SlsOptions
from bridge.sinks.http import HttpSink
from tests.collector import Collector, Reply
from tests.delivery.helpers import event_line, fast_settings, ids_of
from tests.formats.conftest import dead_ids

ENDPOINT = "https://my-project.cn-hangzhou.log.aliyuncs.com"
TRACK = f"{ENDPOINT}/logstores/app-events/track"
# Error replies as the SLS API documents them: {"errorCode": ..., "errorMessage": ...}.
QUOTA = b'{"errorCode":"WriteQuotaExceed","errorMessage":"Project write quota exceed: qps: 1000"}'
SHARD_QUOTA = b'{"errorCode":"ShardWriteQuotaExceed","errorMessage":"shard write quota exceed"}'
BAD_BODY = b'{"errorCode":"PostBodyInvalid","errorMessage":"post body invalid"}'
NO_STORE = b'{"errorCode":"LogStoreNotExist","errorMessage":"logstore app-events does not exist"}'
LINE_A = (
    b'{"timestamp":"2026-11-25T08:30:00.123456Z","level":"info","event":"user.login",'
    b'"event_id":"ev-a","host.name":"web-1","process.pid":4242,"user.id":7,"ok":true,'
    b'"ctx":{"path":"/login","tries":[1,2]},"none":null}\n'
)
LINE_B = b'{"timestamp":"2026-11-25T08:30:01.000000Z","event":"x","event_id":"ev-b","n":1.5}\n'


def sls_sink(url: str = ENDPOINT, **overrides: Any) -> HttpSink:
    overrides.setdefault("format_options", {"logstore": "app-events"})
    return HttpSink(fast_settings(url, format="sls", **overrides))


def body_of(call: Any) -> dict[str, Any]:
    """The request body as SLS reads it: inflated when `x-log-compresstype: deflate`."""
    raw = call.request.body
    if call.request.headers.get("x-log-compresstype") == "deflate":
        raw = zlib.decompress(raw)
    parsed = json.loads(raw)
    assert isinstance(parsed, dict)
    return parsed


class TestSlsWire:
    def test_golden_request(self, mock: responses.RequestsMock, sinks: list[HttpSink]) -> None:
        """POST /logstores/{logstore}/track, SLS headers, deflated body of string values only."""
        mock.add(responses.POST, TRACK, status=200)
        sink = sls_sink(format_options={"logstore": "app-events", "topic": "shop"})
        sinks.append(sink)
        sink.submit(LINE_A)
        sink.submit(LINE_B)
        assert sink.flush(10.0)
        (call,) = mock.calls
        headers = call.request.headers
        raw = zlib.decompress(call.request.body)
        assert ("POST", TRACK) == (call.request.method, call.request.url)
        assert "application/json" == headers["Content-Type"]
        assert ("0.6.0", str(len(raw)), "deflate") == (
            headers["x-log-apiversion"],
            headers["x-log-bodyrawsize"],
            headers["x-log-compresstype"],
        )
        assert "Content-Encoding" not in headers  # SLS takes no gzip on this API
        expected = {
            "__topic__": "shop",
            "__source__": "web-1",
            "__logs__": [
                {
                    "timestamp": "2026-11-25T08:30:00.123456Z",
                    "level": "info",
                    "event": "user.login",
                    "event_id": "ev-a",
                    "host.name": "web-1",
                    "process.pid": "4242",
                    "user.id": "7",
                    "ok": "true",
                    "ctx": '{"path":"/login","tries":[1,2]}',
                    "none": "null",
                },
                {
                    "timestamp": "2026-11-25T08:30:01.000000Z",
                    "event": "x",
                    "event_id": "ev-b",
                    "n": "1.5",
                },
            ],
            "__tags__": {},
        }
        assert expected == json.loads(raw)

    def test_uncompressed_when_asked(
        self, mock: responses.RequestsMock, sinks: list[HttpSink]
    ) -> None:
        """compress=false: the JSON as it is, x-log-bodyrawsize its length, no compress type;
        source and tags from the options."""
        mock.add(responses.POST, TRACK, status=200)
        options = {"logstore": "app-events", "compress": False, "source": "10.0.0.7"}
        sink = sls_sink(format_options={**options, "tags": {"env": "prod"}})
        sinks.append(sink)
        sink.submit(LINE_B)
        assert sink.flush(10.0)
        (call,) = mock.calls
        assert str(len(call.request.body)) == call.request.headers["x-log-bodyrawsize"]
        assert "x-log-compresstype" not in call.request.headers
        body = json.loads(call.request.body)
        assert ("10.0.0.7", {"env": "prod"}, "") == (
            body["__source__"],
            body["__tags__"],
            body["__topic__"],
        )

    def test_a_url_with_a_path_is_used_as_is(
        self, mock: responses.RequestsMock, sinks: list[HttpSink]
    ) -> None:
        """The user's URL wins over the default path (a proxy in front of SLS, say)."""
        url = "https://proxy.test/sls/logstores/app-events/track"
        mock.add(responses.POST, url, status=200)
        sink = sls_sink(url)
        sinks.append(sink)
        sink.submit(LINE_B)
        assert sink.flush(10.0)
        assert [url] == [c.request.url for c in mock.calls]

    def test_an_unreadable_line_still_goes_as_its_message(self) -> None:
        """A line that is not a JSON object is one log with its text as `message`."""
        fmt = SlsFormat(SlsOptions(logstore="app-events", compress=False))
        body = json.loads(fmt.encode([b"not json\n"]).body)
        assert [{"message": "not json"}] == body["__logs__"]


class TestSlsReplies:
    @pytest.mark.parametrize("quota", [QUOTA, SHARD_QUOTA], ids=["project", "shard"])
    def test_quota_403_is_retried_not_dead_lettered(
        self, mock: responses.RequestsMock, sinks: list[HttpSink], tmp_path: Path, quota: bytes
    ) -> None:
        """403 WriteQuotaExceed / ShardWriteQuotaExceed: backed off and sent again."""
        mock.add(responses.POST, TRACK, status=403, body=quota)
        mock.add(responses.POST, TRACK, status=200)
        dead = tmp_path / "dead.jsonl"
        sink = sls_sink(dead_letter_path=dead)
        sinks.append(sink)
        lines = [event_line(), event_line()]
        for line in lines:
            sink.submit(line)
        assert sink.flush(10.0)
        sent = [[log["event_id"] for log in body_of(c)["__logs__"]] for c in mock.calls]
        assert [ids_of(lines), ids_of(lines)] == sent
        stats = sink.stats()
        assert (2, 2, 0, []) == (  # retried: events sent again
            stats["delivered"],
            stats["retried"],
            stats["dead_lettered"],
            dead_ids(dead),
        )

    @pytest.mark.parametrize(
        ("status", "reply"), [(400, BAD_BODY), (404, NO_STORE)], ids=["400", "404"]
    )
    def test_other_4xx_are_dead_lettered_with_the_reason(
        self,
        mock: responses.RequestsMock,
        sinks: list[HttpSink],
        tmp_path: Path,
        status: int,
        reply: bytes,
    ) -> None:
        """A refusal SLS names (bad body, no such logstore) dead-letters the batch, by id."""
        mock.add(responses.POST, TRACK, status=status, body=reply)
        dead = tmp_path / "dead.jsonl"
        sink = sls_sink(dead_letter_path=dead)
        sinks.append(sink)
        lines = [event_line(), event_line()]
        for line in lines:
            sink.submit(line)
        assert sink.flush(10.0)
        records = [json.loads(r) for r in dead.read_text().splitlines()]
        assert ids_of(lines) == dead_ids(dead)
        assert [reply.decode()] * 2 == [r["response"] for r in records]
        assert [status] * 2 == [r["status"] for r in records]
        assert (1, 0, {"rejected_4xx": 2}) == (
            len(mock.calls),
            sink.stats()["delivered"],
            sink.stats()["dropped_by_reason"],
        )


class TestSlsLimits:
    def test_requests_hold_at_most_4096_logs(
        self, mock: responses.RequestsMock, sinks: list[HttpSink]
    ) -> None:
        """A sink batching 10000 events still sends at most 4096 logs per request."""
        mock.add(responses.POST, TRACK, status=200)
        sink = sls_sink(batch_max_events=10_000, batch_max_bytes=64 << 20, batch_timeout=0.5)
        sinks.append(sink)
        lines = [event_line() for _ in range(5000)]
        for line in lines:
            sink.submit(line)
        assert sink.flush(30.0)
        counts = [len(body_of(c)["__logs__"]) for c in mock.calls]
        assert 5000 == sum(counts)
        assert max(counts) <= 4096

    def test_requests_stay_within_3_mib_raw(
        self, mock: responses.RequestsMock, sinks: list[HttpSink]
    ) -> None:
        """Events of ~700 KiB batched 10 MiB at a time: every raw body within 3 MiB."""
        mock.add(responses.POST, TRACK, status=200)
        sink = sls_sink(batch_max_bytes=10 << 20, batch_timeout=0.5)
        sinks.append(sink)
        lines = [event_line(blob="x" * (700 << 10)) for _ in range(10)]
        for line in lines:
            sink.submit(line)
        assert sink.flush(30.0)
        sizes = [int(c.request.headers["x-log-bodyrawsize"]) for c in mock.calls]
        assert max(sizes) <= 3 * 1024 * 1024
        sent = [log["event_id"] for c in mock.calls for log in body_of(c)["__logs__"]]
        assert sorted(ids_of(lines)) == sorted(sent)

    def test_one_event_over_3_mib_is_dead_lettered_unsent(
        self, mock: responses.RequestsMock, sinks: list[HttpSink], tmp_path: Path
    ) -> None:
        """An event larger than a request may be: dead-lettered too_large, never sent."""
        mock.add(responses.POST, TRACK, status=200)
        dead = tmp_path / "dead.jsonl"
        sink = sls_sink(dead_letter_path=dead, batch_max_bytes=8 << 20)
        sinks.append(sink)
        big, small = event_line(blob="y" * (3 << 20)), event_line()
        sink.submit(big)
        sink.submit(small)
        assert sink.flush(20.0)
        assert ids_of([big]) == dead_ids(dead)
        sent = [log["event_id"] for c in mock.calls for log in body_of(c)["__logs__"]]
        assert ids_of([small]) == sent
        assert {"too_large": 1} == sink.stats()["dropped_by_reason"]


class TestSlsOptions:
    def settings(self, options: Any) -> Any:
        sink = {"type": "http", "url": ENDPOINT, "format": "sls", "format_options": options}
        return load_settings({"BRIDGE_SINKS": [sink]}, {})

    def test_options_from_the_configuration(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A TOML-like table becomes SlsOptions, `${ENV}` interpolated."""
        monkeypatch.setenv("SLS_TOPIC", "checkout")
        options = {"logstore": "app-events", "topic": "${SLS_TOPIC}", "tags": {"env": "prod"}}
        expected = SlsOptions(logstore="app-events", topic="checkout", tags={"env": "prod"})
        assert expected == self.settings(options).sinks[0].format_options

    @pytest.mark.parametrize(
        ("options", "key"),
        [
            ({"logstore": "app-events", "topc": "x"}, "topc"),
            ({}, "logstore"),
            ({"logstore": "App Events"}, "logstore"),
            ({"logstore": "app-events", "tags": ["a"]}, "tags"),
            ({"logstore": "app-events", "compress": "yes"}, "compress"),
        ],
        ids=["unknown", "missing-logstore", "bad-logstore", "tags-not-a-table", "bad-bool"],
    )
    def test_mistakes_name_the_option(self, options: dict[str, Any], key: str) -> None:
        """Unknown keys and bad values: ConfigError naming sinks[0].format_options.<key>."""
        with pytest.raises(ConfigError) as caught:
            self.settings(options)
        assert [f"sinks[0].format_options.{key}"] == [p.key for p in caught.value.problems]

    def test_registered_by_name(self) -> None:
        """get_format("sls", options) is this format, posting to its logstore's track path."""
        fmt = get_format("sls", options_type("sls")(logstore="app-events"))
        assert ("sls", "/logstores/app-events/track") == (fmt.name, fmt.default_path)
        assert (4096, 3 * 1024 * 1024) == (fmt.limits.max_events, fmt.limits.max_body_bytes)


def track_logs(headers: dict[str, str], body: bytes) -> list[dict[str, Any]]:
    """What SLS stores from a PutWebtracking body: each log with the request's topic/source."""
    if headers.get("x-log-compresstype") == "deflate":
        assert str(len(zlib.decompress(body))) == headers["x-log-bodyrawsize"]
        body = zlib.decompress(body)
    parsed = json.loads(body)
    common = {"__topic__": parsed["__topic__"], "__source__": parsed["__source__"]}
    logs: list[dict[str, Any]] = []
    for log in parsed["__logs__"]:
        assert all(isinstance(v, str) for v in log.values()), "SLS takes string values only"
        logs.append({**log, **common})
    return logs


@pytest.mark.slow
class TestSlsEndToEnd:
    def test_events_arrive_through_a_quota_error_and_a_503(self) -> None:
        """A real collector answering 403 WriteQuotaExceed, then 503, then 200: every event
        arrives once, as SLS would store it."""
        with Collector(decode=track_logs) as collector:
            collector.plan(
                Reply(403, {"Content-Type": "application/json"}, QUOTA), Reply(503), Reply(200)
            )
            url = collector.url.replace("/ingest", "")
            sink = sls_sink(url, format_options={"logstore": "app-events", "topic": "e2e"})
            try:
                lines = [
                    event_line(n=i, timestamp="2026-11-25T08:30:00.000001Z") for i in range(20)
                ]
                for line in lines:
                    sink.submit(line)
                assert sink.flush(20.0)
            finally:
                sink.close(1.0)
            assert sorted(ids_of(lines)) == sorted(collector.event_ids())
            stored = collector.events()
            assert {"/logstores/app-events/track"} == {r.path for r in collector.requests()}
            assert {("e2e", "2026-11-25T08:30:00.000001Z")} == {
                (e["__topic__"], e["timestamp"]) for e in stored
            }
            assert sorted(str(i) for i in range(20)) == sorted(e["n"] for e in stored)

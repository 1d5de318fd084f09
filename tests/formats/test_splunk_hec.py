"""The `splunk_hec` format: the exact HEC request for given events, read back the way HEC reads
a batch (a stream of JSON objects, `json.JSONDecoder.raw_decode` in a loop), HEC's refusals
(bodies as Splunk's "Troubleshoot HTTP Event Collector" table writes them) by `event_id`, the
request size limit, the options through the configuration, and a real collector."""

from __future__ import annotations

import gzip
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import responses

import tests.collector
from bridge.config import load_settings
from bridge.errors import ConfigError
from bridge.formats import get_format
from bridge.formats.splunk_hec import (
    MAX_CONTENT_LENGTH,
    SplunkHecFormat,
    SplunkHecOptions,
    read_reply,
)
from bridge.outcome import PartlyDelivered, Rejected
from bridge.sinks.http import HttpSink
from tests.collector import Collector, Reply
from tests.delivery.helpers import fast_settings
from tests.formats.conftest import dead_ids

BASE = "https://splunk.test:8088"
URL = BASE + "/services/collector/event"
TOKEN = "12345678-9abc-4def-8123-456789abcdef"
WHERE = "https://splunk.test:8088"
SUCCESS = b'{"text":"Success","code":0}'


def hec_objects(body: bytes) -> list[dict[str, Any]]:
    """The events of a HEC request body as HEC reads them: JSON objects one after another
    (whitespace between them allowed), each a complete envelope; anything else fails."""
    text, decoder, objects, at = body.decode(), json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return objects
        obj, at = decoder.raw_decode(text, at)
        assert isinstance(obj, dict), "a HEC batch holds objects, not arrays"
        assert "event" in obj, "code 12: Event field is required"
        objects.append(obj)


def line(n: int, **extra: Any) -> bytes:
    """One bridge event line with its own capture time and a known event_id."""
    event = {
        "timestamp": f"2026-11-25T08:30:{n % 60:02d}.{123456 + n:06d}Z",
        "level": "info",
        "event": "user.login",
        "event_id": f"ev-{n:04d}",
        "service.name": "shop",
        "host.name": "web-1",
        **extra,
    }
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def ids(objects: list[dict[str, Any]]) -> list[str]:
    return [o["event"]["event_id"] for o in objects]


def sent(call: Any) -> bytes:
    body = call.request.body
    assert isinstance(body, bytes)
    return gzip.decompress(body) if call.request.headers.get("Content-Encoding") == "gzip" else body


def hec_sink(sinks: list[HttpSink], url: str = BASE, **overrides: Any) -> HttpSink:
    overrides.setdefault("format_options", {"token": TOKEN})
    overrides.setdefault("batch_timeout", 5.0)  # one batch per flush: flush sends at once
    sink = HttpSink(fast_settings(url, format="splunk_hec", **overrides))
    sinks.append(sink)
    return sink


def send(sink: HttpSink, lines: list[bytes]) -> None:
    for one in lines:
        assert sink.submit(one)
    assert sink.flush(20.0)


class TestRequest:
    def test_exact_request_for_two_events(
        self, mock: responses.RequestsMock, sinks: list[HttpSink]
    ) -> None:
        """POST to the default path, `Authorization: Splunk <token>`, gzip, and the exact body:
        one envelope per line, `time` at the top level from the event's own timestamp."""
        mock.add(responses.POST, URL, status=200, body=SUCCESS)
        options = {"token": TOKEN, "source": "shop", "index": "main", "fields": ["level"]}
        sink = hec_sink(sinks, format_options=options)
        send(sink, [line(1), line(2, level="error")])
        assert 1 == len(mock.calls)
        request = mock.calls[0].request
        assert ("POST", URL) == (request.method, request.url)
        assert f"Splunk {TOKEN}" == request.headers["Authorization"]
        assert "application/json" == request.headers["Content-Type"]
        assert "gzip" == request.headers["Content-Encoding"]
        expected = (
            b'{"time":1795595401.123457,"host":"web-1","source":"shop","sourcetype":"_json",'
            b'"index":"main","fields":{"level":"info"},"event":' + line(1)[:-1] + b"}\n"
            b'{"time":1795595402.123458,"host":"web-1","source":"shop","sourcetype":"_json",'
            b'"index":"main","fields":{"level":"error"},"event":'
            + line(2, level="error")[:-1]
            + b"}\n"
        )
        assert expected == sent(mock.calls[0])
        assert 2 == sink.stats()["delivered"]

    def test_hec_reads_each_event_with_its_own_time_and_metadata(self) -> None:
        """Parsed as HEC parses it: `time` (seconds, microseconds kept) equals the event's
        timestamp, outside `event`; `event` is the bridge's event object unchanged."""
        lines = [line(n) for n in range(5)]
        objects = hec_objects(SplunkHecFormat().encode(lines).body)
        assert [json.loads(x) for x in lines] == [o["event"] for o in objects]
        for obj in objects:
            moment = datetime.fromisoformat(obj["event"]["timestamp"].replace("Z", "+00:00"))
            assert round(moment.timestamp(), 6) == obj["time"]
            assert "time" not in obj["event"]
            assert ("web-1", "_json") == (obj["host"], obj["sourcetype"])
            assert {"time", "host", "sourcetype", "event"} == set(obj)

    def test_the_oracle_reads_the_documented_batch_examples(self) -> None:
        """The parser used as oracle reads Splunk's documented bodies: the batch of "HTTP Event
        Collector examples" (objects stacked with no separator), the metadata examples of
        "Format events for HTTP Event Collector" (`time` in epoch seconds beside `event`), and
        `fields` as "Automate indexed field extractions with HTTP Event Collector" shows it."""
        stacked = (
            b'{"event": "Pony 1 has left the barn"}{"event": "Pony 2 has left the barn"}'
            b'{"event": "Pony 3 has left the barn", "nested": {"key1": "value1"}}'
        )
        assert 3 == len(hec_objects(stacked))
        documented = (
            b'{"time": 1426279439, "host": "localhost", "source": "random-data-generator", '
            b'"sourcetype": "my_sample_data", "index": "main", "event": "Hello world!"}\n'
            b'{"time": 1437522387, "host": "dataserver992.example.com", "source": "testapp", '
            b'"event": {"message": "Something happened", "severity": "INFO"}}\n'
            b'{"event": "Hello world!", '
            b'"fields": {"club": "glee", "wins": ["regionals", "nationals"]}}\n'
        )
        first, second, third = hec_objects(documented)
        assert (1426279439, "Hello world!") == (first["time"], first["event"])
        assert "Something happened" == second["event"]["message"]
        assert {"club": "glee", "wins": ["regionals", "nationals"]} == third["fields"]
        fmt = SplunkHecFormat(SplunkHecOptions(fields=("level",)))
        ours = hec_objects(fmt.encode([line(1)]).body)
        assert set(ours[0]) <= set(first) | set(third)  # no key HEC's envelope does not know
        with pytest.raises(AssertionError):
            hec_objects(b'[{"event": "an array is not a HEC batch"}]')

    def test_options_set_host_source_index_and_flat_indexed_fields(self) -> None:
        """`host` overrides host.name; indexed fields are flat strings of the named keys only,
        missing keys left out; with no `fields` option nothing is indexed."""
        options = SplunkHecOptions(
            host="h1",
            source="s",
            index="i",
            sourcetype="st",
            fields=("level", "count", "ok", "d", "x"),
        )
        (obj,) = hec_objects(
            SplunkHecFormat(options).encode([line(0, count=3, ok=True, d={"a": 1})]).body
        )
        assert ("h1", "s", "i", "st") == (
            obj["host"],
            obj["source"],
            obj["index"],
            obj["sourcetype"],
        )
        assert {"level": "info", "count": "3", "ok": "true", "d": '{"a":1}'} == obj["fields"]
        (plain,) = hec_objects(SplunkHecFormat().encode([line(0)]).body)
        assert "fields" not in plain and "index" not in plain and "source" not in plain

    def test_events_without_time_host_or_json_still_go_out(self) -> None:
        """No timestamp: no `time` (HEC stamps arrival); no host.name: no `host`; a line that
        is not JSON becomes `{"message": ...}`; the body is still one valid HEC stream."""
        lines = [b'{"event_id":"a"}\n', b"plain text\n", b'{"event_id":"b","timestamp":"x"}\n']
        objects = hec_objects(SplunkHecFormat().encode(lines).body)
        assert [{"event_id": "a"}, {"message": "plain text"}] == [o["event"] for o in objects[:2]]
        assert all("time" not in o and "host" not in o for o in objects)

    def test_an_authorization_header_of_the_user_is_sent_when_no_token_is_set(
        self, mock: responses.RequestsMock, sinks: list[HttpSink]
    ) -> None:
        """Token empty: the format adds no header; the sink's `headers` carry it."""
        mock.add(responses.POST, URL, status=200, body=SUCCESS)
        sink = hec_sink(sinks, format_options={}, headers={"Authorization": "Splunk mine"})
        send(sink, [line(1)])
        assert "Splunk mine" == mock.calls[0].request.headers["Authorization"]
        assert () == get_format("splunk_hec").secrets()


class TestReplies:
    def test_a_bad_event_is_dead_lettered_those_after_it_resent(
        self, mock: responses.RequestsMock, sinks: list[HttpSink], tmp_path: Path
    ) -> None:
        """400 `{"text":"Invalid data format","code":6,"invalid-event-number":2}` (HEC's table,
        code 6): events 0-1 were taken, event 2 is dead-lettered with HEC's reason, 3-4 are
        sent again, alone."""
        refusal = b'{"text":"Invalid data format","code":6,"invalid-event-number":2}'
        mock.add(responses.POST, URL, status=400, body=refusal)
        mock.add(responses.POST, URL, status=200, body=SUCCESS)
        dead = tmp_path / "dead.jsonl"
        sink = hec_sink(sinks, dead_letter_path=dead)
        send(sink, [line(n) for n in range(5)])
        assert [f"ev-{n:04d}" for n in range(5)] == ids(hec_objects(sent(mock.calls[0])))
        assert ["ev-0003", "ev-0004"] == ids(hec_objects(sent(mock.calls[1])))
        assert ["ev-0002"] == dead_ids(dead)
        record = json.loads(dead.read_text())
        assert 400 == record["status"]
        assert "HEC code 6 Invalid data format (invalid-event-number 2)" == record["response"]
        stats = sink.stats()
        assert (4, 1, 2) == (stats["delivered"], stats["dead_lettered"], len(mock.calls))

    def test_server_busy_is_retried_whole(
        self, mock: responses.RequestsMock, sinks: list[HttpSink], tmp_path: Path
    ) -> None:
        """503 `{"text":"Server is busy","code":9}`: nothing taken, the batch is sent again."""
        mock.add(responses.POST, URL, status=503, body=b'{"text":"Server is busy","code":9}')
        mock.add(responses.POST, URL, status=200, body=SUCCESS)
        dead = tmp_path / "dead.jsonl"
        sink = hec_sink(sinks, dead_letter_path=dead)
        send(sink, [line(n) for n in range(3)])
        assert ids(hec_objects(sent(mock.calls[0]))) == ids(hec_objects(sent(mock.calls[1])))
        assert (3, 0, []) == (sink.stats()["delivered"], sink.stats()["dropped"], dead_ids(dead))
        assert 1 <= sink.stats()["retried"]

    @pytest.mark.parametrize(
        ("status", "body", "said"),
        [
            (401, b'{"text":"Token is required","code":2}', "the HEC token is missing"),
            (401, b'{"text":"Invalid authorization","code":3}', "the HEC token is malformed"),
            (403, b'{"text":"Invalid token","code":4}', "the HEC token is unknown"),
            (403, b'{"text":"Token disabled","code":1}', "the HEC token is disabled"),
        ],
    )
    def test_token_errors_dead_letter_the_batch_with_a_clear_reason(
        self,
        mock: responses.RequestsMock,
        sinks: list[HttpSink],
        tmp_path: Path,
        status: int,
        body: bytes,
        said: str,
    ) -> None:
        """401/403 with HEC codes 1-4: not retried; every event dead-lettered; the error says
        which token problem it is and where to fix it."""
        mock.add(responses.POST, URL, status=status, body=body)
        dead = tmp_path / "dead.jsonl"
        sink = hec_sink(sinks, dead_letter_path=dead)
        send(sink, [line(n) for n in range(3)])
        assert ["ev-0000", "ev-0001", "ev-0002"] == dead_ids(dead)
        stats = sink.stats()
        assert {"rejected_4xx": 3} == stats["dropped_by_reason"]
        assert said in stats["last_error"] and "format_options.token" in stats["last_error"]
        assert 1 == len(mock.calls)

    def test_an_incorrect_index_refuses_the_whole_batch(
        self, mock: responses.RequestsMock, sinks: list[HttpSink], tmp_path: Path
    ) -> None:
        """400 code 7 "Incorrect index": every event carries the same index, so all are
        dead-lettered at once (not one request per event)."""
        body = b'{"text":"Incorrect index","code":7,"invalid-event-number":0}'
        mock.add(responses.POST, URL, status=400, body=body)
        dead = tmp_path / "dead.jsonl"
        sink = hec_sink(sinks, dead_letter_path=dead, format_options={"index": "nope"})
        send(sink, [line(n) for n in range(4)])
        assert 4 == len(dead_ids(dead))
        assert "format_options.index" in sink.stats()["last_error"]
        assert 1 == len(mock.calls)

    def test_a_too_large_reply_splits_the_batch(
        self, mock: responses.RequestsMock, sinks: list[HttpSink]
    ) -> None:
        """413 (a body over the input's max_content_length): the halves are sent."""
        mock.add(responses.POST, URL, status=413, body=b"Content-Length of 2000000 too large")
        mock.add(responses.POST, URL, status=200, body=SUCCESS)
        sink = hec_sink(sinks)
        send(sink, [line(n) for n in range(4)])
        assert [4, 2, 2] == [len(hec_objects(sent(c))) for c in mock.calls]
        assert 4 == sink.stats()["delivered"]

    @pytest.mark.parametrize(
        ("status", "body", "expected"),
        [
            (
                400,
                '{"text":"Event field is required","code":12,"invalid-event-number":0}',
                PartlyDelivered(
                    (1, 2),
                    (0,),
                    400,
                    "HEC code 12 Event field is required (invalid-event-number 0)",
                ),
            ),
            (
                400,
                '{"text":"Event field cannot be blank","code":13,"invalid-event-number":2}',
                PartlyDelivered(
                    (),
                    (2,),
                    400,
                    "HEC code 13 Event field cannot be blank (invalid-event-number 2)",
                ),
            ),
            (
                400,
                '{"text":"Invalid data format","code":6,"invalid-event-number":3}',
                Rejected(
                    f"{WHERE}: HTTP 400, HEC code 6 Invalid data format, batch refused",
                    400,
                    '{"text":"Invalid data format","code":6,"invalid-event-number":3}',
                    "rejected_4xx",
                ),
            ),
            (
                400,
                '{"text":"No data","code":5}',
                Rejected(
                    f"{WHERE}: HTTP 400, HEC code 5 No data, batch refused",
                    400,
                    '{"text":"No data","code":5}',
                    "rejected_4xx",
                ),
            ),
            (
                400,
                '{"text":"Data channel is missing","code":10}',
                Rejected(
                    f"{WHERE}: HTTP 400, HEC code 10 Data channel is missing, batch refused",
                    400,
                    '{"text":"Data channel is missing","code":10}',
                    "rejected_4xx",
                ),
            ),
            (400, "not json", None),
            (503, '{"text":"Server is busy","code":9}', None),
            (500, '{"text":"Internal server error","code":8}', None),
        ],
    )
    def test_hec_codes_read_from_the_body(self, status: int, body: str, expected: object) -> None:
        """Per-event codes with an invalid-event-number inside the batch (3 events) name it;
        one outside the batch or a request-wide code refuses it; other statuses: the rules."""
        assert expected == read_reply(status, where=WHERE, body=body, events=3)

    def test_a_token_echoed_in_a_reply_is_scrubbed(
        self, mock: responses.RequestsMock, sinks: list[HttpSink], tmp_path: Path
    ) -> None:
        """The token is one of the format's secrets: never in stats or dead letters."""
        mock.add(
            responses.POST, URL, status=403, body=f'{{"text":"Invalid token {TOKEN}","code":4}}'
        )
        dead = tmp_path / "dead.jsonl"
        sink = hec_sink(sinks, dead_letter_path=dead)
        send(sink, [line(1)])
        assert TOKEN not in json.dumps(sink.stats()) + dead.read_text()
        assert (TOKEN,) == tuple(get_format("splunk_hec", SplunkHecOptions(token=TOKEN)).secrets())


class TestLimits:
    def test_requests_stay_within_max_content_length(
        self, mock: responses.RequestsMock, sinks: list[HttpSink]
    ) -> None:
        """2,400 events of ~600 bytes in batches of up to 2 MB of lines: every request body is
        at most HEC's default 1,000,000 bytes, and every event arrives once."""
        mock.add(responses.POST, URL, status=200, body=SUCCESS)
        sink = hec_sink(sinks, batch_max_events=5000, batch_max_bytes=2_000_000)
        lines = [line(n, pad="x" * 400) for n in range(2400)]
        send(sink, lines)
        sizes = [len(sent(c)) for c in mock.calls]
        assert MAX_CONTENT_LENGTH == get_format("splunk_hec").limits.max_body_bytes
        assert max(sizes) <= MAX_CONTENT_LENGTH
        arrived = [i for c in mock.calls for i in ids(hec_objects(sent(c)))]
        assert sorted(json.loads(x)["event_id"] for x in lines) == sorted(arrived)
        assert 2400 == sink.stats()["delivered"]

    def test_an_event_over_the_limit_alone_is_dead_lettered_never_sent(
        self, mock: responses.RequestsMock, sinks: list[HttpSink], tmp_path: Path
    ) -> None:
        """One event larger than max_body_bytes: dead-lettered `too_large`, the others sent."""
        mock.add(responses.POST, URL, status=200, body=SUCCESS)
        dead = tmp_path / "dead.jsonl"
        sink = hec_sink(
            sinks,
            dead_letter_path=dead,
            format_options={"token": TOKEN, "max_body_bytes": 5000},
        )
        send(sink, [line(0), line(1, pad="y" * 6000), line(2)])
        assert ["ev-0001"] == dead_ids(dead)
        arrived = [i for c in mock.calls for i in ids(hec_objects(sent(c)))]
        assert ["ev-0000", "ev-0002"] == sorted(arrived)
        assert all(len(sent(c)) <= 5000 for c in mock.calls)
        assert {"too_large": 1} == sink.stats()["dropped_by_reason"]


README_SNIPPET = """
[[sinks]]
type = "http"
name = "splunk"
url = "https://splunk.example.com:8088"
format = "splunk_hec"

[sinks.format_options]
token = "${SPLUNK_HEC_TOKEN}"
index = "main"
source = "shop"
fields = ["level", "event"]
"""


class TestOptions:
    def test_the_readme_snippet_loads_as_written(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The README's TOML, with the token from the environment, builds these options."""
        path = tmp_path / "bridge.toml"
        path.write_text(README_SNIPPET)
        monkeypatch.setenv("SPLUNK_HEC_TOKEN", TOKEN)
        settings = load_settings({}, {"BRIDGE_CONFIG": str(path)})
        (sink,) = settings.sinks
        expected = SplunkHecOptions(
            token=TOKEN, index="main", source="shop", fields=("level", "event")
        )
        assert ("splunk_hec", expected) == (sink.format, sink.format_options)

    @pytest.mark.parametrize(
        ("options", "key"),
        [
            ({"tokn": "x"}, "sinks[0].format_options.tokn"),
            ({"sourcetype": ""}, "sinks[0].format_options.sourcetype"),
            ({"fields": "level"}, "sinks[0].format_options.fields"),
            ({"max_body_bytes": 0}, "sinks[0].format_options.max_body_bytes"),
            ({"token": "two words"}, "sinks[0].format_options.token"),
        ],
    )
    def test_mistakes_are_config_errors_naming_the_key(
        self, options: dict[str, Any], key: str
    ) -> None:
        """An unknown key or a bad value fails at load, naming `sinks[0].format_options.<key>`;
        a token is never shown."""
        sink = {"type": "http", "url": BASE, "format": "splunk_hec", "format_options": options}
        with pytest.raises(ConfigError) as caught:
            load_settings({"BRIDGE_SINKS": [sink]}, {})
        assert key == caught.value.key
        assert "two words" not in str(caught.value)


class TestEndToEnd:
    def test_events_arrive_once_after_the_collector_was_busy(
        self, monkeypatch: pytest.MonkeyPatch, sinks: list[HttpSink]
    ) -> None:
        """A real HTTP server answering as HEC does: busy (503 code 9) once, then Success;
        read the way HEC reads the body, every event is there once, at the default path,
        with its own time."""
        monkeypatch.setattr(tests.collector, "split_events", lambda body, _: hec_objects(body))
        with Collector() as collector:
            busy = Reply(503, body=b'{"text":"Server is busy","code":9}')
            collector.plan(busy)
            collector.always(Reply(200, body=SUCCESS))
            sink = hec_sink(sinks, url=f"http://127.0.0.1:{collector.port}")
            lines = [line(n) for n in range(20)]
            send(sink, lines)
            envelopes = collector.events()
            assert [json.loads(x)["event_id"] for x in lines] == ids(envelopes)
            requests_seen = collector.requests()
            assert 2 == len(requests_seen)
            assert {"/services/collector/event"} == {r.path for r in requests_seen}
            assert f"Splunk {TOKEN}" == requests_seen[1].headers["authorization"]
            assert [
                round(datetime.fromisoformat(e["event"]["timestamp"]).timestamp(), 6)
                for e in envelopes
            ] == [e["time"] for e in envelopes]
            assert 20 == sink.stats()["delivered"]

"""The `elasticsearch` format (Bulk API, also OpenSearch): exact requests, replies read item by
item, limits, options, and a real end-to-end run against the local collector.

Oracles: the official client `elasticsearch` (elasticsearch-py, installed with
aliyun-log-python-sdk; imported only here) builds the same bulk request for the same events
and reads the same replies the same way. Replies are copied from Elastic's documentation:
the bulk API's examples (elasticsearch-specification, `_global/bulk/examples/response`:
`"errors": true` with per-item `error` objects, and the `filter_path=items.*.error` form),
the 409 `version_conflict_engine_exception` a `create` of an existing `_id` gets, and the 429
`es_rejected_execution_exception` of the "Rejected requests" troubleshooting page.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from elasticsearch import Elasticsearch, helpers
from requests import PreparedRequest

from bridge.config import load_settings
from bridge.errors import ConfigError
from bridge.formats import get_format
from bridge.formats.elasticsearch import FILTER_PATH, ElasticsearchFormat, ElasticsearchOptions
from bridge.outcome import DELIVERED, PartlyDelivered, RetryLater
from bridge.sinks.http import HttpSink
from bridge.sinks.httpwire import REPLY_MAX_BYTES
from tests.collector import Collector, Reply
from tests.delivery.helpers import fast_settings

ES = "http://es.test:9200"
ANY_ES = re.compile(r"http://es\.test:9200/.*")
STAMP = "2026-11-25T08:30:00.123456Z"
_numbers = iter(range(1 << 30))

# Items as Elastic documents them (see the module docstring), in a reply's per-item shape.
CONFLICT = {
    "type": "version_conflict_engine_exception",
    "reason": "[ev-1]: version conflict, document already exists (current version [1])",
    "index_uuid": "aAsFqTI0Tc2W0LCWgPNrOA",
    "shard": "0",
    "index": "logs-flask-default",
}
REJECTED = {
    "type": "es_rejected_execution_exception",
    "reason": "rejected execution of coordinating operation [coordinating_and_primary_bytes="
    "104759862, replica_bytes=0, all_bytes=104759862, coordinating_operation_bytes=20862272, "
    "max_coordinating_and_primary_bytes=107374182]",
}
MAPPING = {
    "type": "document_parsing_exception",
    "reason": "[1:42] failed to parse field [http.status] of type [long] in document with id "
    "'ev-3'. Preview of field's value: 'abc'",
    "caused_by": {"type": "illegal_argument_exception", "reason": 'For input string: "abc"'},
}
MISSING_INDEX = {
    "type": "index_not_found_exception",
    "reason": "no such index [logs-flask-default]",
    "index": "logs-flask-default",
}
SHARD_DOWN = {
    "type": "unavailable_shards_exception",
    "reason": "[logs-flask-default][0] primary shard is not active Timeout: [1m]",
}
INTERNAL = {"type": "exception", "reason": "unexpected failure while indexing"}


def es_line(**fields: Any) -> bytes:
    """One of the bridge's event lines, with a unique event_id and its own timestamp."""
    event = {
        "timestamp": STAMP,
        "level": "info",
        "event": "test.event",
        "event_id": f"ev-{next(_numbers):06d}",
        **fields,
    }
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def pairs(body: bytes) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The (action, document) pairs of a bulk body (it must end in a newline)."""
    assert body.endswith(b"\n")
    lines = [json.loads(line) for line in body.split(b"\n")[:-1]]
    return list(zip(lines[::2], lines[1::2], strict=True))


def unzipped(request: PreparedRequest) -> bytes:
    body = request.body
    assert isinstance(body, bytes)
    return gzip.decompress(body) if request.headers.get("Content-Encoding") == "gzip" else body


def item(status: int, error: dict[str, Any] | None = None, op: str = "create") -> dict[str, Any]:
    """One reply item as `filter_path=errors,items.*.error,items.*.status` leaves it."""
    return {op: {"status": status, **({"error": error} if error else {})}}


def reply(*items: dict[str, Any]) -> bytes:
    errors = any(not 200 <= next(iter(i.values()))["status"] < 300 for i in items)
    return json.dumps({"errors": errors, "items": list(items)}).encode()


Decide = Callable[[int, int, dict[str, Any]], "tuple[int, dict[str, Any] | None] | None"]


class FakeCluster:
    """What a cluster does with our bulk requests (a `responses` callback): `create` by
    (_index, _id), 201 or 409 when it exists; `decide(call, position, document)` may answer an
    item otherwise (a status and error). Replies are filtered as the URL's filter_path asks."""

    def __init__(self, decide: Decide | None = None) -> None:
        self.decide = decide
        self.indexed: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[PreparedRequest] = []

    def __call__(self, request: PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        call = len(self.requests)
        self.requests.append(request)
        filtered = "filter_path" in parse_qs(urlsplit(str(request.url)).query)
        items = []
        for position, (action, doc) in enumerate(pairs(unzipped(request))):
            meta = action["create"]
            key = (meta["_index"], meta["_id"])
            scripted = self.decide(call, position, doc) if self.decide else None
            if scripted is not None:
                status, error = scripted
                if 200 <= status < 300 or status == 409:  # 409: it was there already
                    self.indexed.setdefault(key, doc)
            elif key in self.indexed:
                status, error = 409, CONFLICT
            else:
                self.indexed[key] = doc
                status, error = 201, None
            if filtered:
                items.append(item(status, error))
            else:
                result = {"_index": key[0], "_id": key[1], "status": status}
                items.append({"create": {**result, **({"error": error} if error else {})}})
        return 200, {"Content-Type": "application/json"}, reply(*items)

    def ids(self) -> list[str]:
        return sorted(i for _, i in self.indexed)

    def sent_ids(self, call: int) -> list[str]:
        return [a["create"]["_id"] for a, _ in pairs(unzipped(self.requests[call]))]


@pytest.fixture
def es_sink(sinks: list[HttpSink], tmp_path: Path) -> Callable[..., HttpSink]:
    """Factory: an elasticsearch http sink (dead letters in tmp_path/dead.jsonl)."""

    def make(url: str = ES, **overrides: Any) -> HttpSink:
        overrides.setdefault("format", "elasticsearch")
        overrides.setdefault("dead_letter_path", tmp_path / "dead.jsonl")
        sink = HttpSink(fast_settings(url, **overrides))
        sinks.append(sink)
        return sink

    return make


def dead_letters(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "dead.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def submit_all(sink: HttpSink, lines: list[bytes]) -> None:
    for line in lines:
        assert sink.submit(line)
    assert sink.flush(20.0)


def official_reply(
    seen: list[PreparedRequest], body: bytes
) -> Callable[[PreparedRequest], tuple[int, dict[str, str], bytes]]:
    """A `responses` callback answering the official client as a cluster would."""

    def answer(request: PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        seen.append(request)
        headers = {"X-Elastic-Product": "Elasticsearch", "Content-Type": "application/json"}
        return 200, headers, body

    return answer


@contextlib.contextmanager
def official_client() -> Iterator[Elasticsearch]:
    """elasticsearch-py over `requests` (so `responses` answers it), never retrying."""
    client = Elasticsearch(ES, node_class="requests", max_retries=0)
    try:
        yield client
    finally:
        client.close()


class TestRequest:
    def test_the_exact_request(
        self, mock: responses.RequestsMock, es_sink: Callable[..., HttpSink]
    ) -> None:
        """POST /_bulk?filter_path=..., NDJSON, gzip; create with _id = event_id, @timestamp."""
        cluster = FakeCluster()
        mock.add_callback(responses.POST, ANY_ES, callback=cluster)
        sink = es_sink(format_options={"index": "logs-flask-%Y.%m.%d", "pipeline": "geoip"})
        lines = [
            b'{"timestamp":"2026-11-25T08:30:00.123456Z","event":"a","event_id":"id-1"}\n',
            b'{"timestamp":"2026-11-25T23:59:59.999999Z","event":"b","event_id":"id-2"}\n',
        ]
        submit_all(sink, lines)
        (request,) = cluster.requests
        assert "POST" == request.method
        assert f"{ES}/_bulk?filter_path=errors,items.*.error,items.*.status" == request.url
        assert "application/x-ndjson" == request.headers["Content-Type"]
        assert "gzip" == request.headers["Content-Encoding"]
        expected = (
            b'{"create":{"_index":"logs-flask-2026.11.25","_id":"id-1","pipeline":"geoip"}}\n'
            b'{"@timestamp":"2026-11-25T08:30:00.123456Z",'
            b'"timestamp":"2026-11-25T08:30:00.123456Z","event":"a","event_id":"id-1"}\n'
            b'{"create":{"_index":"logs-flask-2026.11.25","_id":"id-2","pipeline":"geoip"}}\n'
            b'{"@timestamp":"2026-11-25T23:59:59.999999Z",'
            b'"timestamp":"2026-11-25T23:59:59.999999Z","event":"b","event_id":"id-2"}\n'
        )
        assert expected == unzipped(request)
        assert ["id-1", "id-2"] == cluster.ids()

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            (ES, f"{ES}/_bulk?filter_path={FILTER_PATH}"),
            (f"{ES}/", f"{ES}/_bulk?filter_path={FILTER_PATH}"),
            (f"{ES}/logs/_bulk", f"{ES}/logs/_bulk?filter_path={FILTER_PATH}"),
            (f"{ES}/_bulk?refresh=false", f"{ES}/_bulk?refresh=false&filter_path={FILTER_PATH}"),
            (f"{ES}/_bulk?filter_path=items.*.status", f"{ES}/_bulk?filter_path=items.*.status"),
        ],
    )
    def test_the_url_is_used_as_given(
        self,
        mock: responses.RequestsMock,
        es_sink: Callable[..., HttpSink],
        url: str,
        expected: str,
    ) -> None:
        """The default path only when the URL has none; filter_path only when it has none."""
        cluster = FakeCluster()
        mock.add_callback(responses.POST, ANY_ES, callback=cluster)
        submit_all(es_sink(url), [es_line()])
        assert [expected] == [r.url for r in cluster.requests]

    def test_the_index_pattern_reads_each_events_own_time_in_utc(self) -> None:
        """%Y.%m.%d/%H from the event's timestamp converted to UTC, never the send time."""
        fmt = ElasticsearchFormat(ElasticsearchOptions(index="app-%Y.%m.%d-%H"))
        lines = [
            es_line(timestamp="2026-11-25T23:59:59.999999Z"),
            es_line(timestamp="2026-11-26T00:00:00.000000Z"),
            es_line(timestamp="2026-11-26T03:30:00+05:00"),  # 22:30 UTC on the 25th
            es_line(timestamp="1999-12-31T23:00:00.000000Z"),
        ]
        indices = [a["create"]["_index"] for a, _ in pairs(fmt.encode(lines).body)]
        expected = [
            "app-2026.11.25-23",
            "app-2026.11.26-00",
            "app-2026.11.25-22",
            "app-1999.12.31-23",
        ]
        assert expected == indices

    def test_odd_lines_still_make_valid_documents(self) -> None:
        """A line that is not an object, `{}`, and an event with its own @timestamp."""
        fmt = get_format("elasticsearch")
        lines = [b"plain text\n", b"{}\n", es_line(**{"@timestamp": "kept"}), b'{"event_id":"x"}\n']
        docs = pairs(fmt.encode(lines).body)
        assert "plain text" == docs[0][1]["message"]
        assert {"@timestamp"} == set(docs[1][1])
        assert "kept" == docs[2][1]["@timestamp"]
        assert "x" == docs[3][0]["create"]["_id"] == docs[3][1]["event_id"]
        assert all(isinstance(d["@timestamp"], str) for _, d in docs)
        assert "_id" not in docs[0][0]["create"]  # no event_id: the cluster names it

    def test_the_official_client_builds_the_same_request(
        self, mock: responses.RequestsMock
    ) -> None:
        """elasticsearch-py's bulk helper, given the same documents, sends the same actions,
        documents and filter_path (checked on the bytes it put on the wire; it uses PUT, which
        the bulk API takes as it takes POST)."""
        lines = [es_line(n=n, user={"id": n}) for n in range(3)]
        ours = pairs(get_format("elasticsearch").encode(lines).body)
        actions = [
            {"_op_type": "create", "_index": a["create"]["_index"], "_id": a["create"]["_id"], **d}
            for a, d in ours
        ]
        seen: list[PreparedRequest] = []
        mock.add_callback(responses.PUT, ANY_ES, callback=official_reply(seen, reply(item(201))))
        with official_client() as client:
            helpers.bulk(client, actions, filter_path=FILTER_PATH)
        (request,) = seen
        url = urlsplit(str(request.url))
        assert "/_bulk" == url.path
        assert {"filter_path": [FILTER_PATH]} == parse_qs(url.query)
        assert ours == pairs(unzipped(request))


class TestReplies:
    def test_a_mixed_reply_from_the_documentation(
        self, mock: responses.RequestsMock, es_sink: Callable[..., HttpSink], tmp_path: Path
    ) -> None:
        """201 and 409 delivered, 429/500/503 retried (and then delivered), 400 and 404
        dead-lettered with their type and reason; counted, by event_id."""
        lines = [es_line() for _ in range(7)]
        ids = [json.loads(line)["event_id"] for line in lines]
        first = [(201, None), (409, CONFLICT), (429, REJECTED), (400, MAPPING), (500, INTERNAL)]
        first += [(404, MISSING_INDEX), (503, SHARD_DOWN)]

        def decide(call: int, position: int, doc: dict[str, Any]) -> Any:
            return first[position] if call == 0 else None

        cluster = FakeCluster(decide)
        mock.add_callback(responses.POST, ANY_ES, callback=cluster)
        sink = es_sink(batch_max_events=7, batch_timeout=5.0)
        submit_all(sink, lines)
        assert 2 == len(cluster.requests)
        assert [ids[2], ids[4], ids[6]] == cluster.sent_ids(1)
        assert sorted([ids[0], ids[1], ids[2], ids[4], ids[6]]) == cluster.ids()
        records = dead_letters(tmp_path)
        assert [ids[3], ids[5]] == [json.loads(r["line"])["event_id"] for r in records]
        assert {"rejected_item"} == {r["reason"] for r in records}
        response = records[0]["response"]
        assert (
            "400 document_parsing_exception: [1:42] failed to parse field [http.status]" in response
        )
        assert "404 index_not_found_exception: no such index [logs-flask-default]" in response
        stats = sink.stats()
        assert (5, 2, 0) == (stats["delivered"], stats["dead_lettered"], stats["queue_depth"])

    def test_the_official_client_reads_the_documented_reply_the_same_way(
        self, mock: responses.RequestsMock
    ) -> None:
        """elasticsearch-py (helpers/actions.py: `_process_bulk_chunk_success`, by position,
        a missing status read as 500) and this format agree on every item of the same reply:
        what it calls ok we deliver; of its failures, 409-on-create is delivered (already
        indexed), 429 and 5xx retried, other statuses dead-lettered."""
        statuses = [(201, None), (409, CONFLICT), (429, REJECTED), (400, MAPPING), (500, INTERNAL)]
        statuses += [(200, None), (404, MISSING_INDEX), (503, SHARD_DOWN)]
        body = reply(*[item(s, e) for s, e in statuses])
        mock.add_callback(responses.PUT, ANY_ES, callback=official_reply([], body))
        docs = [{"_op_type": "create", "_id": str(n), "n": n} for n in range(len(statuses))]
        with official_client() as client:
            official = list(
                helpers.streaming_bulk(
                    client, docs, index="i", raise_on_error=False, raise_on_exception=False
                )
            )
        ok = [n for n, (good, _) in enumerate(official) if good]
        failed = {
            n: info["create"]["status"] for n, (good, info) in enumerate(official) if not good
        }
        outcome = get_format("elasticsearch").interpret(200, body).for_batch(len(statuses))
        assert isinstance(outcome, PartlyDelivered)
        delivered = set(range(len(statuses))) - set(outcome.retry) - set(outcome.reject)
        assert set(ok) | {n for n, s in failed.items() if s == 409} == delivered
        assert {n for n, s in failed.items() if s == 429 or s >= 500} == set(outcome.retry)
        assert {n for n, s in failed.items() if s != 409 and s < 500 and s != 429} == set(
            outcome.reject
        )

    def test_an_unfiltered_reply_is_read_the_same(self) -> None:
        """Without filter_path (the user's URL set its own) the full items read alike; the
        documented example (update 404 x2, create 201) dead-letters the two 404s."""
        documented = {
            "took": 486,
            "errors": True,
            "items": [
                {"update": {"_index": "index1", "_id": "5", "status": 404, "error": {
                    "type": "document_missing_exception", "reason": "[5]: document missing",
                    "index_uuid": "aAsFqTI0Tc2W0LCWgPNrOA", "shard": "0", "index": "index1"}}},
                {"update": {"_index": "index1", "_id": "6", "status": 404, "error": {
                    "type": "document_missing_exception", "reason": "[6]: document missing",
                    "index_uuid": "aAsFqTI0Tc2W0LCWgPNrOA", "shard": "0", "index": "index1"}}},
                {"create": {"_index": "index1", "_id": "7", "_version": 1, "result": "created",
                    "_shards": {"total": 2, "successful": 1, "failed": 0}, "_seq_no": 0,
                    "_primary_term": 1, "status": 201}},
            ],
        }  # fmt: skip
        outcome = get_format("elasticsearch").interpret(200, json.dumps(documented).encode())
        assert isinstance(outcome, PartlyDelivered)
        assert ((), (0, 1)) == (outcome.for_batch(3).retry, outcome.for_batch(3).reject)
        assert "404 document_missing_exception: [5]: document missing (item 0)" in outcome.detail

    def test_errors_false_is_delivered_whatever_the_items(self) -> None:
        """`errors: false`: every operation succeeded (filter_path=errors leaves no items)."""
        fmt = get_format("elasticsearch")
        assert DELIVERED == fmt.interpret(200, b'{"errors":false}')
        assert DELIVERED == fmt.interpret(200, reply(item(201), item(200)))

    @pytest.mark.parametrize(
        "body",
        [
            b"",
            b"<html>ok</html>",
            b"{}",
            b"[]",
            b'{"errors":true}',
            # filter_path=items.*.error drops the items that succeeded: positions are lost
            b'{"items":[{"create":{"error":{"type":"x","reason":"y"}}}]}',
            b'{"errors":true,"items":[{"create":{"status":"400"}}]}',
        ],
    )
    def test_a_reply_that_cannot_be_matched_to_the_request_retries_the_batch(
        self, body: bytes
    ) -> None:
        """Nothing unread is ever taken as delivered; `create` makes the resend harmless."""
        outcome = get_format("elasticsearch").interpret(200, body)
        assert isinstance(outcome, RetryLater)
        assert "filter_path" in outcome.reason

    def test_every_item_refused_for_now_backs_off_as_a_whole(self) -> None:
        """All items 429/5xx: a RetryLater (the engine's backoff), not a partial success."""
        outcome = get_format("elasticsearch").interpret(
            200, reply(item(429, REJECTED), item(503, SHARD_DOWN))
        )
        assert isinstance(outcome, RetryLater)
        assert 503 == outcome.status

    def test_a_cut_reply_settles_whole_items_and_retries_the_rest(self) -> None:
        """A reply cut mid-item: items read whole are settled, every later one is retried."""
        whole = reply(item(201), item(400, MAPPING), item(429, REJECTED), item(201), item(201))
        fourth = whole.index(b'{"create": {"status": 201}}', whole.index(b"429"))
        cut = whole[: fourth + 10]  # inside the 4th item
        outcome = get_format("elasticsearch").interpret(200, cut)
        assert isinstance(outcome, PartlyDelivered)
        settled = outcome.for_batch(5)
        assert ((2, 3, 4), (1,)) == (settled.retry, settled.reject)

    def test_a_reply_over_the_transports_read_limit_is_never_misread(
        self, mock: responses.RequestsMock, es_sink: Callable[..., HttpSink], tmp_path: Path
    ) -> None:
        """A real reply larger than REPLY_MAX_BYTES (long reasons on every item): items whose
        status was read are dead-lettered, the rest sent again, none taken as delivered."""
        long_reason = {"type": "mapper_parsing_exception", "reason": "x" * 4000}
        count = 400  # ~1.6 MB of reply

        def decide(call: int, position: int, doc: dict[str, Any]) -> Any:
            return (400, long_reason) if call == 0 else None

        cluster = FakeCluster(decide)
        mock.add_callback(responses.POST, ANY_ES, callback=cluster)
        sink = es_sink(batch_max_events=count, batch_max_bytes=10**7, batch_timeout=5.0)
        lines = [es_line() for _ in range(count)]
        submit_all(sink, lines)
        ids = [json.loads(line)["event_id"] for line in lines]
        read = [json.loads(r["line"])["event_id"] for r in dead_letters(tmp_path)]
        whole_items = REPLY_MAX_BYTES // len(json.dumps(item(400, long_reason)))
        assert whole_items - 1 <= len(read) <= whole_items
        assert ids[: len(read)] == read
        assert ids[len(read) :] == cluster.sent_ids(1)
        assert ids[len(read) :] == cluster.ids()
        assert (count - len(read), len(read)) == (
            sink.stats()["delivered"],
            sink.stats()["dead_lettered"],
        )


class TestLimits:
    def test_batches_stay_within_500_events_and_10_mib(
        self, mock: responses.RequestsMock, es_sink: Callable[..., HttpSink]
    ) -> None:
        """Many large events: every request within the limits, every event indexed once."""
        cluster = FakeCluster()
        mock.add_callback(responses.POST, ANY_ES, callback=cluster)
        big = 64 * 1024 * 1024
        sink = es_sink(
            batch_max_events=5000, batch_max_bytes=big, queue_max_bytes=big, batch_timeout=2.0
        )
        lines = [es_line(blob="y" * 30_000) for _ in range(700)]  # 21 MB, > 2 x 10 MiB
        lines += [es_line() for _ in range(600)]
        submit_all(sink, lines)
        sizes = [len(unzipped(r)) for r in cluster.requests]
        counts = [len(pairs(unzipped(r))) for r in cluster.requests]
        assert max(sizes) <= 10 * 1024 * 1024
        assert max(counts) <= 500
        assert max(sizes) > 5 * 1024 * 1024  # near the limit, not far below it
        assert sorted(json.loads(line)["event_id"] for line in lines) == cluster.ids()

    def test_one_event_over_the_limit_is_dead_lettered_never_sent(
        self, mock: responses.RequestsMock, es_sink: Callable[..., HttpSink], tmp_path: Path
    ) -> None:
        """An event whose request alone exceeds 10 MiB: too_large, dead-lettered, not looped."""
        cluster = FakeCluster()
        mock.add_callback(responses.POST, ANY_ES, callback=cluster)
        sink = es_sink(batch_max_bytes=64 * 1024 * 1024, queue_max_bytes=64 * 1024 * 1024)
        huge, small = es_line(blob="z" * (10 * 1024 * 1024)), es_line()
        submit_all(sink, [huge, small])
        assert [json.loads(small)["event_id"]] == cluster.ids()
        assert [json.loads(huge)["event_id"]] == [
            json.loads(r["line"])["event_id"] for r in dead_letters(tmp_path)
        ]
        assert 1 == sink.stats()["dropped_by_reason"].get("too_large")


def sink_config(options: Any) -> dict[str, Any]:
    sink = {"type": "http", "url": ES, "format": "elasticsearch", "format_options": options}
    return {"BRIDGE_SINKS": [sink]}


class TestOptions:
    def test_options_from_the_configuration(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """format_options (with ${ENV}) become the format's options."""
        monkeypatch.setenv("APP", "shop")
        monkeypatch.setenv("PIPE", "geoip")
        options = {"index": "logs-${APP}-%Y.%m", "pipeline": "${PIPE}"}
        settings = load_settings(sink_config(options), {})
        assert ElasticsearchOptions("logs-shop-%Y.%m", "geoip") == settings.sinks[0].format_options

    @pytest.mark.parametrize(
        ("options", "key"),
        [
            ({"indx": "logs"}, "indx"),
            ({"index": "Logs-Flask"}, "index"),
            ({"index": "logs flask"}, "index"),
            ({"index": "_logs"}, "index"),
            ({"index": "logs-%Y-%M"}, "index"),
            ({"index": ""}, "index"),
            ({"index": 3}, "index"),
            ({"pipeline": " "}, "pipeline"),
        ],
    )
    def test_bad_options_name_their_key(self, options: dict[str, Any], key: str) -> None:
        """An unknown key or a bad value: ConfigError naming sinks[0].format_options.<key>."""
        with pytest.raises(ConfigError) as caught:
            load_settings(sink_config(options), {})
        assert f"sinks[0].format_options.{key}" == caught.value.key


class TestEndToEnd:
    def test_events_reach_the_index_once_through_a_failure(
        self, es_sink: Callable[..., HttpSink]
    ) -> None:
        """Against the local collector, failing once (503): the cluster's view, built from
        what arrived with create semantics, holds every event once, with its @timestamp."""
        with Collector() as collector:
            collector.plan(Reply(503))
            collector.always(Reply(200, {"Content-Type": "application/json"}, b'{"errors":false}'))
            sink = es_sink(f"http://127.0.0.1:{collector.port}", batch_max_events=50)
            lines = [es_line(n=n) for n in range(120)]
            submit_all(sink, lines)
            received = collector.requests()
        assert all(r.path == f"/_bulk?filter_path={FILTER_PATH}" for r in received)
        assert 503 == received[0].reply.status
        index: dict[str, dict[str, Any]] = {}
        for request in received:
            for action, doc in pairs(request.body):
                if request.recorded:
                    index.setdefault(action["create"]["_id"], doc)
        assert set(pairs(received[0].body)[0][0]["create"]) == {"_index", "_id"}
        assert sorted(json.loads(line)["event_id"] for line in lines) == sorted(index)
        assert all(doc["@timestamp"] == doc["timestamp"] == STAMP for doc in index.values())
        assert (120, 0) == (sink.stats()["delivered"], sink.stats()["dead_lettered"])


class TestUnreadItems:
    def test_items_past_a_cut_reply_are_retried_by_the_transport(self) -> None:
        """PartlyDelivered.for_batch: indices past the batch dropped, unread ones retried."""
        outcome = PartlyDelivered(retry=(1, 9), reject=(0, 8), status=400, unread_from=3)
        assert PartlyDelivered((1, 3, 4), (0,), 400) == outcome.for_batch(5)
        assert PartlyDelivered((1,), (0,), 400) == PartlyDelivered((1,), (0,), 400).for_batch(2)

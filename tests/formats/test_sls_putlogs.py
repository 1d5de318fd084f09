"""`sls_putlogs` (signed SLS PutLogs) on the wire, with the official aliyun-log-python-sdk as
the oracle: its LogGroup protobuf parses our bodies (byte for byte), its signer gives our
Authorization, its own put_logs sends the same signed headers; SLS replies, limits, options."""

from __future__ import annotations

import hashlib
import json
import re
import time
import zlib
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
import responses
from aliyun.log import LogClient, LogItem, PutLogsRequest
from aliyun.log.auth import AuthV1
from aliyun.log.credentials import StaticCredentialsProvider
from aliyun.log.log_logs_pb2 import LogGroup
from aliyun.log.proto import LogGroupRaw
from aliyun.log.util import Util

from bridge.config import load_settings
from bridge.errors import ConfigError
from bridge.formats.sls_putlogs import SlsPutLogsFormat, SlsPutLogsOptions, signature
from bridge.sinks.http import HttpSink
from tests.collector import Collector, Reply
from tests.delivery.helpers import event_line, fast_settings, ids_of
from tests.formats.conftest import dead_ids

ENDPOINT = "https://my-project.cn-hangzhou.log.aliyuncs.com"
RESOURCE = "/logstores/app-events/shards/lb"
URL = ENDPOINT + RESOURCE
AK_ID, AK_SECRET, TOKEN = "LTAI5tTestKeyId", "t0p-s3cret-AccessKey", "CAIS-sts-token"
OPTIONS = {"logstore": "app-events", "access_key_id": AK_ID, "access_key_secret": AK_SECRET}
# Error replies as SLS documents them: {"errorCode": ..., "errorMessage": ...}.
QUOTA = b'{"errorCode":"WriteQuotaExceed","errorMessage":"Project write quota exceed: qps: 1000"}'
SHARD_QUOTA = b'{"errorCode":"ShardWriteQuotaExceed","errorMessage":"shard write quota exceed"}'
BAD_SIGNATURE = b'{"errorCode":"SignatureNotMatch","errorMessage":"Signature abc not matched."}'
UNAUTHORIZED = b'{"errorCode":"Unauthorized","errorMessage":"The AccessKeyId is unauthorized."}'
INVALID = b'{"errorCode":"PostBodyInvalid","errorMessage":"Invalid log content"}'
SERVER = b'{"errorCode":"InternalServerError","errorMessage":"internal server error"}'
LINE_A = (
    b'{"timestamp":"2026-11-25T08:30:00.123456Z","level":"info","event":"user.login",'
    b'"event_id":"ev-a","host.name":"web-1","user.id":7,"ok":true,"ctx":{"path":"/login"}}\n'
)
LINE_B = b'{"timestamp":"2026-11-25T08:30:01.000001Z","event":"x","event_id":"ev-b","n":1.5}\n'
SIGNED = ("Authorization", "Content-MD5", "Content-Type", "Date", "Content-Length")


def putlogs_sink(url: str = ENDPOINT, **overrides: Any) -> HttpSink:
    overrides.setdefault("format_options", OPTIONS)
    return HttpSink(fast_settings(url, format="sls_putlogs", **overrides))


def sdk_authorization(headers: Any, body: bytes, token: str = "") -> str:
    """What the SDK's signer (AuthV1.sign_request) makes of a request with these headers."""
    wanted = {k: v for k, v in headers.items() if k.lower().startswith(("x-log-", "x-acs-"))}
    wanted.pop("x-log-date", None)  # the SDK adds it after signing
    wanted["Content-Type"] = headers["Content-Type"]
    date = headers["Date"]
    with patch.object(AuthV1, "_getGMT", staticmethod(lambda: date)):  # the request's Date
        AuthV1(StaticCredentialsProvider(AK_ID, AK_SECRET, token)).sign_request(
            "POST", RESOURCE, {}, wanted, body
        )
    assert wanted["Content-MD5"] == headers["Content-MD5"]
    return str(wanted["Authorization"])


def group_of(body: bytes, headers: Any) -> Any:
    raw = zlib.decompress(body) if headers.get("x-log-compresstype") == "deflate" else body
    assert str(len(raw)) == headers["x-log-bodyrawsize"]
    group = LogGroup()
    group.ParseFromString(raw)
    return group


def ids_in(group: Any) -> list[str]:
    return [c.Value for log in group.Logs for c in log.Contents if c.Key == "event_id"]


class TestPutLogsWire:
    def test_golden_request(self, mock: responses.RequestsMock, sinks: list[HttpSink]) -> None:
        """POST /logstores/{logstore}/shards/lb, deflated protobuf LogGroup, every SLS header,
        signed as the SDK signs; the SDK's LogGroup reads the events' times and fields."""
        mock.add(responses.POST, URL, status=200)
        options = {**OPTIONS, "topic": "shop", "tags": {"env": "prod"}}
        sink = putlogs_sink(format_options=options)
        sinks.append(sink)
        before = time.time()
        sink.submit(LINE_A)
        sink.submit(LINE_B)
        assert sink.flush(10.0)
        (call,) = mock.calls
        request, headers = call.request, call.request.headers
        assert ("POST", URL) == (request.method, request.url)
        assert ("application/x-protobuf", "0.6.0", "deflate", "hmac-sha1") == (
            headers["Content-Type"],
            headers["x-log-apiversion"],
            headers["x-log-compresstype"],
            headers["x-log-signaturemethod"],
        )
        assert hashlib.md5(request.body).hexdigest().upper() == headers["Content-MD5"]
        assert str(len(request.body)) == headers["Content-Length"]
        assert "Content-Encoding" not in headers
        assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", headers["Date"])
        assert before - 1 <= parsedate_to_datetime(headers["Date"]).timestamp() <= time.time()
        assert headers["Date"] == headers["x-log-date"]
        assert sdk_authorization(headers, request.body) == headers["Authorization"]
        assert headers["Authorization"].startswith(f"LOG {AK_ID}:")
        group = group_of(request.body, headers)
        assert ("shop", "web-1", [("env", "prod")]) == (
            group.Topic,
            group.Source,
            [(t.Key, t.Value) for t in group.LogTags],
        )
        assert [(1795595400, 123456000), (1795595401, 1000)] == [
            (log.Time, log.Time_ns) for log in group.Logs
        ]
        assert [
            ("timestamp", "2026-11-25T08:30:00.123456Z"),
            ("level", "info"),
            ("event", "user.login"),
            ("event_id", "ev-a"),
            ("host.name", "web-1"),
            ("user.id", "7"),
            ("ok", "true"),
            ("ctx", '{"path":"/login"}'),
        ] == [(c.Key, c.Value) for c in group.Logs[0].Contents]
        assert [("n", "1.5")] == [(c.Key, c.Value) for c in group.Logs[1].Contents][-1:]

    def test_body_is_byte_for_byte_the_sdks_log_group(self) -> None:
        """The SDK's put_logs builds LogGroupRaw the same way: the same bytes come out."""
        fmt = SlsPutLogsFormat(
            SlsPutLogsOptions(**OPTIONS, topic="t", source="src", tags={"a": "1"}, compress=False)
        )
        ours = fmt.encode([LINE_A, LINE_B]).body
        group = LogGroupRaw()
        group.Topic, group.Source = "t", "src"
        for line in (LINE_A, LINE_B):
            event = json.loads(line)
            log = group.Logs.add()
            log.Time, log.Time_ns = {"ev-a": (1795595400, 123456000), "ev-b": (1795595401, 1000)}[
                event["event_id"]
            ]
            for key, value in event.items():
                content = log.Contents.add()
                content.Key = key
                text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
                content.Value = text.encode()
        tag = group.LogTags.add()
        tag.Key, tag.Value = "a", "1"
        assert group.SerializeToString() == ours

    def test_a_time_no_uint32_holds_is_the_send_time_not_a_failed_batch(self) -> None:
        """Before 1970 or after 2106 (`Time` is a uint32 of seconds): the log carries the send
        time, its `timestamp` field as it was, and the batch goes out whole."""
        stamps = [
            "0001-01-01T00:00:00+00:00",
            "1969-12-31T23:59:59.000000Z",
            "2200-01-01T00:00:00Z",
        ]
        lines = [LINE_A.replace(b"2026-11-25T08:30:00.123456Z", s.encode()) for s in stamps]
        before = int(time.time())
        payload = SlsPutLogsFormat(SlsPutLogsOptions(**OPTIONS)).encode([*lines, LINE_B])
        group = group_of(payload.body, payload.headers)
        assert [log.Time for log in group.Logs][-1:] == [1795595401]
        assert all(before <= log.Time <= time.time() for log in group.Logs[:3])
        assert stamps == [
            c.Value for log in group.Logs[:3] for c in log.Contents if c.Key == "timestamp"
        ]

    def test_the_sdks_own_put_logs_sends_the_same_signed_headers(
        self, mock: responses.RequestsMock, sinks: list[HttpSink]
    ) -> None:
        """aliyun-log-python-sdk's put_logs, intercepted: the same signing headers as ours, and
        our signature function gives the SDK's Authorization for the SDK's request."""
        mock.add(responses.POST, re.compile(re.escape(ENDPOINT) + r"(:443)?" + RESOURCE))
        client = LogClient("https://cn-hangzhou.log.aliyuncs.com", AK_ID, AK_SECRET)
        item = LogItem(timestamp=1795595400)
        item.set_contents([("event_id", "ev-sdk")])
        client.put_logs(PutLogsRequest("my-project", "app-events", "", "src", [item]))
        sink = putlogs_sink()
        sinks.append(sink)
        sink.submit(LINE_B)
        assert sink.flush(10.0)
        sdk, ours = (c.request.headers for c in mock.calls)

        def signing(headers: Any) -> set[str]:
            names = {k for k in headers if k.lower().startswith(("x-log-", "x-acs-"))}
            return names | {k for k in SIGNED if k in headers}

        assert signing(sdk) == signing(ours)
        mine = {k: v for k, v in sdk.items() if k.startswith(("x-log-", "x-acs-", "Content-MD5"))}
        mine = {**mine, "Date": sdk["Date"]}
        mine.pop("x-log-date")
        expected = f"LOG {AK_ID}:" + signature(AK_SECRET, mine, sdk["Content-Type"], RESOURCE)
        assert expected == sdk["Authorization"]

    def test_a_bodyless_get_is_signed_as_the_sdk_signs_it(self) -> None:
        """`signature(..., verb="GET")` (a `flask bridge check` probe of the logstore) agrees
        with the SDK's signer for a request without body or Content-Type."""
        date = "Mon, 07 Dec 2026 00:52:03 GMT"
        headers = {"x-log-apiversion": "0.6.0", "x-log-bodyrawsize": "0"}
        with patch.object(AuthV1, "_getGMT", staticmethod(lambda: date)):
            AuthV1(StaticCredentialsProvider(AK_ID, AK_SECRET, "")).sign_request(
                "GET", "/logstores/app-events", {}, headers, None
            )
        ours = {k: v for k, v in headers.items() if k not in ("Authorization", "x-log-date")}
        mine = signature(AK_SECRET, ours, "", "/logstores/app-events", verb="GET")
        assert headers["Authorization"] == f"LOG {AK_ID}:{mine}"

    def test_an_sts_token_is_sent_and_signed(
        self, mock: responses.RequestsMock, sinks: list[HttpSink]
    ) -> None:
        """security_token: `x-acs-security-token`, inside the signature (SDK oracle)."""
        mock.add(responses.POST, URL, status=200)
        sink = putlogs_sink(format_options={**OPTIONS, "security_token": TOKEN})
        sinks.append(sink)
        sink.submit(LINE_B)
        assert sink.flush(10.0)
        (call,) = mock.calls
        headers = call.request.headers
        assert TOKEN == headers["x-acs-security-token"]
        assert sdk_authorization(headers, call.request.body, TOKEN) == headers["Authorization"]

    def test_secrets_never_reach_dead_letters_or_stats(
        self, mock: responses.RequestsMock, sinks: list[HttpSink], tmp_path: Path
    ) -> None:
        """A reply echoing the secret key: scrubbed in the dead letter and the stats."""
        echo = b'{"errorCode":"SignatureNotMatch","errorMessage":"key ' + AK_SECRET.encode() + b'"}'
        mock.add(responses.POST, URL, status=403, body=echo)
        dead = tmp_path / "dead.jsonl"
        sink = putlogs_sink(dead_letter_path=dead)
        sinks.append(sink)
        sink.submit(LINE_B)
        assert sink.flush(10.0)
        assert ["ev-b"] == dead_ids(dead)
        assert AK_SECRET not in dead.read_text() + json.dumps(sink.stats())


class TestPutLogsReplies:
    @pytest.mark.parametrize(
        ("status", "reply"),
        [(403, QUOTA), (403, SHARD_QUOTA), (500, SERVER)],
        ids=["403-quota", "403-shard-quota", "500"],
    )
    def test_quota_and_server_errors_are_retried_and_re_signed(
        self,
        mock: responses.RequestsMock,
        sinks: list[HttpSink],
        tmp_path: Path,
        status: int,
        reply: bytes,
    ) -> None:
        """A quota 403 (or a 500) is backed off and sent again, freshly signed; none is lost."""
        mock.add(responses.POST, URL, status=status, body=reply)
        mock.add(responses.POST, URL, status=200)
        dead = tmp_path / "dead.jsonl"
        sink = putlogs_sink(dead_letter_path=dead)
        sinks.append(sink)
        lines = [event_line(), event_line()]
        for line in lines:
            sink.submit(line)
        assert sink.flush(10.0)
        assert [ids_of(lines)] * 2 == [
            ids_in(group_of(c.request.body, c.request.headers)) for c in mock.calls
        ]
        for call in mock.calls:
            headers = call.request.headers
            assert sdk_authorization(headers, call.request.body) == headers["Authorization"]
        stats = sink.stats()
        assert (2, 2, 0, []) == (  # retried: events sent again
            stats["delivered"],
            stats["retried"],
            stats["dead_lettered"],
            dead_ids(dead),
        )

    @pytest.mark.parametrize(
        ("status", "reply"),
        [(403, BAD_SIGNATURE), (401, UNAUTHORIZED), (400, INVALID)],
        ids=["403-signature", "401", "400"],
    )
    def test_other_refusals_dead_letter_the_whole_batch(
        self,
        mock: responses.RequestsMock,
        sinks: list[HttpSink],
        tmp_path: Path,
        status: int,
        reply: bytes,
    ) -> None:
        """SignatureNotMatch, Unauthorized, a bad entry: the batch is dead-lettered, with the
        reply, by event_id (one bad entry fails the whole request)."""
        mock.add(responses.POST, URL, status=status, body=reply)
        dead = tmp_path / "dead.jsonl"
        sink = putlogs_sink(dead_letter_path=dead)
        sinks.append(sink)
        lines = [event_line(), event_line(), event_line()]
        for line in lines:
            sink.submit(line)
        assert sink.flush(10.0)
        records = [json.loads(r) for r in dead.read_text().splitlines()]
        assert ids_of(lines) == dead_ids(dead)
        assert [(status, reply.decode())] * 3 == [(r["status"], r["response"]) for r in records]
        assert (1, 0, {"rejected_4xx": 3}) == (
            len(mock.calls),
            sink.stats()["delivered"],
            sink.stats()["dropped_by_reason"],
        )


class TestPutLogsLimits:
    def test_requests_hold_at_most_4096_logs(
        self, mock: responses.RequestsMock, sinks: list[HttpSink]
    ) -> None:
        """A sink batching 10000 events still sends at most 4096 logs per LogGroup."""
        mock.add(responses.POST, URL, status=200)
        sink = putlogs_sink(batch_max_events=10_000, batch_max_bytes=64 << 20, batch_timeout=0.5)
        sinks.append(sink)
        lines = [event_line() for _ in range(5000)]
        for line in lines:
            sink.submit(line)
        assert sink.flush(30.0)
        groups = [group_of(c.request.body, c.request.headers) for c in mock.calls]
        assert 5000 == sum(len(g.Logs) for g in groups)
        assert max(len(g.Logs) for g in groups) <= 4096

    def test_log_groups_stay_within_5_mib_raw(
        self, mock: responses.RequestsMock, sinks: list[HttpSink]
    ) -> None:
        """Events of ~1.2 MiB (deflating to almost nothing) batched 16 MiB at a time: every
        LogGroup within 5 MiB before compression, every event sent."""
        mock.add(responses.POST, URL, status=200)
        sink = putlogs_sink(batch_max_bytes=16 << 20, batch_timeout=0.5)
        sinks.append(sink)
        lines = [event_line(blob="z" * (1200 << 10)) for _ in range(8)]
        for line in lines:
            sink.submit(line)
        assert sink.flush(30.0)
        sizes = [int(c.request.headers["x-log-bodyrawsize"]) for c in mock.calls]
        assert max(sizes) <= 5 * 1024 * 1024
        sent = [i for c in mock.calls for i in ids_in(group_of(c.request.body, c.request.headers))]
        assert sorted(ids_of(lines)) == sorted(sent)

    def test_one_event_over_5_mib_is_dead_lettered_unsent(
        self, mock: responses.RequestsMock, sinks: list[HttpSink], tmp_path: Path
    ) -> None:
        """An event larger than a LogGroup may be: dead-lettered too_large, never sent."""
        mock.add(responses.POST, URL, status=200)
        dead = tmp_path / "dead.jsonl"
        sink = putlogs_sink(dead_letter_path=dead, batch_max_bytes=16 << 20)
        sinks.append(sink)
        big, small = event_line(blob="y" * (5 << 20)), event_line()
        sink.submit(big)
        sink.submit(small)
        assert sink.flush(20.0)
        assert ids_of([big]) == dead_ids(dead)
        sent = [i for c in mock.calls for i in ids_in(group_of(c.request.body, c.request.headers))]
        assert ids_of([small]) == sent
        assert {"too_large": 1} == sink.stats()["dropped_by_reason"]


class TestPutLogsOptions:
    def settings(self, options: Any) -> Any:
        sink = {"type": "http", "url": ENDPOINT, "format": "sls_putlogs", "format_options": options}
        return load_settings({"BRIDGE_SINKS": [sink]}, {})

    def test_keys_come_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """`${ENV}` in the keys is interpolated; the secret is one of the format's secrets."""
        monkeypatch.setenv("SLS_ACCESS_KEY_ID", AK_ID)
        monkeypatch.setenv("SLS_ACCESS_KEY_SECRET", AK_SECRET)
        options = {
            "logstore": "app-events",
            "access_key_id": "${SLS_ACCESS_KEY_ID}",
            "access_key_secret": "${SLS_ACCESS_KEY_SECRET}",
        }
        built = self.settings(options).sinks[0].format_options
        assert SlsPutLogsOptions(**OPTIONS) == built
        assert [AK_SECRET] == list(SlsPutLogsFormat(built).secrets())

    @pytest.mark.parametrize(
        ("options", "key"),
        [
            ({**OPTIONS, "acess_key_id": "x"}, "acess_key_id"),
            ({"logstore": "app-events", "access_key_id": AK_ID}, "access_key_secret"),
            ({**OPTIONS, "logstore": ""}, "logstore"),
            ({**OPTIONS, "access_key_secret": ["s3cr3t-in-a-list"]}, "access_key_secret"),
            ({**OPTIONS, "access_key_id": AK_ID + "\n"}, "access_key_id"),
            ({**OPTIONS, "access_key_secret": "s3cr3t-in-a-list\n"}, "access_key_secret"),
            ({**OPTIONS, "security_token": "s3cr3t-in-a-list\r\nX-Evil: 1"}, "security_token"),
        ],
        ids=[
            "unknown",
            "missing-secret",
            "empty-logstore",
            "secret-not-a-string",
            "id-with-a-newline",
            "secret-with-a-newline",
            "token-with-a-header-break",
        ],
    )
    def test_mistakes_name_the_option_and_hide_secrets(
        self, options: dict[str, Any], key: str
    ) -> None:
        """ConfigError naming sinks[0].format_options.<key>; a secret value is never shown."""
        with pytest.raises(ConfigError) as caught:
            self.settings(options)
        assert [f"sinks[0].format_options.{key}"] == [p.key for p in caught.value.problems]
        assert "s3cr3t-in-a-list" not in str(caught.value)


def stored_logs(headers: dict[str, str], body: bytes) -> list[dict[str, Any]]:
    """What SLS would do with a PutLogs request: check its MD5 and signature, read the
    LogGroup, and store each log with its time (the SDK sends x-log-date unsigned)."""
    assert hashlib.md5(body).hexdigest().upper() == headers["content-md5"]
    signed = {k: v for k, v in headers.items() if k != "x-log-date"}
    text = f"POST\n{headers['content-md5']}\n{headers['content-type']}\n{headers['date']}\n"
    text += Util.canonicalized_log_headers(signed) + RESOURCE
    assert f"LOG {AK_ID}:{Util.hmac_sha1(text, AK_SECRET)}" == headers["authorization"]
    group = group_of(body, headers)
    return [
        {"__time__": log.Time, "__topic__": group.Topic, **{c.Key: c.Value for c in log.Contents}}
        for log in group.Logs
    ]


@pytest.mark.slow
class TestPutLogsEndToEnd:
    def test_events_arrive_signed_through_a_quota_error(self) -> None:
        """A real collector checking signatures, answering 403 WriteQuotaExceed then 200:
        every event arrives once, at its own capture time."""
        with Collector(decode=stored_logs) as collector:
            collector.plan(Reply(403, {"Content-Type": "application/json"}, QUOTA))
            url = collector.url.replace("/ingest", "")
            sink = putlogs_sink(url, format_options={**OPTIONS, "topic": "e2e"})
            try:
                moment = "2026-11-25T08:30:00.000001Z"
                lines = [event_line(n=i, timestamp=moment) for i in range(20)]
                for line in lines:
                    sink.submit(line)
                assert sink.flush(20.0)
            finally:
                sink.close(1.0)
            assert sorted(ids_of(lines)) == sorted(collector.event_ids())
            assert 2 == len(collector.requests())
            stored = collector.events()
            assert {(1795595400, "e2e", moment)} == {
                (e["__time__"], e["__topic__"], e["timestamp"]) for e in stored
            }
            assert sorted(str(i) for i in range(20)) == sorted(e["n"] for e in stored)

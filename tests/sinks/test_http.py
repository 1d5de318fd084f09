"""The http sink on the wire (`responses`): exact bytes, headers, gzip, TLS settings, status
handling, secrets. Delivery against a real collector is in tests/delivery/test_http_delivery.py.
"""

from __future__ import annotations

import gzip
import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from bridge.errors import ConfigError
from bridge.formats import get_format
from bridge.outcome import Rejected, RetryLater, Split
from bridge.sinks.http import HttpSink
from bridge.sinks.httptransport import HttpTransport
from tests.contract import STATS_COUNTERS
from tests.delivery.helpers import event_line, fast_settings

URL = "http://collector.test:8686/ingest"
SECRET = "Bearer t0p-s3cret-value"
STATS_KEYS = set(STATS_COUNTERS)


def transport(**overrides: Any) -> HttpTransport:
    settings = fast_settings(URL, **overrides)
    return HttpTransport(settings, get_format(settings.format))


def sent(call: Any) -> bytes:
    body = call.request.body
    assert isinstance(body, bytes)
    return gzip.decompress(body) if call.request.headers.get("Content-Encoding") == "gzip" else body


class TestWireFormat:
    @pytest.mark.parametrize("use_gzip", [True, False], ids=["gzip", "plain"])
    @pytest.mark.parametrize(
        ("fmt", "content_type"),
        [("ndjson", "application/x-ndjson"), ("json_array", "application/json")],
    )
    def test_each_format_sends_exact_bytes_and_headers(
        self,
        mock: responses.RequestsMock,
        sinks: list[HttpSink],
        fmt: str,
        content_type: str,
        use_gzip: bool,
    ) -> None:
        """One batch: the format's exact body (gzipped when on), its content type, our headers."""
        mock.add(responses.POST, URL, status=200)
        sink = HttpSink(
            fast_settings(
                URL, format=fmt, gzip=use_gzip, headers={"Authorization": SECRET, "X-Tenant": "t1"}
            )
        )
        sinks.append(sink)
        lines = [event_line(n=n) for n in range(3)]
        for line in lines:
            assert sink.submit(line)
        assert sink.flush(10.0)
        assert 1 == len(mock.calls)
        request = mock.calls[0].request
        expected = get_format(fmt).encode(lines).body
        if use_gzip:
            assert request.body[:2] == b"\x1f\x8b"
            assert "gzip" == request.headers["Content-Encoding"]
        else:
            assert "Content-Encoding" not in request.headers
        assert expected == sent(mock.calls[0])
        assert content_type == request.headers["Content-Type"]
        assert (SECRET, "t1") == (request.headers["Authorization"], request.headers["X-Tenant"])
        assert request.headers["User-Agent"].startswith("flask-signal-bridge")

    def test_batches_reuse_one_session_with_the_configured_timeouts(
        self,
        mock: responses.RequestsMock,
        sinks: list[HttpSink],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Connect and read timeouts are passed on every request; TLS verification is on."""
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)  # else requests passes its path
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        mock.add(responses.POST, URL, status=204)
        sink = HttpSink(
            fast_settings(URL, timeout_connect=1.5, timeout_read=7.0, batch_max_events=2)
        )
        sinks.append(sink)
        for _ in range(4):
            sink.submit(event_line())
        assert sink.flush(10.0)
        assert 2 == len(mock.calls)
        for call in mock.calls:
            kwargs = call.request.req_kwargs
            assert ((1.5, 7.0), True) == (kwargs["timeout"], kwargs["verify"])


class TestEnvironment:
    def test_proxies_come_from_the_environment_once(
        self, mock: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """HTTP_PROXY is honoured (looked up when the sink is built, not per request)."""
        monkeypatch.setenv("HTTP_PROXY", "http://proxy.test:3128")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        mock.add(responses.POST, URL, status=200)
        sender = transport()
        try:
            sender.send([event_line()])
        finally:
            sender.close()
        assert "http://proxy.test:3128" == mock.calls[0].request.req_kwargs["proxies"]["http"]

    def test_requests_ca_bundle_is_honoured_when_no_ca_bundle_is_set(
        self, mock: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """verify=true and no ca_bundle: REQUESTS_CA_BUNDLE applies, as with requests itself."""
        bundle = tmp_path / "corp.pem"
        bundle.write_text("-----BEGIN CERTIFICATE-----\n")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
        mock.add(responses.POST, URL, status=200)
        sender = transport()
        try:
            sender.send([event_line()])
        finally:
            sender.close()
        assert str(bundle) == mock.calls[0].request.req_kwargs["verify"]


class TestTls:
    def test_ca_bundle_and_client_certificate_are_used(
        self, mock: responses.RequestsMock, tmp_path: Path
    ) -> None:
        """ca_bundle replaces the default trust store; client_cert/client_key are presented."""
        paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
        for path in paths.values():
            path.write_text("-----BEGIN CERTIFICATE-----\n")
        mock.add(responses.POST, "https://collector.test/ingest", status=200)
        tls = HttpTransport(
            fast_settings(
                "https://collector.test/ingest",
                ca_bundle=str(paths["ca"]),
                client_cert=str(paths["cert"]),
                client_key=str(paths["key"]),
            ),
            get_format("ndjson"),
        )
        try:
            tls.send([event_line()])
        finally:
            tls.close()
        kwargs = mock.calls[0].request.req_kwargs
        assert str(paths["ca"]) == kwargs["verify"]
        assert (str(paths["cert"]), str(paths["key"])) == kwargs["cert"]

    def test_verification_can_be_turned_off_explicitly(self, mock: responses.RequestsMock) -> None:
        """verify = false reaches requests (and is reported once, not per request)."""
        mock.add(responses.POST, URL, status=200)
        plain = transport(verify=False)
        try:
            plain.send([event_line()])
        finally:
            plain.close()
        assert mock.calls[0].request.req_kwargs["verify"] is False


class TestStatuses:
    @pytest.fixture
    def sender(self) -> Iterator[HttpTransport]:
        sender = transport()
        yield sender
        sender.close()

    @pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 507])
    def test_retryable_statuses(
        self, mock: responses.RequestsMock, sender: HttpTransport, status: int
    ) -> None:
        """408, 429 and 5xx are retried later, with the status."""
        mock.add(responses.POST, URL, status=status)
        outcome = sender.send([event_line()])
        assert isinstance(outcome, RetryLater)
        assert status == outcome.status

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
    def test_other_4xx_are_fatal(
        self, mock: responses.RequestsMock, sender: HttpTransport, status: int
    ) -> None:
        """Other 4xx are refused for good (413: split, the collector wants smaller requests)."""
        mock.add(responses.POST, URL, status=status, body="nope")
        outcome = sender.send([event_line()])
        assert isinstance(outcome, Split if status == 413 else Rejected)
        assert (status, "nope") == (outcome.status, outcome.body)

    @pytest.mark.parametrize(
        ("header", "expected"), [("3", 3.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)]
    )
    def test_retry_after_is_read(
        self, mock: responses.RequestsMock, sender: HttpTransport, header: str, expected: float
    ) -> None:
        """Retry-After in seconds or as an HTTP-date (here in the past: retry now)."""
        mock.add(responses.POST, URL, status=429, headers={"Retry-After": header})
        outcome = sender.send([event_line()])
        assert isinstance(outcome, RetryLater)
        assert expected == outcome.retry_after

    def test_redirects_are_not_followed(
        self, mock: responses.RequestsMock, sender: HttpTransport
    ) -> None:
        """A 3xx is refused with a clear message; the other host is never contacted."""
        mock.add(responses.POST, URL, status=307, headers={"Location": "https://evil.test/x"})
        mock.add(responses.POST, "https://evil.test/x", status=200)
        outcome = sender.send([event_line()])
        assert isinstance(outcome, Rejected)
        assert re.search(r"redirect to https://evil\.test not followed", outcome.reason)
        assert [URL] == [call.request.url for call in mock.calls]

    def test_connection_errors_are_retryable_and_name_only_the_origin(
        self, mock: responses.RequestsMock
    ) -> None:
        """A connection failure is retryable; its message has no path, query or credentials."""
        url = "http://user:pa55w0rd@collector.test:8686/in/T0KEN?key=abcdef"
        mock.add(
            responses.POST,
            url.replace("user:pa55w0rd@", ""),
            body=requests.ConnectionError(f"Max retries exceeded with url: {url}"),
        )
        sender = HttpTransport(fast_settings(url), get_format("ndjson"))
        try:
            outcome = sender.send([event_line()])
        finally:
            sender.close()
        assert isinstance(outcome, RetryLater)
        message = outcome.reason
        assert message.startswith("http://collector.test:8686: connection failed")
        for secret in ("pa55w0rd", "T0KEN", "abcdef", "user"):
            assert secret not in message


class TestSecrets:
    def test_header_values_never_reach_stats_stderr_or_dead_letters(
        self,
        mock: responses.RequestsMock,
        sinks: list[HttpSink],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A collector echoing the token in its 401 body: the token is scrubbed everywhere."""
        mock.add(responses.POST, URL, status=401, body=f"invalid credentials: {SECRET}")
        dead = tmp_path / "dead.jsonl"
        sink = HttpSink(
            fast_settings(
                URL, name="secret-sink", headers={"Authorization": SECRET}, dead_letter_path=dead
            )
        )
        sinks.append(sink)
        sink.submit(event_line())
        assert sink.flush(10.0)
        records = [json.loads(line) for line in dead.read_text().splitlines()]
        assert ["invalid credentials: [REDACTED]"] == [r["response"] for r in records]
        assert 0o600 == stat.S_IMODE(dead.stat().st_mode)
        everywhere = json.dumps(sink.stats()) + dead.read_text() + capsys.readouterr().err
        assert "t0p-s3cret" not in everywhere
        assert 1 == sink.stats()["dead_lettered"]


class TestDeadLetterPath:
    def test_with_a_spool_dead_letters_go_beside_it_by_default(
        self, mock: responses.RequestsMock, sinks: list[HttpSink], tmp_path: Path
    ) -> None:
        """No dead_letter_path but a spool_dir: `<spool_dir>/dead-letter.jsonl`, 0600."""
        mock.add(responses.POST, URL, status=400, body="bad event")
        sink = HttpSink(fast_settings(URL, spool_dir=tmp_path / "spool"))
        sinks.append(sink)
        line = event_line()
        sink.submit(line)
        assert sink.flush(10.0)
        path = tmp_path / "spool" / "dead-letter.jsonl"
        assert [line.decode().rstrip("\n")] == [
            json.loads(x)["line"] for x in path.read_text().splitlines()
        ]
        assert 0o600 == stat.S_IMODE(path.stat().st_mode)
        assert (1, 0) == (sink.stats()["dead_lettered"], sink.stats()["queue_depth"])


class TestConstruction:
    def test_an_unimplemented_format_fails_at_construction(self) -> None:
        """A format no module implements (settings built in code) is a ConfigError naming the
        key and the implemented ones."""
        with pytest.raises(ConfigError) as caught:
            HttpSink(fast_settings(URL, format="gelf"))
        assert "format" == caught.value.key
        assert "ndjson" in str(caught.value)

    def test_errors_name_the_sink_table_when_told_which(self) -> None:
        """config_key="sinks[2]" makes the key sinks[2].format, as init_app reports keys."""
        with pytest.raises(ConfigError) as caught:
            HttpSink(fast_settings(URL, format="gelf"), config_key="sinks[2]")
        assert "sinks[2].format" == caught.value.key

    @pytest.mark.parametrize("url", ["ftp://collector.test/", "collector.test:8686", "http://"])
    def test_a_url_that_is_not_http_fails(self, url: str) -> None:
        """Only http:// and https:// URLs with a host are accepted."""
        with pytest.raises(ConfigError) as caught:
            HttpSink(fast_settings(url))
        assert "url" == caught.value.key

    def test_missing_tls_files_fail_at_construction(self, tmp_path: Path) -> None:
        """A ca_bundle that does not exist is a ConfigError, not a failure at send time."""
        with pytest.raises(ConfigError) as caught:
            HttpSink(fast_settings(URL, ca_bundle=str(tmp_path / "missing.pem")))
        assert "ca_bundle" == caught.value.key

    def test_a_client_key_needs_a_client_cert(self, tmp_path: Path) -> None:
        """client_key alone is a ConfigError."""
        key = tmp_path / "key.pem"
        key.write_text("k")
        with pytest.raises(ConfigError) as caught:
            HttpSink(fast_settings(URL, client_key=str(key)))
        assert "client_key" == caught.value.key

    def test_an_unusable_spool_dir_fails_at_construction(self, tmp_path: Path) -> None:
        """A spool_dir that is a file is a ConfigError naming spool_dir."""
        blocker = tmp_path / "file"
        blocker.write_text("")
        with pytest.raises(ConfigError) as caught:
            HttpSink(fast_settings(URL, spool_dir=blocker / "spool"))
        assert "spool_dir" == caught.value.key

    def test_stats_has_every_documented_counter(self, sinks: list[HttpSink]) -> None:
        """stats() carries the documented counters plus the sink type."""
        sink = HttpSink(fast_settings(URL))
        sinks.append(sink)
        snapshot = sink.stats()
        assert STATS_KEYS <= set(snapshot)
        assert ("http", "http://collector.test:8686") == (snapshot["type"], snapshot["collector"])

    def test_the_spool_directory_is_owner_only(self, tmp_path: Path, sinks: list[HttpSink]) -> None:
        """A spool directory the sink creates is 0700 (its files are 0600)."""
        sink = HttpSink(fast_settings(URL, spool_dir=tmp_path / "spool"))
        sinks.append(sink)
        sink.submit(event_line())
        assert 0o700 == stat.S_IMODE((tmp_path / "spool").stat().st_mode)
        assert {0o600} == {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "spool").iterdir()}

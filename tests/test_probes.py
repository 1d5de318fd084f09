"""Sink probes for `flask bridge check`: real directories and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from unittest.mock import patch

import pytest
import responses
import trustme

from bridge.config import HttpSinkSettings
from bridge.probes import probe_file, probe_http, shown_url


class _Handler(BaseHTTPRequestHandler):
    """Answers HEAD with 200 when the Authorization header is right, 401 otherwise."""

    def do_HEAD(self) -> None:
        good = self.headers.get("Authorization") == "Bearer good-token"
        self.send_response(200 if good else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def collector() -> Iterator[str]:
    """A one-thread HTTP server on an ephemeral 127.0.0.1 port; its URL."""
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="test-collector"
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/ingest?api_key=query-secret"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10.0)


@pytest.fixture
def tls_collector(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The same server behind TLS, with a certificate for 127.0.0.1 from a throwaway CA."""
    authority = trustme.CA()
    cert = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="test-tls-collector"
    )
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}/ingest", cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10.0)


def http_settings(url: str, token: str = "good-token") -> HttpSinkSettings:
    return HttpSinkSettings(
        type="http", name="http-0", url=url, headers={"Authorization": f"Bearer {token}"}
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestProbeFile:
    def test_writable_directory(self, tmp_path: Path) -> None:
        """An existing writable directory passes and nothing is left in it."""
        ok, message = probe_file(tmp_path / "events.jsonl")
        assert (True, f"directory {tmp_path} is writable") == (ok, message)
        assert [] == list(tmp_path.iterdir())

    def test_missing_directories_will_be_created(self, tmp_path: Path) -> None:
        """Missing parent directories are fine when the nearest existing one is writable."""
        ok, message = probe_file(tmp_path / "a" / "b" / "events.jsonl")
        assert ok is True
        assert message.endswith("(missing parts will be created)")
        assert not (tmp_path / "a").exists()

    def test_parent_is_a_file(self, tmp_path: Path) -> None:
        """A path under a regular file cannot be created."""
        (tmp_path / "plain").write_text("x")
        assert (False, f"{tmp_path / 'plain'} is not a directory") == probe_file(
            tmp_path / "plain" / "events.jsonl"
        )

    def test_path_is_a_directory(self, tmp_path: Path) -> None:
        """A directory where the file should be fails."""
        assert (False, f"{tmp_path} is a directory") == probe_file(tmp_path)


class TestProbeHttp:
    def test_reachable(self, collector: str) -> None:
        """A collector that answers HEAD is reachable."""
        assert (True, "reachable (HTTP 200 to HEAD)") == probe_http(http_settings(collector), 3.0)

    def test_credentials_refused(self, collector: str) -> None:
        """401 means the configured headers are wrong; the token is never shown."""
        ok, message = probe_http(http_settings(collector, token="bad-token"), 3.0)
        assert (False, "reachable, but HTTP 401: the collector refused the credentials") == (
            ok,
            message,
        )

    def test_untrusted_certificate(self, tls_collector: tuple[str, Path]) -> None:
        """A certificate from an unknown CA fails verification: said so, not "unreachable"."""
        ok, message = probe_http(http_settings(tls_collector[0]), 3.0)
        assert (
            False,
            "TLS certificate verification failed (unable to get local issuer certificate)",
        ) == (ok, message)

    def test_trusted_through_ca_bundle(self, tls_collector: tuple[str, Path]) -> None:
        """`ca_bundle` naming the certificate makes it trusted."""
        url, cert = tls_collector
        settings = HttpSinkSettings(
            type="http", name="h", url=url, ca_bundle=str(cert), headers=http_settings(url).headers
        )
        assert (True, "reachable (HTTP 200 to HEAD)") == probe_http(settings, 3.0)

    def test_verification_off_probes_without_warning(self, tls_collector: tuple[str, Path]) -> None:
        """verify = false is the user's choice: the probe passes and raises no warning."""
        url = tls_collector[0]
        settings = HttpSinkSettings(
            type="http", name="h", url=url, verify=False, headers=http_settings(url).headers
        )
        assert (True, "reachable (HTTP 200 to HEAD)") == probe_http(settings, 3.0)

    def test_connection_refused(self) -> None:
        """Nobody listening: unreachable, with the OS's reason and no URL secrets."""
        url = f"http://127.0.0.1:{closed_port()}/?api_key=query-secret"
        ok, message = probe_http(http_settings(url), 3.0)
        assert (False, "unreachable: Connection refused") == (ok, message)


class TestShownUrl:
    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            (
                "https://user:pw@logs.example:8443/v1/logs?token=x",
                "https://logs.example:8443/v1/logs",
            ),
            ("http://127.0.0.1/", "http://127.0.0.1/"),
        ],
    )
    def test_no_credentials_or_query(self, url: str, shown: str) -> None:
        """Credentials and the query string are dropped from displayed URLs."""
        assert shown == shown_url(url)


@pytest.fixture
def wire() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


def format_settings(url: str, fmt: str, **options: str) -> HttpSinkSettings:
    return HttpSinkSettings(type="http", name="p", url=url, format=fmt, format_options=options)


class TestFormatProbes:
    """Each wire format probes its platform with its own harmless request and credentials."""

    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            (
                400,
                (
                    True,
                    "reachable, credentials accepted (HTTP 400 to POST /services/collector/event)",
                ),
            ),
            (403, (False, "reachable, but HTTP 403: the collector refused the credentials")),
        ],
    )
    def test_splunk_posts_nothing_with_its_token(
        self, wire: responses.RequestsMock, status: int, expected: tuple[bool, str]
    ) -> None:
        """HEC: an empty POST with the token (400 "No data" proves it), nothing indexed."""
        wire.add(responses.POST, "https://hec.test:8088/services/collector/event", status=status)
        settings = format_settings("https://hec.test:8088", "splunk_hec", token="hec-t0ken")
        assert expected == probe_http(settings, 3.0)
        request = wire.calls[0].request
        assert ("Splunk hec-t0ken", b"") == (request.headers["Authorization"], request.body or b"")

    def test_datadog_validates_the_key_on_the_sites_api_host(
        self, wire: responses.RequestsMock
    ) -> None:
        """Datadog: GET /api/v1/validate on api.<site> with DD-API-KEY; 200 proves the key."""
        wire.add(responses.GET, "https://api.datadoghq.eu/api/v1/validate", status=200)
        settings = format_settings(
            "https://http-intake.logs.datadoghq.eu", "datadog", api_key="dd-k3y"
        )
        ok, message = probe_http(settings, 3.0)
        assert (True, "reachable, credentials accepted (HTTP 200 to GET /api/v1/validate)") == (
            ok,
            message,
        )
        assert "dd-k3y" == wire.calls[0].request.headers["DD-API-KEY"]

    def test_datadog_behind_a_proxy_gets_a_head(self, wire: responses.RequestsMock) -> None:
        """A URL that is not a Datadog intake (a relay): the generic HEAD to its path."""
        wire.add(responses.HEAD, "http://relay.test/dd", status=204)
        settings = format_settings("http://relay.test/dd", "datadog", api_key="dd-k3y")
        assert (True, "reachable (HTTP 204 to HEAD)") == probe_http(settings, 3.0)

    def test_bad_format_options_fail_the_probe_with_the_key(self) -> None:
        """Options the format refuses: the probe fails naming the option, no request sent."""
        ok, message = probe_http(format_settings("https://h.test", "splunk_hec", tok="x"), 3.0)
        assert not ok
        assert "format_options.tok" in message

    def test_elasticsearch_sends_an_empty_bulk_request(self, wire: responses.RequestsMock) -> None:
        """Elasticsearch: an empty bulk request (400 "no requests added" proves the key may use
        the bulk API; nothing is indexed), to the URL the sink sends to."""
        wire.add(responses.POST, "https://es.test:9200/_bulk", status=400)
        ok, message = probe_http(format_settings("https://es.test:9200", "elasticsearch"), 3.0)
        assert (True, "reachable, credentials accepted (HTTP 400 to POST /_bulk)") == (ok, message)
        request = wire.calls[0].request
        assert (b"\n", "application/x-ndjson") == (request.body, request.headers["Content-Type"])
        assert "filter_path=errors" in str(request.url)

    def test_loki_pushes_an_empty_stream_with_its_tenant(
        self, wire: responses.RequestsMock
    ) -> None:
        """Loki: a push with no values and the tenant header (204 proves them; nothing stored)."""
        wire.add(responses.POST, "http://loki.test:3100/loki/api/v1/push", status=204)
        settings = format_settings("http://loki.test:3100", "loki", tenant="shop")
        expected = (True, "reachable, credentials accepted (HTTP 204 to POST /loki/api/v1/push)")
        assert expected == probe_http(settings, 3.0)
        request = wire.calls[0].request
        assert "shop" == request.headers["X-Scope-OrgID"]
        assert [] == json.loads(request.body or b"{}")["streams"][0]["values"]

    @pytest.mark.parametrize(
        ("protocol", "content_type", "body"),
        [("protobuf", "application/x-protobuf", b""), ("json", "application/json", b"{}")],
    )
    def test_otlp_exports_an_empty_request(
        self, wire: responses.RequestsMock, protocol: str, content_type: str, body: bytes
    ) -> None:
        """OTLP: an empty ExportLogsServiceRequest in the configured encoding; 2xx proves it."""
        wire.add(responses.POST, "http://otel.test:4318/v1/logs", status=200)
        settings = format_settings("http://otel.test:4318", "otlp", protocol=protocol)
        expected = (True, "reachable, credentials accepted (HTTP 200 to POST /v1/logs)")
        assert expected == probe_http(settings, 3.0)
        request = wire.calls[0].request
        assert (body, content_type) == (request.body or b"", request.headers["Content-Type"])

    def test_sls_putlogs_reads_the_logstore_with_a_signed_get(
        self, wire: responses.RequestsMock
    ) -> None:
        """SLS PutLogs: a signed GET of the logstore (stores nothing), signed as the official
        SDK signs it; 200 proves the keys."""
        from aliyun.log.auth import AuthV1
        from aliyun.log.credentials import StaticCredentialsProvider

        wire.add(responses.GET, "https://shop.cn-hangzhou.log.aliyuncs.com/logstores/events")
        settings = format_settings(
            "https://shop.cn-hangzhou.log.aliyuncs.com",
            "sls_putlogs",
            logstore="events",
            access_key_id="ak-id",
            access_key_secret="ak-s3cret",
        )
        expected = (True, "reachable, credentials accepted (HTTP 200 to GET /logstores/events)")
        assert expected == probe_http(settings, 3.0)
        sent = wire.calls[0].request.headers
        headers = {k: v for k, v in sent.items() if k.lower().startswith("x-log-")}
        headers.pop("x-log-date", None)
        with patch.object(AuthV1, "_getGMT", staticmethod(lambda: sent["Date"])):
            AuthV1(StaticCredentialsProvider("ak-id", "ak-s3cret", "")).sign_request(
                "GET", "/logstores/events", {}, headers, None
            )
        assert headers["Authorization"] == sent["Authorization"]

    def test_a_probe_of_another_host_never_carries_the_sinks_headers(
        self, wire: responses.RequestsMock
    ) -> None:
        """Datadog's key check goes to api.<site>: the sink's own headers (meant for its
        intake, perhaps a proxy's credentials) stay home; only DD-API-KEY goes."""
        wire.add(responses.GET, "https://api.datadoghq.eu/api/v1/validate", status=200)
        settings = HttpSinkSettings(
            type="http",
            name="p",
            url="https://http-intake.logs.datadoghq.eu",
            format="datadog",
            format_options={"api_key": "dd-k3y"},
            headers={"Proxy-Authorization": "Basic c2VjcmV0"},
        )
        assert probe_http(settings, 3.0)[0]
        sent = wire.calls[0].request.headers
        assert ("dd-k3y", None) == (sent["DD-API-KEY"], sent.get("Proxy-Authorization"))

"""The http sink at its edges, against a real collector on 127.0.0.1 that misbehaves: a huge
reply, a collector that trickles, a close during a send, a collector echoing secrets, a
certificate nobody trusts and a host name that does not resolve (`bridge.sinks.httpwire`)."""

from __future__ import annotations

import gc
import json
import resource
import select
import socket
import ssl
import threading
import warnings
import zlib
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme

from bridge.formats import get_format
from bridge.outcome import RetryLater
from bridge.probes import probe_http
from bridge.redaction import scrub_known
from bridge.sinks.http import HttpSink
from bridge.sinks.httptransport import HttpTransport
from bridge.sinks.httpwire import Deadline, GuardedAdapter
from tests.collector import Collector, Reply
from tests.conftest import MakeSink
from tests.delivery.helpers import event_line, fast_settings, ids_of

HUGE = 256 * 1024 * 1024  # streamed by the collector, never held in memory by the test
TOKEN = "tok-9f8e7d6c5b4a"
API_KEY = "key-0a1b2c3d4e5f"
PASSWORD = "pw-5e6f7a8b9c"


@pytest.fixture
def authority() -> trustme.CA:
    return trustme.CA()


def tls_context(authority: trustme.CA, host: str = "127.0.0.1") -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert(host).configure_cert(context)
    return context


def submit_all(sink: HttpSink, count: int) -> list[str]:
    lines = [event_line() for _ in range(count)]
    assert all(sink.submit(line) for line in lines)
    return ids_of(lines)


def threads_of(sink: HttpSink) -> list[threading.Thread]:
    """The sink's own threads (delivery worker, deadline timer), named after the sink."""
    return [t for t in threading.enumerate() if t.name.endswith(f"-{sink.name}")]


class TestReplyBound:
    @pytest.mark.parametrize("status", [200, 503])
    def test_a_huge_reply_is_read_only_up_to_the_bound(
        self, collector: Collector, make_sink: MakeSink, status: int
    ) -> None:
        """A 256 MiB reply: about 1 MiB is read, the connection dropped, delivery carries on."""
        collector.plan(Reply(status, stream_bytes=HUGE))
        sink = make_sink(collector.url, batch_max_events=1)
        ids = submit_all(sink, 2)
        assert sink.flush(30.0)
        assert collector.wait_for(lambda c: all(r.done for r in c.requests()))
        first, second = collector.requests()[:2]
        # Socket buffers let a few MiB more out of the collector; reading it all is 256 MiB.
        assert first.sent < HUGE // 8
        assert first.client_port != second.client_port  # never reused with bytes unread
        assert sorted(ids) == sorted(set(collector.event_ids()))

    def test_a_gzip_bomb_is_decoded_only_up_to_the_bound(
        self, collector: Collector, make_sink: MakeSink
    ) -> None:
        """512 KiB of gzip that inflates to 512 MiB: the process's peak memory barely moves
        (reading it whole would raise the peak by 512 MiB at least)."""
        packer = zlib.compressobj(1, zlib.DEFLATED, 31)
        zeros = bytes(1 << 20)
        bomb = b"".join(packer.compress(zeros) for _ in range(512)) + packer.flush()
        collector.plan(Reply(200, headers={"Content-Encoding": "gzip"}, body=bomb))
        sink = make_sink(collector.url)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, never decreases
        ids = submit_all(sink, 1)
        assert sink.flush(30.0)
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) // 1024
        assert grown_mib < 64
        assert ids == collector.event_ids()

    def test_a_reply_within_the_bound_keeps_the_connection(
        self, collector: Collector, make_sink: MakeSink
    ) -> None:
        """A 100 kB reply is read whole: the next request reuses the connection."""
        collector.plan(Reply(200, body=b"y" * 100_000))
        sink = make_sink(collector.url, batch_max_events=1)
        submit_all(sink, 1)
        assert sink.flush(10.0)
        submit_all(sink, 1)
        assert sink.flush(10.0)
        first, second = collector.requests()
        assert (100_000, first.client_port) == (first.sent, second.client_port)


class TestTotalDeadline:
    @pytest.mark.parametrize("where", ["head", "body"])
    def test_a_trickling_collector_is_cut_off_and_the_batch_sent_again(
        self, collector: Collector, make_sink: MakeSink, where: str
    ) -> None:
        """A byte every 0.2 s never trips the 0.5 s read timeout; the 1 s total deadline does."""
        collector.plan(Reply(200, trickle=0.2, trickle_body=where == "body", record=False))
        sink = make_sink(collector.url, timeout_connect=0.5, timeout_read=0.5)
        ids = submit_all(sink, 3)
        assert sink.flush(20.0)
        assert sorted(ids) == sorted(collector.event_ids())
        assert 2 == len(collector.requests())
        error = sink.stats()["last_error"]
        assert "no complete reply within 1 s (timeout_connect + timeout_read)" in error


class TestCloseDuringASend:
    @pytest.mark.parametrize("spool", [False, True], ids=["memory", "spool"])
    def test_close_cuts_a_trickling_send_and_the_worker_ends(
        self, collector: Collector, make_sink: MakeSink, tmp_path: Path, spool: bool
    ) -> None:
        """Timeouts of 5 s, a collector trickling for ever: close(0.3) still ends every thread;
        the batch stays in the spool (delivered later) or is counted as dropped."""
        collector.always(Reply(200, trickle=0.2, record=False))
        spool_dir = tmp_path / "spool" if spool else None
        sink = make_sink(collector.url, timeout_connect=5.0, timeout_read=5.0, spool_dir=spool_dir)
        ids = submit_all(sink, 3)
        assert collector.wait_for(lambda c: len(c.requests()) >= 1)
        threads = threads_of(sink)
        assert f"bridge-http-{sink.name}" in [t.name for t in threads]
        assert not sink.close(0.3)
        for thread in threads:
            thread.join(10.0)
        assert [] == [t.name for t in threads if t.is_alive()]
        if not spool:
            assert {"shutdown": 3} == sink.stats()["dropped_by_reason"]
            return
        collector.always(Reply(200))
        again = make_sink(collector.url, spool_dir=spool_dir)
        assert again.flush(20.0)
        assert sorted(ids) == sorted(set(collector.event_ids()))

    def test_close_cuts_a_tls_handshake_that_never_ends(
        self, make_sink: MakeSink, authority: trustme.CA, tmp_path: Path
    ) -> None:
        """A listener that accepts and never answers the TLS hello: close still ends the
        worker, long before the 30 s connect timeout."""
        ca = tmp_path / "ca.pem"
        authority.cert_pem.write_to_path(str(ca))
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            listener.settimeout(10.0)
            url = f"https://127.0.0.1:{listener.getsockname()[1]}/ingest"
            sink = make_sink(url, ca_bundle=str(ca), timeout_connect=30.0, timeout_read=5.0)
            submit_all(sink, 1)
            silent, _ = listener.accept()
            with silent:
                assert silent.recv(1)  # the client hello has started: the worker is handshaking
                threads = threads_of(sink)
                assert f"bridge-http-{sink.name}" in [t.name for t in threads]
                assert not sink.close(0.3)
                for thread in threads:
                    thread.join(10.0)
                assert [] == [t.name for t in threads if t.is_alive()]


class TestEchoedSecrets:
    def test_secrets_echoed_by_the_collector_are_written_nowhere(
        self,
        collector: Collector,
        make_sink: MakeSink,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The token, the URL's api_key and password echoed in 500 and 400 bodies: every byte
        written (dead-letter file, stats, stderr) is free of them."""
        echo = f"invalid token {TOKEN} for {collector.url}?api_key={API_KEY}; key {API_KEY}"
        echo += f"; password {PASSWORD}"
        collector.plan(Reply(500, body=echo.encode()), Reply(400, body=echo.encode()))
        url = collector.url.replace("//", f"//user:{PASSWORD}@") + f"?api_key={API_KEY}"
        dead = tmp_path / "dead.jsonl"
        sink = make_sink(url, headers={"Authorization": f"Bearer {TOKEN}"}, dead_letter_path=dead)
        submit_all(sink, 1)
        assert sink.flush(10.0)
        written = dead.read_text() + json.dumps(sink.stats()) + capsys.readouterr().err
        assert [] == [s for s in (TOKEN, API_KEY, PASSWORD) if s in written]
        assert "invalid token [REDACTED]" in json.loads(dead.read_text())["response"]
        assert 1 == sink.stats()["dead_lettered"]

    def test_the_sink_registers_its_secrets_for_every_stderr_line(
        self, make_sink: MakeSink
    ) -> None:
        """Once a sink exists, `scrub_known` (which every bridge stderr line goes through)
        hides its token, URL password and sensitive query values."""
        make_sink(
            f"http://u:{PASSWORD}@127.0.0.1:9/in?api_key={API_KEY}&tenant=acme",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        text = scrub_known(f"echo {TOKEN} {API_KEY} {PASSWORD} acme")
        assert "echo [REDACTED] [REDACTED] [REDACTED] acme" == text


class TestResetBeforeHandshake:
    def test_the_tls_socket_is_closed(self) -> None:
        """A collector that resets the connection between connect and TLS handshake (its
        backlog dropped as it restarts): the failed socket is closed, not left to the GC."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        class ResetOnConnect(Deadline):
            def watch(self, sock: socket.socket) -> None:
                if listener.fileno() != -1:  # connected, not accepted: closing resets it
                    listener.close()
                    select.select([sock], [], [], 10.0)
                super().watch(sock)

        deadline = ResetOnConnect("reset")
        with warnings.catch_warnings(record=True) as caught, requests.Session() as session:
            warnings.simplefilter("always", ResourceWarning)
            session.mount("https://", GuardedAdapter(deadline, max_retries=0))
            deadline.start(10.0)
            with pytest.raises(requests.ConnectionError):
                session.post(f"https://127.0.0.1:{port}/ingest", data=b"{}", timeout=10.0)
            deadline.finish()
            gc.collect()
        deadline.close()
        assert [] == [str(w.message) for w in caught]


class TestFailureCauses:
    def test_an_untrusted_certificate_is_named(
        self, authority: trustme.CA, make_sink: MakeSink
    ) -> None:
        """Not "Operation not permitted (EPERM)": the verification failure and its reason,
        in the error and in stats()."""
        with Collector(tls=tls_context(authority)) as collector:
            sink = make_sink(collector.url)
            submit_all(sink, 1)
            assert not sink.flush(0.5)
            assert (
                f"https://127.0.0.1:{collector.port}: TLS certificate verification failed "
                "(unable to get local issuer certificate)"
            ) == sink.stats()["last_error"].split(" (attempt")[0]

    def test_a_certificate_for_another_host_is_named(
        self, authority: trustme.CA, tmp_path: Path
    ) -> None:
        """A trusted CA but a certificate for another name: an address mismatch."""
        ca = tmp_path / "ca.pem"
        authority.cert_pem.write_to_path(str(ca))
        with Collector(tls=tls_context(authority, "collector.test")) as collector:
            settings = fast_settings(collector.url, ca_bundle=str(ca))
            transport = HttpTransport(settings, get_format("ndjson"))
            try:
                outcome = transport.send([event_line()])
            finally:
                transport.close()
        assert isinstance(outcome, RetryLater)
        assert (
            f"https://127.0.0.1:{collector.port}: TLS certificate verification failed "
            "(IP address mismatch, certificate is not valid for '127.0.0.1'.)"
        ) == outcome.reason

    def test_a_name_that_does_not_resolve_is_a_dns_failure(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Not "Unknown error -2": the lookup, the host and the resolver's EAI_* reason.
        (getaddrinfo is answered here: the test sends nothing, not even to a resolver.)"""
        nxdomain(monkeypatch)
        settings = fast_settings("http://nonexistent.invalid:8686/in?api_key=" + API_KEY)
        transport = HttpTransport(settings, get_format("ndjson"))
        try:
            outcome = transport.send([event_line()])
        finally:
            transport.close()
        assert isinstance(outcome, RetryLater)
        assert (
            "http://nonexistent.invalid:8686: DNS lookup failed for host nonexistent.invalid "
            "(Name or service not known, EAI_NONAME)"
        ) == outcome.reason

    def test_the_check_probe_names_tls_and_dns_failures(
        self, authority: trustme.CA, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`flask bridge check` says the same as the sink's errors."""
        nxdomain(monkeypatch)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with Collector(tls=tls_context(authority)) as collector:
            settings = fast_settings(collector.url, headers=headers)
            tls = probe_http(settings, 3.0)
        dns = probe_http(fast_settings("http://nonexistent.invalid/", headers=headers), 3.0)
        assert (
            False,
            "TLS certificate verification failed (unable to get local issuer certificate)",
        ) == tls
        assert (
            False,
            "unreachable: DNS lookup failed for host nonexistent.invalid "
            "(Name or service not known, EAI_NONAME)",
        ) == dns


def nxdomain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names under .invalid (RFC 6761) fail as a resolver fails them; others resolve as usual."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

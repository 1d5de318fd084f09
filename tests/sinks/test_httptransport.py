"""The transport's side of the format seam (`responses`): the format's default path, its
platform limits (a body never sent over them), its secrets scrubbed from what is written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import responses

from bridge.delivery.deadletter import DeadLetter
from bridge.formats.base import Limits, Payload, Probe
from bridge.outcome import DEFAULT_POLICY, DELIVERED, Outcome, Rejected, Split, StatusPolicy
from bridge.sinks.http import delivery_engine
from bridge.sinks.httptransport import HttpTransport
from bridge.sinks.httpwire import with_default_path
from bridge.stats import SinkStats
from tests.delivery.helpers import event_line, fast_settings

PLATFORM_LIMITS = Limits(max_events=10, max_body_bytes=2000)


@dataclass
class PlatformFormat:
    """A format with a default path, a body limit, a token and a header of its own."""

    name: str = "platform"
    content_type: str = "application/json"
    policy: StatusPolicy = DEFAULT_POLICY
    limits: Limits = PLATFORM_LIMITS
    default_path: str = "/api/v1/push"
    default_query: Mapping[str, str] = field(default_factory=dict)
    token: str = "plat-t0ken-value"

    def encode(self, lines: Sequence[bytes]) -> Payload:
        return Payload(b"".join(lines), self.content_type, {"X-Token": self.token})

    def interpret(self, status: int, body: bytes) -> Outcome:
        return DELIVERED

    def secrets(self) -> Sequence[str]:
        return (self.token,)

    def probe(self, url: str) -> Probe:
        return Probe()


def transport(url: str) -> HttpTransport:
    return HttpTransport(fast_settings(url, gzip=False), PlatformFormat())


class TestDefaultPath:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("http://loki.test:3100", "http://loki.test:3100/api/v1/push"),
            ("http://loki.test:3100/", "http://loki.test:3100/api/v1/push"),
            ("http://loki.test:3100/custom/in", "http://loki.test:3100/custom/in"),
            ("http://loki.test:3100?tenant=a", "http://loki.test:3100/api/v1/push?tenant=a"),
        ],
    )
    def test_a_url_without_a_path_gets_the_formats_own(self, url: str, expected: str) -> None:
        """The URL the user gives is used as is; without a path, the format's documented one."""
        assert expected == with_default_path(url, "/api/v1/push")

    def test_requests_go_to_the_default_path(self, mock: responses.RequestsMock) -> None:
        """On the wire: a bare origin is sent to the format's path, with its header."""
        mock.add(responses.POST, "http://loki.test:3100/api/v1/push", status=204)
        assert DELIVERED == transport("http://loki.test:3100").send([event_line()])
        assert "plat-t0ken-value" == mock.calls[0].request.headers["X-Token"]


class TestBodyLimit:
    def test_a_body_over_the_limit_is_split_before_it_is_sent(
        self, mock: responses.RequestsMock
    ) -> None:
        """Over `max_body_bytes`: a Split outcome, and no request at all."""
        lines = [event_line(pad="x" * 400) for _ in range(8)]
        outcome = transport("http://p.test/in").send(lines)
        assert isinstance(outcome, Split)
        assert "over the platform limit of 2000 bytes" in outcome.reason
        assert 0 == len(mock.calls)

    def test_one_event_over_the_limit_is_dead_lettered_too_large(
        self, mock: responses.RequestsMock, tmp_path: Path
    ) -> None:
        """A single event that cannot fit is dead-lettered `too_large` once, never sent and
        never split forever (the transport says split; the engine refuses a lone line)."""
        stats = SinkStats()
        letters = DeadLetter(tmp_path / "dead.jsonl", stats=stats, sink_name="p")
        settings = fast_settings("http://p.test/in", gzip=False)
        engine = delivery_engine(
            settings,
            HttpTransport(settings, PlatformFormat()),
            stats=stats,
            dead_letter=letters,
        )
        try:
            assert engine.submit(event_line(pad="x" * 3000))
            assert engine.flush(10.0)
        finally:
            engine.close(1.0)
        assert ({"too_large": 1}, 1, 0) == (
            stats.dropped_by_reason,
            stats.dead_lettered,
            len(mock.calls),
        )
        assert isinstance(transport("http://p.test/in").send([event_line(pad="x" * 3000)]), Split)

    def test_a_body_within_the_limit_is_sent(self, mock: responses.RequestsMock) -> None:
        """At or under the limit the batch goes out whole."""
        mock.add(responses.POST, "http://p.test/in", status=200)
        lines = [event_line(pad="x" * 100) for _ in range(5)]
        assert DELIVERED == transport("http://p.test/in").send(lines)
        assert b"".join(lines) == mock.calls[0].request.body


class TestFormatSecrets:
    def test_a_collector_echoing_the_formats_token_is_scrubbed(
        self, mock: responses.RequestsMock
    ) -> None:
        """A reply quoting the format's token never carries it into the outcome."""
        mock.add(
            responses.POST, "http://p.test/in", status=400, body="bad X-Token plat-t0ken-value"
        )
        outcome = transport("http://p.test/in").send([event_line()])
        assert isinstance(outcome, Rejected)
        assert "plat-t0ken-value" not in outcome.body
        assert "bad X-Token" in outcome.body

    def test_a_token_cut_by_the_excerpt_leaves_no_part_of_it(
        self, mock: responses.RequestsMock
    ) -> None:
        """A token echoed across the excerpt's end: hidden whole before the cut, so no prefix
        of it reaches the outcome (and the dead letters and stats made from it)."""
        echo = "x" * 490 + " bad X-Token plat-t0ken-value"  # cut after "plat-t0ke"
        mock.add(responses.POST, "http://p.test/in", status=400, body=echo)
        outcome = transport("http://p.test/in").send([event_line()])
        assert isinstance(outcome, Rejected)
        assert "x" * 490 == outcome.body[:490]
        assert "plat-t0k" not in outcome.body

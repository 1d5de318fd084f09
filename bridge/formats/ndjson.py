"""`ndjson`: the lines as they are, one JSON object per line (`application/x-ndjson`).

What Vector's `http_server` source, Fluent Bit's `http` input and Logstash's `http` input take.
All or nothing: a 2xx reply means every line arrived. It is the `format` inside the HTTP
transport: submit -> feed -> engine -> transport(format) -> outcome -> feed.ack.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.formats.base import NO_LIMITS, NO_QUERY, Payload, Probe
from bridge.outcome import DEFAULT_POLICY, DELIVERED, Outcome

__all__ = ["NdjsonFormat"]


class NdjsonFormat:
    """The body is the batch's lines concatenated; every line already ends in b"\\n"."""

    name = "ndjson"
    content_type = "application/x-ndjson"
    policy = DEFAULT_POLICY
    limits = NO_LIMITS
    default_path = ""
    default_query = NO_QUERY

    def encode(self, lines: Sequence[bytes]) -> Payload:
        return Payload(b"".join(lines), self.content_type)

    def interpret(self, status: int, body: bytes) -> Outcome:
        return DELIVERED

    def secrets(self) -> Sequence[str]:
        return ()

    def probe(self, url: str) -> Probe:
        return Probe()  # a HEAD: any reply but 401/403 shows the collector and credentials

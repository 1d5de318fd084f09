"""`json_array`: the batch as one JSON array of event objects (`application/json`).

For collectors that want a JSON document rather than NDJSON (generic webhooks, Logstash's
`http` input with the json codec). All or nothing: a 2xx reply means every event arrived.
It is the `format` inside the HTTP transport: submit -> feed -> engine -> transport(format)
-> outcome -> feed.ack.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.formats.base import NO_LIMITS, NO_QUERY, Payload, Probe
from bridge.outcome import DEFAULT_POLICY, DELIVERED, Outcome

__all__ = ["JsonArrayFormat"]


class JsonArrayFormat:
    """`[` + the lines without their newlines, joined by `,` + `]`; each line is one object."""

    name = "json_array"
    content_type = "application/json"
    policy = DEFAULT_POLICY
    limits = NO_LIMITS
    default_path = ""
    default_query = NO_QUERY

    def encode(self, lines: Sequence[bytes]) -> Payload:
        items = [line[:-1] if line.endswith(b"\n") else line for line in lines]
        return Payload(b"[" + b",".join(items) + b"]", self.content_type)

    def interpret(self, status: int, body: bytes) -> Outcome:
        return DELIVERED

    def secrets(self) -> Sequence[str]:
        return ()

    def probe(self, url: str) -> Probe:
        return Probe()  # a HEAD: any reply but 401/403 shows the collector and credentials

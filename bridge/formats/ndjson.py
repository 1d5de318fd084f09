"""`ndjson`: the lines as they are, one JSON object per line (`application/x-ndjson`).

What Vector's `http_server` source, Fluent Bit's `http` input and Logstash's `http` input take.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.config import HttpSinkSettings
from bridge.formats.base import NO_FAILURES, ItemFailures, Payload

__all__ = ["NdjsonFormat"]


class NdjsonFormat:
    """The body is the batch's lines concatenated; every line already ends in b"\\n"."""

    name = "ndjson"
    content_type = "application/x-ndjson"

    def encode(self, lines: Sequence[bytes], settings: HttpSinkSettings) -> Payload:
        return Payload(b"".join(lines), self.content_type)

    def interpret(self, status: int, body: bytes) -> ItemFailures:
        return NO_FAILURES

"""What a wire format is: lines in, one request body out, and a reading of the reply.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

A format sits inside the HTTP transport (`bridge.sinks.httptransport`): it gets the encoded
event lines of one batch (UTF-8 JSON, each ending in b"\\n") and returns the body, its content
type and any extra headers. It also says what the collector's replies mean: `policy` (a
`bridge.outcome.StatusPolicy`) for non-2xx statuses, `interpret` for a 2xx reply, which a
collector reporting per-item results (Elasticsearch bulk, for one) turns into a
`PartlyDelivered`. Formats know events and outcomes, never the configuration, the engine or
the transport.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bridge.outcome import Outcome, StatusPolicy

__all__ = ["Format", "Payload"]


@dataclass(frozen=True, slots=True)
class Payload:
    """One request body. `compressible`: the transport may gzip it (the collector accepts
    `Content-Encoding: gzip` for this format)."""

    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)
    compressible: bool = True


class Format(Protocol):
    """A wire format. Implementations are small, stateless and safe to share between threads."""

    name: str
    content_type: str
    policy: StatusPolicy
    """What non-2xx statuses mean to this format's collectors."""

    def encode(self, lines: Sequence[bytes]) -> Payload:
        """The body for these lines (at least one)."""
        ...

    def interpret(self, status: int, body: bytes) -> Outcome:
        """What a 2xx reply says: `DELIVERED` for all-or-nothing formats, else a
        `PartlyDelivered` naming the failed items."""
        ...

"""What a wire format is: lines in, one request body out, and (optionally) a reading of the reply.

A format sits between the delivery engine and the HTTP transport: it gets the encoded event
lines of one batch (UTF-8 JSON, each ending in b"\\n") and the sink's settings, and returns the
body, its content type and any extra headers. A collector that reports per-item results
(Elasticsearch bulk, for one) also reads the 2xx reply and says which items to retry and which
were rejected for good. Formats know events and settings, never the engine or the transport.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bridge.config import HttpSinkSettings

__all__ = ["Format", "ItemFailures", "Payload"]


@dataclass(frozen=True, slots=True)
class Payload:
    """One request body. `compressible`: the transport may gzip it (the collector accepts
    `Content-Encoding: gzip` for this format)."""

    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)
    compressible: bool = True


@dataclass(frozen=True, slots=True)
class ItemFailures:
    """Items of a batch that a collector refused inside a 2xx reply, by index into the lines.

    `retry`: worth sending again (the collector was busy); `reject`: refused for good (they go
    to the dead-letter file with `detail`).
    """

    retry: tuple[int, ...] = ()
    reject: tuple[int, ...] = ()
    detail: str = ""


NO_FAILURES = ItemFailures()


class Format(Protocol):
    """A wire format. Implementations are small, stateless and safe to share between threads."""

    name: str

    def encode(self, lines: Sequence[bytes], settings: HttpSinkSettings) -> Payload:
        """The body for these lines (at least one)."""
        ...

    def interpret(self, status: int, body: bytes) -> ItemFailures:
        """Per-item failures reported in a 2xx reply; `NO_FAILURES` for all-or-nothing formats."""
        ...

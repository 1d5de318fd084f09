"""What a wire format is: lines in, one request body out, and a reading of the reply.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

A format sits inside the HTTP transport (`bridge.sinks.httptransport`): it gets the encoded
event lines of one batch (UTF-8 JSON, each ending in b"\\n") and returns the body, its content
type and any extra headers. It also says what the collector's replies mean: `policy` (a
`bridge.outcome.StatusPolicy`) for non-2xx statuses, `interpret` for a 2xx reply, which a
collector reporting per-item results (Elasticsearch bulk, for one) turns into a
`PartlyDelivered`; `limits` are what one request may carry on its platform (the sink never
batches beyond them; a body over `max_body_bytes` is split before it is sent).

A format with settings of its own declares them as a frozen dataclass, its `Options`: fields
with plain types (str, bool, int, float, `tuple[str, ...]`, `dict[str, str]`, optional ones
`... | None`) and defaults. The configuration (`format_options` of an http sink) is checked
against it by `bridge.formatoptions`, so a format never reads the configuration itself; a
value the types cannot judge is checked in the dataclass's `__post_init__`, which raises
`OptionError`. Formats know events and outcomes, never the configuration, the engine or the
transport.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from bridge.outcome import Outcome, StatusPolicy

__all__ = [
    "NO_LIMITS",
    "NO_QUERY",
    "Format",
    "Limits",
    "NoOptions",
    "OptionError",
    "Payload",
    "Probe",
]

NO_QUERY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Payload:
    """One request body. `compressible`: the transport may gzip it (the collector accepts
    `Content-Encoding: gzip` for this format). `raw_size`: the size the platform's limits
    count when the format compressed `body` itself (SLS: the body before its deflate);
    None: `len(body)`."""

    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)
    compressible: bool = True
    raw_size: int | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may carry on the platform, as it documents it (None: no limit).

    `max_events` and `max_body_bytes` (the uncompressed body) bound a request; the sink's
    batches never hold more events than `max_events`, and a body that still comes out larger
    than `max_body_bytes` is split in two before it is sent (one event alone is rejected
    `too_large`: a format whose platform has a per-event limit cuts events to fit in `encode`).
    """

    max_events: int | None = None
    max_body_bytes: int | None = None


NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Probe:
    """A harmless request `flask bridge check` sends to show that the endpoint answers and
    takes the format's credentials (no event is stored): `url` (None: the sink's URL, with
    the format's default path), extra `headers` (the format's auth), a `body`. A status in
    `refused` means the credentials were refused; `accepted`, if given, are the statuses
    that prove them good (anything else: reachable, credentials not proven)."""

    method: str = "HEAD"
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    refused: frozenset[int] = frozenset({401, 403})
    accepted: frozenset[int] = frozenset()


class OptionError(ValueError):
    """A format option has a value its type allows but the platform does not (raised by an
    `Options.__post_init__`): `option` names it, `expected` says what would do."""

    def __init__(self, option: str, value: Any, expected: str) -> None:
        super().__init__(f"{option}={value!r}: expected {expected}")
        self.option = option
        self.value = value
        self.expected = expected


@dataclass(frozen=True, slots=True)
class NoOptions:
    """The options of a format that has none."""


class Format(Protocol):
    """A wire format. Implementations are small, stateless and safe to share between threads."""

    name: str
    content_type: str
    policy: StatusPolicy
    """What non-2xx statuses mean to this format's collectors."""
    limits: Limits
    default_path: str
    """The path requests go to when the configured `url` has none ("" : the URL as it is)."""
    default_query: Mapping[str, str]
    """Query parameters added where the configured `url` has none of that name."""

    def encode(self, lines: Sequence[bytes]) -> Payload:
        """The body for these lines (at least one)."""
        ...

    def interpret(self, status: int, body: bytes) -> Outcome:
        """What a 2xx reply says: `DELIVERED` for all-or-nothing formats, else a
        `PartlyDelivered` naming the failed items (or a `Delivered` counting rejected ones
        the reply does not name)."""
        ...

    def secrets(self) -> Sequence[str]:
        """Option values that must never be written anywhere (tokens, keys)."""
        ...

    def probe(self, url: str) -> Probe:
        """The harmless request that checks the endpoint at `url` (the sink's, with the
        default path) and the credentials; `Probe()` (a HEAD) when the API has none."""
        ...

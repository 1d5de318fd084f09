"""`datadog`: the Datadog Logs intake API v2 (`POST /api/v2/logs`), one JSON array per batch.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

Each event becomes one log item: Datadog's reserved fields first (`ddsource`, `ddtags`,
`hostname` from `host.name`, `service` from `service.name`, `message`), then the event's own
fields as top-level attributes, so each is a searchable attribute (`@event_id`,
`@http.route`) without a parsing pipeline, `level` is read as the log's status and `timestamp`
as its date by Datadog's default remappers. `message` is the event's own text message when it
has one (a log record's), else the event's name: the line Log Explorer shows and full-text
search reads. `timestamp` is the event's capture time in milliseconds since the epoch, the
unambiguous form of Datadog's date attributes (it keeps millisecond precision only).

Datadog answers 202 for the whole request; 408, 429 and 5xx are retried, 413 split, 400 and
401/403 (the API key) refused with a reason saying what to check. A request holds at most 1000
items and 5 MB; Datadog silently truncates a log over 1 MB yet answers 2xx, so an item over
that is cut here instead, its largest fields first, marked `bridge.truncated`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from bridge.formats.base import NO_QUERY, Limits, OptionError, Payload, Probe
from bridge.formats.fields import BatchClock, parse_event
from bridge.outcome import DELIVERED, Outcome, StatusPolicy

__all__ = ["MAX_ITEM_BYTES", "DatadogFormat", "DatadogOptions"]

MAX_ITEMS = 1000
MAX_BODY_BYTES = 5_000_000  # the documented 5 MB, read as decimal: never over either reading
MAX_ITEM_BYTES = 1_000_000  # "1 MB" per log, likewise
SMALL_FIELD_BYTES = 1024  # a cut item keeps every field this small whole
MARK = "…[truncated]"
MAX_TAG_CHARS = 200  # Datadog's limit for one tag
# The reserved fields an item is made of; an event field of the same name moves to args.<name>.
RESERVED = frozenset({"ddsource", "ddtags", "hostname", "service", "message"})
# What an item still over the limit once its large fields are cut keeps (see `_fit`).
ESSENTIAL = frozenset(
    {*RESERVED, "timestamp", "level", "event", "signal", "event_id", "request_id", "trace_id"}
)
# Unified service tagging: env and version beside `service`, from OpenTelemetry's names.
DEFAULT_TAG_KEYS = {"env": "deployment.environment", "version": "service.version"}
_HEADER_SAFE = re.compile(r"[!-~]*")  # visible ASCII: a header value requests can send
_INTAKE_PREFIX = "http-intake.logs."
_TAG = re.compile(r"[^\s,]+")  # Datadog turns other odd characters into `_` itself
_TAG_NAME = re.compile(r"[^\s,:]+")

POLICY = StatusPolicy(
    hints=(
        (400, "Datadog could not read the payload; the events are dead-lettered"),
        (401, "no API key reached Datadog: set format_options.api_key (header DD-API-KEY)"),
        (
            403,
            "Datadog refused the API key: check format_options.api_key, and that `url` is "
            "the log intake of the key's Datadog site (https://http-intake.logs.<site>)",
        ),
    )
)
"""408, 429 and 5xx retried, 413 split, as Datadog documents; other 4xx refused with a hint."""


@dataclass(frozen=True, slots=True)
class DatadogOptions:
    """`format_options` of the datadog format.

    `api_key`: sent as `DD-API-KEY` (`${DD_API_KEY}`; empty: the sink's `headers` carry it).
    `ddsource`: the log's source. `service`: overrides the event's `service.name`.
    `ddtags`: tags on every log, comma-separated (`env:prod,team:shop`). `tag_keys`: tag name
    to event field, added as `name:value` when the event has that field.
    """

    api_key: str = field(default="", repr=False)  # settings may be printed: never the key
    ddsource: str = "flask"
    service: str | None = None
    ddtags: str = ""
    tag_keys: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TAG_KEYS))

    def __post_init__(self) -> None:
        if not _HEADER_SAFE.fullmatch(self.api_key):
            raise OptionError(
                "api_key", self.api_key, "an API key without spaces or control characters"
            )
        if not self.ddsource.strip():
            raise OptionError("ddsource", self.ddsource, "a source name, such as flask")
        if self.service is not None and not self.service.strip():
            raise OptionError("service", self.service, "a service name (or no `service`)")
        if any(not _TAG.fullmatch(t) for t in _split_tags(self.ddtags)):
            raise OptionError(
                "ddtags", self.ddtags, "comma-separated tags without spaces, e.g. env:prod,team:a"
            )
        bad = [name for name in self.tag_keys if not _TAG_NAME.fullmatch(name)]
        if bad:
            raise OptionError("tag_keys", bad[0], "a tag name without spaces, `,` or `:`")


def _split_tags(tags: str) -> list[str]:
    """The tags of a comma-separated list, spaces around them and empty ones dropped."""
    return [tag.strip() for tag in tags.split(",") if tag.strip()]


def _tag(name: str, value: object) -> str | None:
    """`name:value` for a scalar event field; a comma (the separator) becomes `_`, as Datadog
    turns characters a tag cannot hold into underscores."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = str(value).strip().replace(",", "_")
    return f"{name}:{text}"[:MAX_TAG_CHARS] if text else None


class DatadogFormat:
    """One `HTTPLogItem` per event, in one JSON array; see the module docstring."""

    name = "datadog"
    content_type = "application/json"
    policy = POLICY
    limits = Limits(max_events=MAX_ITEMS, max_body_bytes=MAX_BODY_BYTES)
    default_path = "/api/v2/logs"
    default_query = NO_QUERY

    def __init__(self, options: DatadogOptions) -> None:
        self._api_key = options.api_key
        # Accept: as Datadog's own client sends it (replies are JSON: `{}` or `{"errors": [...]}`).
        key = {"DD-API-KEY": options.api_key} if options.api_key else {}
        self._headers: Mapping[str, str] = {**key, "Accept": "application/json"}
        self._source = options.ddsource
        self._service = options.service
        self._tags = ",".join(_split_tags(options.ddtags))
        self._tag_keys = tuple(options.tag_keys.items())

    def encode(self, lines: Sequence[bytes]) -> Payload:
        clock = BatchClock()
        heads: dict[tuple[str, str | None, str | None, str], bytes] = {}
        # Each item goes into one growing buffer at once: holding hundreds of `orjson.dumps`
        # results to join them later costs ~4 us per item in fresh memory (page faults).
        body = bytearray(b"[")
        for line in lines:
            body += self._item(line, clock, heads)
            body += b","
        body[-1:] = b"]" if lines else b"[]"
        return Payload(bytes(body), self.content_type, self._headers)

    def _item(
        self,
        line: bytes,
        clock: BatchClock,
        heads: dict[tuple[str, str | None, str | None, str], bytes],
    ) -> bytes:
        """The item of one line: the reserved fields, then the event's own.

        The reserved fields (`heads`: their JSON, by their values) repeat from event to event,
        and no event key is one of them any more (each was taken or renamed), so the item's
        JSON is theirs followed by the event's: what `orjson.dumps` of the merged dict writes.
        """
        event = parse_event(line)
        tags = self._tags
        for tag_name, key in self._tag_keys:
            tag = _tag(tag_name, event.get(key)) if key in event else None
            if tag is not None:
                tags = f"{tags},{tag}" if tags else tag
        host = event.get("host.name")
        if isinstance(host, str):
            del event["host.name"]
        else:
            host = None
        service = event.get("service.name")
        if isinstance(service, str):
            del event["service.name"]
        if self._service is not None:
            service = self._service
        if not isinstance(service, str):
            service = None
        message = event.get("message")
        if isinstance(message, str):
            del event["message"]
        else:
            title = event.get("event")
            message = title if isinstance(title, str) else ""
        if not RESERVED.isdisjoint(event):  # the event's own `service`, say: kept, renamed
            for key in RESERVED.intersection(event):
                event[f"args.{key}"] = event.pop(key)
        ns = clock.ns(event.get("timestamp"), -1)
        stamp = ns // 1_000_000 if ns >= 0 else None
        if stamp is not None:
            event["timestamp"] = stamp
        head = heads.get(reserved := (tags, host, service, message))
        if head is None:
            head = heads[reserved] = orjson.dumps(self._reserved(*reserved))[:-1]
        data = head + b"," + orjson.dumps(event)[1:] if event else head + b"}"
        if len(data) > MAX_ITEM_BYTES:
            item = self._reserved(*reserved)
            item.update(event)
            return _fit(item, len(data))
        return data

    def _reserved(
        self, tags: str, host: str | None, service: str | None, message: str
    ) -> dict[str, Any]:
        """An item's reserved fields, in the order the item has them (the module docstring)."""
        item: dict[str, Any] = {"ddsource": self._source}
        if tags:
            item["ddtags"] = tags
        if host is not None:
            item["hostname"] = host
        if service is not None:
            item["service"] = service
        item["message"] = message
        return item

    def interpret(self, status: int, body: bytes) -> Outcome:
        return DELIVERED  # 202 `{}`: the intake reports nothing per item

    def secrets(self) -> Sequence[str]:
        return (self._api_key,) if self._api_key else ()

    def probe(self, url: str) -> Probe:
        """Datadog's key check (`GET /api/v1/validate`, 200 or 403) lives on the site's API
        host, `api.<site>` for an intake `http-intake.logs.<site>`; behind a proxy, a HEAD."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if not host.startswith(_INTAKE_PREFIX) or not self._api_key:
            return Probe()
        api = f"{parts.scheme}://api.{host.removeprefix(_INTAKE_PREFIX)}/api/v1/validate"
        key = {"DD-API-KEY": self._api_key}
        return Probe("GET", api, key, accepted=frozenset({200}))


def _shorten(value: Any, keep_bytes: int) -> str:
    """`value` (its text, or its JSON) cut to at most `keep_bytes` of JSON, marked."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    text = text.removesuffix(MARK)  # cut twice, marked once
    size = len(orjson.dumps(text))
    while size > keep_bytes and text:
        # Characters in proportion to the encoded bytes (escapes and multi-byte characters
        # make them differ), measured again: a few rounds when the cut part is escape-heavy.
        text = text[: min(len(text) - 1, keep_bytes * len(text) // size)]
        size = len(orjson.dumps(text))
    return text + MARK


def _fit(item: dict[str, Any], size: int) -> bytes:
    """An item over MAX_ITEM_BYTES, cut below it rather than truncated by Datadog unmarked:
    its largest fields first (each kept in part), every field under SMALL_FIELD_BYTES whole.
    An item that still does not fit (thousands of small fields) keeps the ESSENTIAL fields
    (each cut to SMALL_FIELD_BYTES) and then as many others, in order, as fit."""
    item["bridge.truncated"] = True
    item["bridge.original_bytes"] = size
    by_size = sorted(((len(orjson.dumps(v)), k) for k, v in item.items()), reverse=True)
    for value_bytes, key in by_size:
        if size <= MAX_ITEM_BYTES or value_bytes <= SMALL_FIELD_BYTES:
            break
        keep = max(SMALL_FIELD_BYTES, value_bytes - (size - MAX_ITEM_BYTES) - 1024)
        item[key] = _shorten(item[key], keep)
        size = len(orjson.dumps(item))
    if size <= MAX_ITEM_BYTES:
        return orjson.dumps(item)
    kept: dict[str, Any] = {}
    for key, value in item.items():
        if key in ESSENTIAL or key.startswith("bridge."):
            small = len(orjson.dumps(value)) <= SMALL_FIELD_BYTES
            kept[key] = value if small else _shorten(value, SMALL_FIELD_BYTES)
    room = MAX_ITEM_BYTES - len(orjson.dumps(kept)) - 64  # 64: the count added below
    for key, value in item.items():
        if key not in kept:
            pair = len(orjson.dumps({key: value}))  # `{"k":v}`: the `,"k":v` it adds
            if pair <= room:
                kept[key] = value
                room -= pair
    kept["bridge.dropped_fields"] = len(item) - len(kept)
    return orjson.dumps(kept)

"""`elasticsearch`: the Bulk API (`POST /_bulk`, NDJSON), for Elasticsearch and OpenSearch.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

Each event is a `create` action whose `_id` is the event's `event_id`, followed by the event
with `@timestamp` (its own capture time) added. `create` is what data streams accept, and with
a fixed `_id` a batch sent again (a timeout after the cluster took it) is never indexed twice:
the copy comes back 409 `version_conflict_engine_exception`, read as delivered. The index
is a fixed name, a data stream, or a strftime pattern read at each event's own time (UTC).

A 2xx reply can still hold failed items (`"errors": true`); they are read one by one, in
request order, as the official client does (elasticsearch-py, `helpers/actions.py`,
`_process_bulk_chunk_success`): 2xx and 409-on-create delivered, 429, 5xx and
`es_rejected_execution_exception` retried, any other status dead-lettered with its error
type and reason. The request asks for `filter_path=errors,items.*.error,items.*.status`
(`default_query`; a URL with its own `filter_path` is used as is) so a reply carries a status
per item and little else. The transport reads at most 1 MiB of a reply: a cut reply is read
as far as whole items go and every later item is retried (`PartlyDelivered.unread_from`),
never taken as delivered; a reply whose items cannot be matched to the request (no status:
a `filter_path` without `items.*.status`) has the whole batch retried, which `create` makes
harmless.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson

from bridge.formats.base import Limits, OptionError, Payload, Probe
from bridge.formats.fields import epoch_ns, parse_event
from bridge.outcome import DEFAULT_POLICY, DELIVERED, Outcome, PartlyDelivered, RetryLater

__all__ = ["FILTER_PATH", "ElasticsearchFormat", "ElasticsearchOptions"]

FILTER_PATH = "errors,items.*.error,items.*.status"
_DIRECTIVES = re.compile(r"%(.)")
_DATE_DIRECTIVES = frozenset("YmdyjGVuH%")  # what an index pattern may use (a day or an hour)
_INVALID_NAME = re.compile(r'[\\/*?"<>| ,#:A-Z]')
_ITEMS = re.compile(rb'"items"\s*:\s*\[')
_ERRORS_FALSE = re.compile(rb'"errors"\s*:\s*false')
_REASON_CHARS = 200  # of each reason: a dead-letter record keeps 512 chars of them all
_CREATE = b'{"create":{"_index":'  # every action's start, up to its index name


@dataclass(frozen=True, slots=True)
class ElasticsearchOptions:
    """`index`: an index, alias or data stream name, or a pattern with strftime date fields
    (`logs-flask-%Y.%m.%d`) filled in from each event's own time, UTC. The default matches
    Elasticsearch's built-in `logs-*-*` template, which makes it a data stream. `pipeline`:
    an ingest pipeline run on every document (None: the index's default)."""

    index: str = "logs-flask-default"
    pipeline: str | None = None

    def __post_init__(self) -> None:
        used = set(_DIRECTIVES.findall(self.index))
        if not used <= _DATE_DIRECTIVES:
            odd = ", ".join(sorted(f"%{d}" for d in used - _DATE_DIRECTIVES))
            raise OptionError(
                "index", self.index, f"date fields among %Y %m %d %y %j %G %V %u %H (not {odd})"
            )
        name = datetime(2026, 1, 2, 3, tzinfo=UTC).strftime(self.index)
        if (
            not name
            or name in (".", "..")
            or name[0] in "-_+"
            or _INVALID_NAME.search(name)
            or len(name.encode()) > 255
        ):
            raise OptionError(
                "index",
                self.index,
                "an Elasticsearch index name: lowercase, at most 255 bytes, not starting with "
                '-, _ or +, without spaces or any of \\ / * ? " < > | , # :',
            )
        if self.pipeline is not None and not self.pipeline.strip():
            raise OptionError("pipeline", self.pipeline, "an ingest pipeline's name")


class ElasticsearchFormat:
    """Bulk `create` actions, one per event; replies read item by item."""

    name = "elasticsearch"
    content_type = "application/x-ndjson"
    policy = DEFAULT_POLICY
    # 10 MiB: inside Elastic's advice for bulk requests (a few MB to tens of MB, well under
    # `http.max_content_length`, 100 MB) and inside the 10 MiB request cap of Amazon
    # OpenSearch Service's small instances. 500 events (elasticsearch-py's `chunk_size`)
    # keep a reply whose every item failed within the 1 MiB the transport reads of it.
    limits = Limits(max_events=500, max_body_bytes=10 * 1024 * 1024)
    default_path = "/_bulk"
    default_query: Mapping[str, str] = MappingProxyType({"filter_path": FILTER_PATH})

    def __init__(self, options: ElasticsearchOptions | None = None) -> None:
        options = options or ElasticsearchOptions()
        self._pattern = options.index
        self._dated = "%" in options.index
        self._by_hour = "%H" in options.index
        self._fixed = orjson.dumps(datetime(1970, 1, 1, tzinfo=UTC).strftime(options.index))
        self._names: dict[str, bytes] = {}  # date (or hour) -> JSON-quoted index name
        self._tail = b"}}\n"
        if options.pipeline is not None:
            self._tail = b',"pipeline":' + orjson.dumps(options.pipeline) + b"}}\n"

    # -- the request ---------------------------------------------------------------------

    def encode(self, lines: Sequence[bytes]) -> Payload:
        # One growing buffer: each part is copied in as it is made, rather than hundreds of
        # small `orjson.dumps` results held for a final join (each held one costs far more).
        body = bytearray()
        dated, tail, fixed = self._dated, self._tail, _CREATE + self._fixed
        now: str | None = None
        for line in lines:
            event = parse_event(line)
            stamp = event.get("timestamp")
            if not isinstance(stamp, str):  # not one of the bridge's events: stamp it now
                now = now or datetime.now(UTC).isoformat(timespec="microseconds")[:26] + "Z"
                stamp = now
            if dated:
                body += _CREATE
                body += self._index(stamp)
            else:
                body += fixed
            event_id = event.get("event_id")
            if isinstance(event_id, str) and event_id:
                body += b',"_id":'
                body += orjson.dumps(event_id)
            body += tail
            # `@timestamp` is spliced into the line as it is when the line is an object with
            # keys and without its own `@timestamp` (a duplicate key the cluster refuses).
            if (
                line[:1] == b"{"
                and line[-1:] == b"\n"
                and "@timestamp" not in event
                and (len(event) > 1 or (bool(event) and not _fallback(line, event)))
            ):
                body += b'{"@timestamp":'
                body += orjson.dumps(stamp)
                body += b","
                body += line[1:]
            else:
                body += _document(event, stamp)
        return Payload(bytes(body), self.content_type)

    def _index(self, stamp: str) -> bytes:
        """The JSON-quoted index name for an event of time `stamp` (RFC 3339)."""
        if not self._dated:
            return self._fixed
        standard = len(stamp) == 27 and stamp[26] == "Z" and stamp[19] == "."
        key = stamp[: 13 if self._by_hour else 10] if standard else stamp
        name = self._names.get(key)
        if name is None:
            seconds = epoch_ns(stamp, time.time_ns()) // 1_000_000_000
            moment = datetime.fromtimestamp(seconds, UTC)
            name = orjson.dumps(moment.strftime(self._pattern))
            if standard:
                if len(self._names) >= 64:  # a day's hours, or a backlog's days
                    self._names.clear()
                self._names[key] = name
        return name

    # -- the reply -----------------------------------------------------------------------

    def interpret(self, status: int, body: bytes) -> Outcome:
        try:
            reply = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _salvage(body)
        if not isinstance(reply, dict):
            return _unreadable("the reply is not a JSON object")
        if reply.get("errors") is False:
            return DELIVERED  # Elasticsearch: no operation failed
        items = reply.get("items")
        if not isinstance(items, list):
            return _unreadable("the reply has neither `errors: false` nor `items`")
        return _settle(items, complete=True)

    def secrets(self) -> Sequence[str]:
        return ()

    def probe(self, url: str) -> Probe:
        """An empty bulk request: the cluster answers 400 "no requests added" once the
        credentials may use the bulk API (nothing is indexed); 401/403 when they may not.
        Not `GET /`: an ingest-only API key lacks the `monitor` privilege it needs."""
        headers = {"Content-Type": self.content_type}
        return Probe("POST", headers=headers, body=b"\n", accepted=frozenset({400}))


def _fallback(line: bytes, event: dict[str, Any]) -> bool:
    """Is `event` parse_event's stand-in for a line that is not a JSON object?"""
    if len(event) != 1 or "message" not in event:
        return False
    return bool(event["message"] == line.decode("utf-8", "replace").rstrip("\n"))


def _document(event: dict[str, Any], stamp: str) -> bytes:
    """The event re-encoded as a document: `@timestamp` added unless it has its own."""
    if "@timestamp" in event:
        return orjson.dumps(event) + b"\n"
    return orjson.dumps({"@timestamp": stamp, **event}) + b"\n"


def _unreadable(why: str) -> RetryLater:
    return RetryLater(
        f"Elasticsearch bulk reply unreadable, batch retried: {why} (a url with its own "
        f"filter_path must keep {FILTER_PATH})"
    )


def _salvage(body: bytes) -> Outcome:
    """A reply that is not whole JSON (cut at the transport's 1 MiB): the items read whole
    are settled, every later one is retried."""
    found = _ITEMS.search(body)
    head = body if found is None else body[: found.start()]
    if _ERRORS_FALSE.search(head):
        return DELIVERED
    if found is None:
        return _unreadable("not JSON, and no item list")
    text = body[found.end() :].decode("utf-8", "replace")
    decoder = json.JSONDecoder()
    items: list[Any] = []
    at, complete = 0, False
    while True:
        while at < len(text) and text[at] in " \t\r\n,":
            at += 1
        if text[at : at + 1] == "]":
            complete = True
            break
        try:
            item, at = decoder.raw_decode(text, at)
        except ValueError:
            break
        items.append(item)
    return _settle(items, complete=complete)


def _settle(items: list[Any], *, complete: bool) -> Outcome:
    """The outcome of the items of a reply, in request order (`complete`: the list is whole)."""
    retry: list[int] = []
    busy = 429  # the status a retry of every item is reported with
    reject: list[tuple[int, int, str]] = []
    for i, item in enumerate(items):
        op, result = next(iter(item.items())) if isinstance(item, dict) and item else ("", None)
        if not isinstance(result, dict) or type(result.get("status")) is not int:
            # A filter_path without items.*.status drops whole items: positions are lost.
            return _unreadable(f"item {i} has no status")
        status: int = result["status"]
        if 200 <= status < 300 or (status == 409 and op == "create"):
            continue  # 409 on create: a copy already indexed (a retry of a batch that landed)
        kind, reason = _error(result.get("error"))
        if status == 429 or status >= 500 or kind == "es_rejected_execution_exception":
            retry.append(i)
            busy = status
        else:
            reject.append((i, status, f"{kind}: {reason}" if reason else kind))
    if complete and items and len(retry) == len(items):
        return RetryLater(f"Elasticsearch refused all {len(items)} items for now", busy)
    return PartlyDelivered(
        tuple(retry),
        tuple(i for i, _, _ in reject),
        reject[0][1] if reject else 200,
        _detail(reject),
        unread_from=len(items),  # none past the list read: retried, never taken as delivered
    )


def _detail(reject: list[tuple[int, int, str]]) -> str:
    """The reasons of the rejected items, each once, with the items (by position) it refused:
    every dead-letter record gets this text, cut to an excerpt, so it stays short."""
    grouped: dict[tuple[int, str], list[int]] = {}
    for i, status, why in reject:
        grouped.setdefault((status, why), []).append(i)
    return "; ".join(
        f"{status} {why} (item{'s' if len(at) > 1 else ''} {', '.join(map(str, at[:10]))}"
        f"{', ...' if len(at) > 10 else ''})"
        for (status, why), at in grouped.items()
    )


def _error(error: object) -> tuple[str, str]:
    """The type and reason of an item's `error` (an object, or a bare string from old nodes)."""
    if isinstance(error, dict):
        kind, reason = error.get("type"), error.get("reason")
        return str(kind or "error"), str(reason or "")[:_REASON_CHARS]
    if isinstance(error, str):
        return "error", error[:_REASON_CHARS]
    return "error", ""

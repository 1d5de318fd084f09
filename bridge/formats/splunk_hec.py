"""`splunk_hec`: Splunk's HTTP Event Collector, `POST /services/collector/event`.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

A batch is a stream of JSON objects, one per event, newline-separated (HEC reads concatenated
objects, not an array). Each object is HEC's envelope: `time` (epoch seconds with the event's
own microseconds; at the top level, where HEC takes `_time` from), `host` (the event's
`host.name` unless the `host` option is set), `source`, `sourcetype`, `index`, indexed
`fields` (flat strings, only the keys the `fields` option names) and `event`, the bridge's
event object itself, as the emitter wrote it. The token goes in `Authorization: Splunk <token>`.

Replies (Splunk's "Troubleshoot HTTP Event Collector" table): 200 `{"text":"Success","code":0}`
means HEC accepted the request, not that it is indexed yet (indexer acknowledgement is not
used). A refused request names a HEC code in its JSON body; `read_reply` turns it into the
outcome: a 400 naming `invalid-event-number` n for a bad event (codes 6, 12, 13, 15): HEC
stopped at event n, so events before it were taken, n is dead-lettered and the rest are sent
again; token errors (401/403, codes 1-4) and request-wide 400s are refused with HEC's text;
503 (busy, codes 9 and 18-20) and 5xx are retried; 413 is split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.formats.base import NO_QUERY, Limits, OptionError, Payload, Probe
from bridge.formats.fields import epoch_ns, parse_event
from bridge.outcome import DELIVERED, Outcome, PartlyDelivered, Rejected, StatusPolicy

__all__ = ["DEFAULT_PATH", "MAX_CONTENT_LENGTH", "SplunkHecFormat", "SplunkHecOptions"]

DEFAULT_PATH = "/services/collector/event"
MAX_CONTENT_LENGTH = 1_000_000
"""HEC's `max_content_length` ([http_input] in limits.conf): 1 MB on Splunk Cloud Platform and
on Splunk Enterprise before 6.5 (800 MiB since); a larger request is answered 413."""

_TOKEN_CODES = {1: "disabled", 2: "missing", 3: "malformed", 4: "unknown"}
_EVENT_CODES = frozenset({6, 12, 13, 15})  # about one event: invalid-event-number names it
_NO_TIME = -(1 << 80)


@dataclass(frozen=True, slots=True)
class SplunkHecOptions:
    """`token`: the HEC token (`${SPLUNK_HEC_TOKEN}`); empty: set `Authorization` yourself in
    the sink's `headers`. `host`: every event's host (default: its `host.name`). `source`,
    `index`: omitted when unset (the token's defaults apply). `fields`: event keys sent as
    indexed fields (none by default: see the README). `max_body_bytes`: the HEC input's
    `max_content_length`."""

    token: str = ""
    host: str | None = None
    source: str | None = None
    sourcetype: str = "_json"
    index: str | None = None
    fields: tuple[str, ...] = ()
    max_body_bytes: int = MAX_CONTENT_LENGTH

    def __post_init__(self) -> None:
        if any(c.isspace() for c in self.token):
            raise OptionError("token", "(hidden)", "a HEC token without spaces (a GUID)")
        if not self.sourcetype:
            raise OptionError("sourcetype", self.sourcetype, "a sourcetype name, e.g. _json")
        for key in self.fields:
            if not key:
                raise OptionError("fields", self.fields, "names of event keys, none empty")


def _flat(value: Any) -> str | None:
    """An indexed field's value: a string (HEC's `fields` are flat); None: left out."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def _time_prefix(second: str) -> bytes | None:
    """`"time":<epoch seconds>.` for a `YYYY-MM-DDTHH:MM:SS` (UTC) second; None when it is
    unreadable or before the epoch (HEC stamps the arrival time then, as for any event whose
    time is). The event's six digits of microseconds follow it as they are."""
    ns = epoch_ns(second + ".000000Z", _NO_TIME)
    return b'"time":%d.' % (ns // 1_000_000_000) if ns >= 0 else None


class SplunkHecFormat:
    """HEC event envelopes, one JSON object per line; refusals read by HEC code."""

    name = "splunk_hec"
    content_type = "application/json"
    default_path = DEFAULT_PATH
    default_query = NO_QUERY

    def __init__(self, options: SplunkHecOptions | None = None) -> None:
        self.options = options = options or SplunkHecOptions()
        self.limits = Limits(max_body_bytes=options.max_body_bytes)
        self.policy = StatusPolicy(read_reply=read_reply)
        self._headers = {"Authorization": f"Splunk {options.token}"} if options.token else {}
        self._host = b'"host":' + orjson.dumps(options.host) if options.host else None
        meta = {"source": options.source, "sourcetype": options.sourcetype}
        meta["index"] = options.index
        self._meta = b",".join(
            b'"%s":%s' % (key.encode(), orjson.dumps(value))
            for key, value in meta.items()
            if value is not None
        )
        self._fields = options.fields

    def encode(self, lines: Sequence[bytes]) -> Payload:
        # One growing buffer: each piece is copied in as it is made (no per-event lists and
        # joins). Per batch: the `"time":<seconds>.` of each second and the `"host"` of each
        # host name, which nearly all of a batch's events share.
        body = bytearray()
        seconds: dict[str, bytes | None] = {}
        hosts: dict[str, bytes] = {}
        meta, fields_wanted = self._meta, self._fields
        for line in lines:
            event = parse_event(line)
            if len(event) == 1 and "message" in event:  # not an object: sent as {"message"}
                raw = orjson.dumps(event)
            else:
                raw = line[:-1] if line[-1:] == b"\n" else line
            body += b"{"
            stamp = event.get("timestamp")
            if (
                type(stamp) is str
                and len(stamp) == 27
                and stamp[19] == "."
                and stamp[26] == "Z"
                and stamp[20:26].isdigit()
                and stamp[20:26].isascii()
            ):  # the emitter's shape: the second read once, its digits copied as they are
                second = seconds.get(stamp[:19], b"")
                if second == b"":
                    second = seconds[stamp[:19]] = _time_prefix(stamp[:19])
                if second is not None:
                    body += second
                    body += stamp[20:26].encode()
                    body += b","
            else:
                ns = epoch_ns(stamp, _NO_TIME)
                if ns >= 0:  # none or unreadable: HEC stamps the arrival time
                    body += b'"time":%d.%06d,' % divmod(ns // 1000, 1_000_000)
            if self._host is not None:
                body += self._host
                body += b","
            elif isinstance(host := event.get("host.name"), str) and host:
                item = hosts.get(host)
                if item is None:
                    item = hosts[host] = b'"host":' + orjson.dumps(host) + b","
                body += item
            body += meta
            if fields_wanted:
                fields = {k: v for k in fields_wanted if (v := _flat(event.get(k))) is not None}
                if fields:
                    body += b',"fields":'
                    body += orjson.dumps(fields)
            body += b',"event":'
            body += raw
            body += b"}\n"
        return Payload(bytes(body), self.content_type, self._headers)

    def interpret(self, status: int, body: bytes) -> Outcome:
        """A 2xx is `{"text":"Success","code":0}`: every event accepted (not yet indexed)."""
        return DELIVERED

    def secrets(self) -> Sequence[str]:
        return (self.options.token,) if self.options.token else ()

    def probe(self, url: str) -> Probe:
        """An empty POST: HEC answers 400 code 5 "No data" once the token is good (nothing is
        indexed), 401/403 when it is not."""
        return Probe("POST", headers=self._headers, body=b"", accepted=frozenset({400}))


def read_reply(status: int, *, where: str, body: str, events: int) -> Outcome | None:
    """What HEC's error body says (its status code table), or None: the status rules.

    HEC parses a batch in order and stops at the first bad event, answering 400 with its
    0-based `invalid-event-number`; the events before it were already taken (such a 400 even
    carries an `ackId` for them when acknowledgement is on), so only it is dead-lettered and
    those after it, never read, are sent again. Codes about the request itself (token,
    index, channel) refuse it whole: every event would fail the same way.
    """
    if status not in (400, 401, 403):
        return None  # 413 split, 429/5xx retried (code 9 "Server is busy" is a 503)
    try:
        reply = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(reply, dict) or not isinstance(code := reply.get("code"), int):
        return None
    text = f"HEC code {code} {reply.get('text', '')!s}".strip()
    if code in _TOKEN_CODES:
        reason = (
            f"{where}: HTTP {status}, {text}: the HEC token is {_TOKEN_CODES[code]}; set "
            "format_options.token (or an `Authorization: Splunk <token>` header) to an "
            "enabled token"
        )
        return Rejected(reason, status, body, "rejected_4xx")
    bad = reply.get("invalid-event-number")
    if code in _EVENT_CODES and isinstance(bad, int) and 0 <= bad < events:
        detail = f"{text} (invalid-event-number {bad})"
        return PartlyDelivered(tuple(range(bad + 1, events)), (bad,), status, detail)
    if code == 7:
        text += ": the token does not allow format_options.index"
    return Rejected(f"{where}: HTTP {status}, {text}, batch refused", status, body, "rejected_4xx")

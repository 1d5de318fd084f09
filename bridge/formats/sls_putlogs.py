"""`sls_putlogs`: Alibaba Cloud Log Service (SLS) PutLogs, the signed write API.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

`POST /logstores/{logstore}/shards/lb` on the project's endpoint (`url`,
`https://{project}.{endpoint}`), the API the official SDKs use (web tracking, the `sls`
format in `bridge.formats.sls`, needs an anonymously writable logstore). The body is one
protobuf `LogGroup` (`Logs` of `Time`, `Contents` {Key, Value} and `Time_ns`; `Topic`,
`Source`, `LogTags`), encoded here by hand: it is five small messages, and the protobuf
runtime is no dependency of the bridge. Each event is one log: its capture time (`timestamp`)
as `Time` and `Time_ns`, its fields as contents, strings as they are and anything else as its
JSON text. The body is deflated (`x-log-compresstype: deflate`, zlib) with
`x-log-bodyrawsize` the size before.

Every request is signed as the SDK's `AuthV1` signs it: `Authorization: LOG <AccessKeyId>:
<base64 HMAC-SHA1>` over the verb, Content-MD5 (upper-case hex MD5 of the body sent),
Content-Type, Date (RFC 1123, GMT), the `x-log-`/`x-acs-` headers sorted, and the resource.
`encode` runs for every attempt, so a retry carries a fresh Date (SLS refuses one more than
15 minutes off). One bad log fails the whole request; a quota error is a 403 worth retrying
(`bridge.formats.sls.POLICY`). At most 4096 logs and 5 MiB of LogGroup per request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from bridge.formats.base import NO_QUERY, Limits, OptionError, Payload, Probe
from bridge.formats.fields import epoch_ns, parse_event
from bridge.formats.sls import API_VERSION, POLICY, check_logstore, deflate, source_of
from bridge.outcome import DELIVERED, Outcome

__all__ = ["SlsPutLogsFormat", "SlsPutLogsOptions", "log_group", "signature"]

CONTENT_TYPE = "application/x-protobuf"
# Fields whose value differs in every event: never found again in a batch's cache.
_UNIQUE = frozenset({"timestamp", "event_id", "request_id", "trace_id", "span_id"})
# Not float: 0.0 == -0.0, yet they encode differently.
_SCALARS = frozenset({int, bool, type(None)})
_SMALL = [bytes((n,)) for n in range(128)]  # most lengths in a log fit one varint byte
_VISIBLE = re.compile(r"[!-~]*")  # visible ASCII: what a header value can carry
_LAST_TIME_NS = (1 << 32) * 1_000_000_000  # past 2106-02-07: no uint32 of seconds holds it


def _varint(n: int) -> bytes:
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n > 127:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _pair(key: bytes, value: bytes) -> bytes:
    """A `Log.Content` or a `LogTag`: Key = 1, Value = 2, both length-delimited."""
    return b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(len(value)) + value


def _head(heads: dict[str, bytes], key: str) -> bytes:
    """The start of a Content with Key `key` (up to the Value's key), kept in `heads`."""
    encoded = key.encode()
    head = heads[key] = b"\x0a" + _varint(len(encoded)) + encoded + b"\x12"
    return head


def _content(head: bytes, raw: bytes) -> bytes:
    """`Log.Contents` (field 2) holding the Content that starts with `head` (its encoded Key
    and the Value's key) and has the Value `raw`."""
    size = len(raw)
    inner = len(head) + 1 + size
    if size < 0x80 and inner < 0x80:  # the usual field: every length one byte, one formatting
        return b"\x12%c%b%c%b" % (inner, head, size, raw)
    length = _varint(size)
    return b"\x12" + _varint(len(head) + len(length) + size) + head + length + raw


class _Contents:
    """The encoded `Log.Contents` of one batch, by the (key, value) pairs of `event.items()`.

    Most fields (level, event, service, route, status, ...) repeat across a batch, so each is
    encoded once and an event is mostly one dict lookup per field. `stored` holds the string
    values (1, 1.0 and True are equal keys yet encode differently; no string equals them, so
    they never find a stored pair), except fields unique to every event; `scalars` holds
    ints, bools and nulls by (key, type, value).
    """

    __slots__ = ("heads", "scalars", "stored")

    def __init__(self) -> None:
        self.heads: dict[str, bytes] = {}  # a key's encoded start of a Content
        self.stored: dict[tuple[str, Any], bytes] = {}
        self.scalars: dict[tuple[str, type, Any], bytes] = {}

    def encode(self, pair: tuple[str, Any]) -> bytes:
        """The Contents field of `pair`, remembered when its value may come again."""
        key, value = pair
        kind = type(value)
        head = self.heads.get(key) or _head(self.heads, key)
        if kind is str:
            text = _content(head, value.encode())
            if key not in _UNIQUE:
                self.stored[pair] = text
            return text
        if kind not in _SCALARS:
            return _content(head, orjson.dumps(value))
        data = self.scalars.get(typed := (key, kind, value))
        if data is None:
            data = self.scalars[typed] = _content(head, orjson.dumps(value))
        return data


def log_group(
    lines: Sequence[bytes], topic: str, source: str, tags: dict[str, str], now_ns: int
) -> bytes:
    """The protobuf `LogGroup` of these event lines (the field order the SDK writes).

    Log: Time = 1 (varint seconds), Contents = 2, Time_ns = 4 (fixed32). LogGroup: Logs = 1,
    Topic = 3, Source = 4, LogTags = 6. `now_ns` stands in for an event without a timestamp.
    """
    varint, contents = _varint, _Contents()
    found, content = contents.stored.get, contents.encode
    out = bytearray()
    first: dict[str, object] | None = None
    for line in lines:
        event = parse_event(line)
        if first is None:
            first = event
        ns = epoch_ns(event.get("timestamp"), now_ns)
        if ns >= _LAST_TIME_NS:  # `Time` is a uint32: SLS would read another time
            ns = now_ns
        try:
            fields = b"".join([found(pair) or content(pair) for pair in event.items()])
        except TypeError:  # a list or an object among the values: no lookup for them
            fields = b"".join([content(pair) for pair in event.items()])
        seconds = varint(ns // 1_000_000_000)
        out += b"\x0a"
        out += varint(len(seconds) + len(fields) + 6)  # Time's and Time_ns's keys: 6 bytes
        out += b"\x08"
        out += seconds
        out += fields
        out += b"\x25"
        out += (ns % 1_000_000_000).to_bytes(4, "little")
    for number, text in ((b"\x1a", topic), (b"\x22", source_of(source, first or {}))):
        data = text.encode()
        out += number + varint(len(data)) + data
    for key, value in tags.items():
        tag = _pair(key.encode(), value.encode())
        out += b"\x32" + varint(len(tag)) + tag
    return bytes(out)


def signature(
    secret: str, headers: dict[str, str], content_type: str, resource: str, verb: str = "POST"
) -> str:
    """The SLS v1 signature of a request with these headers (`Content-MD5` unless it has no
    body, `Date` and the lower-case `x-log-`/`x-acs-` ones) to `resource` (a path without
    query, as PutLogs has none)."""
    signed = "".join(
        f"{k}:{v}\n"
        for k, v in sorted(headers.items())
        if k.startswith(("x-log-", "x-acs-")) and not k.startswith("x-log-meta-")
    )
    md5 = headers.get("Content-MD5", "")
    text = f"{verb}\n{md5}\n{content_type}\n{headers['Date']}\n{signed}{resource}"
    digest = hmac.new(secret.encode(), text.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@dataclass(frozen=True, slots=True)
class SlsPutLogsOptions:
    """`logstore`, `access_key_id`, `access_key_secret` (required; keys from `${ENV}`),
    `security_token` (an STS token, sent as `x-acs-security-token`), `topic`, `source`
    (the events' `host.name` when empty), `tags` (the LogGroup's LogTags), `compress`."""

    logstore: str = ""
    access_key_id: str = ""
    access_key_secret: str = ""
    security_token: str = ""
    topic: str = ""
    source: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    compress: bool = True

    def __post_init__(self) -> None:
        check_logstore(self.logstore)
        for name in ("access_key_id", "access_key_secret"):
            if not getattr(self, name):
                raise OptionError(
                    name, "", f'the {name} of a RAM user (say "${{SLS_{name.upper()}}}")'
                )
        for name in ("access_key_id", "access_key_secret", "security_token"):
            # Sent in headers or signing them: a line break (a key file's last newline) would
            # fail every request at send time, retried until the events are dropped.
            if not _VISIBLE.fullmatch(getattr(self, name)):
                raise OptionError(name, "(hidden)", "a key without spaces or control characters")


class SlsPutLogsFormat:
    """The batch as one signed, deflated protobuf LogGroup."""

    name = "sls_putlogs"
    content_type = CONTENT_TYPE
    policy = POLICY
    limits = Limits(max_events=4096, max_body_bytes=5 * 1024 * 1024)
    default_query = NO_QUERY

    def __init__(self, options: SlsPutLogsOptions) -> None:
        self._options = options
        self.default_path = f"/logstores/{options.logstore}/shards/lb"
        self._fixed = {"x-log-apiversion": API_VERSION, "x-log-signaturemethod": "hmac-sha1"}
        if options.security_token:
            self._fixed["x-acs-security-token"] = options.security_token

    def encode(self, lines: Sequence[bytes]) -> Payload:
        options = self._options
        now = time.time()
        raw = log_group(lines, options.topic, options.source, options.tags, int(now * 1e9))
        headers = dict(self._fixed)
        if options.compress:
            body = deflate(raw, headers)
        else:
            body = raw
            headers["x-log-bodyrawsize"] = str(len(raw))
        headers["Content-MD5"] = hashlib.md5(body, usedforsecurity=False).hexdigest().upper()
        headers["Date"] = formatdate(now, usegmt=True)
        sign = signature(options.access_key_secret, headers, CONTENT_TYPE, self.default_path)
        headers["Authorization"] = f"LOG {options.access_key_id}:{sign}"
        headers["x-log-date"] = headers["Date"]  # unsigned, as the SDK: for proxies dropping Date
        return Payload(body, CONTENT_TYPE, headers, compressible=False, raw_size=len(raw))

    def interpret(self, status: int, body: bytes) -> Outcome:
        return DELIVERED

    def secrets(self) -> Sequence[str]:
        return [s for s in (self._options.access_key_secret, self._options.security_token) if s]

    def probe(self, url: str) -> Probe:
        """A signed `GET /logstores/{logstore}` (GetLogStore: reads, stores nothing). 200: the
        keys are good; a write-only RAM user gets 403 `Unauthorized` with good keys, so a 403
        is shown as it is rather than judged (`SignatureNotMatch` names bad keys)."""
        options = self._options
        resource = f"/logstores/{options.logstore}"
        headers = {**self._fixed, "Date": formatdate(time.time(), usegmt=True)}
        sign = signature(options.access_key_secret, headers, "", resource, verb="GET")
        headers["Authorization"] = f"LOG {options.access_key_id}:{sign}"
        parts = urlsplit(url)
        target = urlunsplit((parts.scheme, parts.netloc, resource, "", ""))
        return Probe("GET", target, headers, refused=frozenset({401}), accepted=frozenset({200}))

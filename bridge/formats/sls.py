"""`sls`: Alibaba Cloud Log Service (SLS) web tracking, `POST /logstores/{logstore}/track`.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

The PutWebtracking API: `url` is the project's endpoint (`https://{project}.{endpoint}`) and
the logstore must have web tracking switched on, which opens it to anonymous writes (no
signature, nothing secret; `sls_putlogs`, in `bridge.formats.sls_putlogs`, is the signed API).
One request is one JSON object, `{"__topic__", "__source__", "__logs__": [...], "__tags__"}`,
all of whose values are strings: each event is one log of its own fields, strings as they are
and anything else (numbers, booleans, null, nested objects) as its JSON text. SLS stamps
`__time__` with the arrival time, so the event's capture time stays in its `timestamp` field.

The body goes deflated (`x-log-compresstype: deflate`, zlib, with `x-log-bodyrawsize` the
size before): SLS documents lz4 and deflate there, never `Content-Encoding: gzip`. A request
carries at most 4096 logs and 3 MiB. All or nothing; the reply rules (quota errors are 403s
worth retrying) are `POLICY`, shared with `sls_putlogs`.
"""

from __future__ import annotations

import re
import socket
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from bridge.formats.base import NO_QUERY, Limits, OptionError, Payload, Probe
from bridge.formats.fields import parse_event
from bridge.outcome import DELIVERED, Outcome, StatusPolicy

__all__ = [
    "API_VERSION",
    "POLICY",
    "RETRY_CODES",
    "SlsFormat",
    "SlsOptions",
    "check_logstore",
    "deflate",
    "error_code",
    "source_of",
]

API_VERSION = "0.6.0"
DEFLATE_LEVEL = 1  # most of level 6's ratio on JSON for a fraction of its CPU
# The codes SLS (and its official producers' retry lists) name for throttling: a write quota
# exceeded comes back as 403, like a bad signature, so the reply's errorCode decides.
RETRY_CODES = frozenset({"WriteQuotaExceed", "ShardWriteQuotaExceed", "ExceedQuota", "ServerBusy"})
_ERROR_CODE = re.compile(r'"errorCode"\s*:\s*"([^"\\]{1,100})"')
_LOGSTORE = re.compile(r"[a-z0-9][a-z0-9_-]{0,61}[a-z0-9]")
_LOCAL_HOST = socket.gethostname()


def error_code(body: str) -> str:
    """The `errorCode` of an SLS error reply (`{"errorCode": ..., "errorMessage": ...}`), read
    from its excerpt even when the excerpt is cut short; "" when there is none."""
    match = _ERROR_CODE.search(body)
    return match.group(1) if match else ""


POLICY = StatusPolicy(retry_codes=RETRY_CODES, error_code=error_code)
"""408, 429, 5xx and the quota codes retried (whatever the status); other 4xx refused."""


def check_logstore(logstore: str) -> None:
    """OptionError unless `logstore` is a name SLS allows."""
    if not _LOGSTORE.fullmatch(logstore):
        raise OptionError(
            "logstore",
            logstore,
            "the logstore's name (2-63 lowercase letters, digits, '-' or '_', starting and "
            "ending with a letter or digit)",
        )


def source_of(source: str, event: Mapping[str, Any]) -> str:
    """`__source__`: the configured one, else the event's `host.name`, else this host."""
    if source:
        return source
    host = event.get("host.name")
    return host if isinstance(host, str) and host else _LOCAL_HOST


def deflate(raw: bytes, headers: dict[str, str]) -> bytes:
    """`raw` deflated (zlib) as SLS takes it, with its two headers added to `headers`."""
    headers["x-log-bodyrawsize"] = str(len(raw))
    headers["x-log-compresstype"] = "deflate"
    return zlib.compress(raw, DEFLATE_LEVEL)


@dataclass(frozen=True, slots=True)
class SlsOptions:
    """`logstore` (required): where the logs go. `topic` and `source`: the request's
    `__topic__` and `__source__` (source: the events' `host.name` when empty). `tags`: the
    request's `__tags__`. `compress`: deflate the body."""

    logstore: str = ""
    topic: str = ""
    source: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    compress: bool = True

    def __post_init__(self) -> None:
        check_logstore(self.logstore)


class SlsFormat:
    """The batch as one PutWebtracking body; every value a string."""

    name = "sls"
    default_query = NO_QUERY
    content_type = "application/json"
    policy = POLICY
    limits = Limits(max_events=4096, max_body_bytes=3 * 1024 * 1024)

    def __init__(self, options: SlsOptions) -> None:
        self._options = options
        self.default_path = f"/logstores/{options.logstore}/track"

    def encode(self, lines: Sequence[bytes]) -> Payload:
        dumps = orjson.dumps
        logs = []
        for line in lines:
            event = parse_event(line)
            logs.append(
                {k: v if isinstance(v, str) else dumps(v).decode() for k, v in event.items()}
            )
        options = self._options
        raw = dumps(
            {
                "__topic__": options.topic,
                "__source__": source_of(options.source, logs[0]),
                "__logs__": logs,
                "__tags__": options.tags,
            }
        )
        headers = {"x-log-apiversion": API_VERSION}
        if not options.compress:
            headers["x-log-bodyrawsize"] = str(len(raw))
            return Payload(raw, self.content_type, headers, compressible=False)
        body = deflate(raw, headers)
        return Payload(body, self.content_type, headers, compressible=False, raw_size=len(raw))

    def interpret(self, status: int, body: bytes) -> Outcome:
        return DELIVERED

    def secrets(self) -> Sequence[str]:
        return ()

    def probe(self, url: str) -> Probe:
        """Web tracking has no harmless call (its one request writes a log): a HEAD, which
        shows the project endpoint answers."""
        return Probe()

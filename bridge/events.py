"""The event envelope and the request context, captured on the request thread.

Everything here runs inside a signal receiver, so it reads as little as it can: the request is
read once per request from the WSGI environ (a plain dict) and the result is cached in that
environ for every later event of the same request; ids and timestamps avoid `uuid` and
`datetime` (each costs several microseconds).
"""

from __future__ import annotations

import random
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any
from urllib.parse import unquote

from flask.globals import _cv_app, _cv_request

from bridge.correlation import REQUEST_ID_KEY, header_key, incoming_request_id, trace_context
from bridge.redaction import scrub_known

__all__ = [
    "ENVELOPE_KEYS",
    "ENVELOPE_ORDER",
    "REQUEST_CACHE_KEY",
    "REQUEST_CONTEXT_KEYS",
    "REQUEST_START_KEY",
    "FinishedResponse",
    "exception_fields",
    "request_fields",
    "request_fields_of",
    "request_secrets",
    "status_level",
    "timestamp_and_id",
]

ENVELOPE_ORDER = (
    "timestamp",
    "level",
    "event",
    "signal",
    "event_id",
    "service.name",
    "host.name",
    "process.pid",
)
ENVELOPE_KEYS = frozenset(ENVELOPE_ORDER)
# What the bridge says about the request an event belongs to: like the envelope, never taken
# from a signal argument or a log record's `extra` (inside a request or not).
REQUEST_CONTEXT_KEYS = frozenset(
    {
        "request_id",
        "http.request.method",
        "url.path",
        "url.query",
        "http.route",
        "client.address",
        "user_agent.original",
        "trace_id",
        "span_id",
        "user.id",
    }
)
REQUEST_START_KEY = "bridge.request_start"
_DEFAULT_ID_HEADERS = (header_key("X-Request-ID"),)  # without the WSGI wrapper's settings
REQUEST_CACHE_KEY = "bridge.request_fields"
_MAX_HEADER_CHARS = 512
_MAX_PATH_CHARS = 2048
_MAX_STACK_CHARS = 16 * 1024
_MAX_MESSAGE_CHARS = 4096
HOST_NAME = socket.gethostname()


# --- time and ids -----------------------------------------------------------------------------


_THREE_DIGITS = tuple(f"{n:03d}" for n in range(1000))  # int formatting costs ~2k instructions


class _ClockState:
    """What the last calls formatted, so that most calls format only the microseconds. Each
    pair is replaced whole, never changed in place: a thread formatting another second than
    its neighbour (the end of one request, an event of another) reads one consistent pair."""

    second: tuple[int, str] = (-1, "")  # (second, "2026-11-25T08:30:00.")
    stamp: tuple[int, str] = (-1, "")  # (ms, "2026-11-25T08:30:00.123"): up to the millisecond
    id_ms: tuple[int, str] = (0, "")  # (ms, "0193abcd-ef01-7"): the id's time and version
    sequence = 0


_clock = _ClockState()


def timestamp_and_id(now_ns: int | None = None) -> tuple[str, str]:
    """One clock read for both: the RFC 3339 timestamp and a UUIDv7 `event_id`.

    `now_ns` (from `time.time_ns()`) is the moment an event was captured, when it is built
    later (at the end of its request); the clock is read when it is not given.

    The timestamp is UTC with microseconds (`2026-11-25T08:30:00.123456Z`), the event's own.
    The id is a UUIDv7 (RFC 9562): 48-bit Unix milliseconds, a 12-bit sequence in `rand_a`
    that restarts every millisecond (section 6.2, method 1; when it runs out the id borrows
    the next millisecond), and 62 random bits. Ids are made in the order events are built,
    so one thread's ids sort in that order: an event built after a later one (the end of a
    request, after another thread's event) takes that later millisecond for its id. No lock:
    threads racing on the state may share a sequence value, and the random bits still keep
    their ids apart (`random` is reseeded in forked children by the standard library). Both
    are formatted once per millisecond and completed from tables: about 1 us for both,
    against about 5 us for `uuid.uuid4()` alone.
    """
    clock = _clock
    micros = (time.time_ns() if now_ns is None else now_ns) // 1000
    ms = micros // 1000
    id_ms, id_prefix = clock.id_ms
    if ms > id_ms:
        sequence = 0
        id_ms = ms
        id_prefix = ""
    else:
        sequence = clock.sequence + 1
        if sequence > 0xFFF:
            id_ms, sequence, id_prefix = id_ms + 1, 0, ""
    if not id_prefix:
        hex_ms = f"{id_ms:012x}"
        id_prefix = f"{hex_ms[:8]}-{hex_ms[8:]}-7"
        clock.id_ms = (id_ms, id_prefix)
    clock.sequence = sequence
    stamp_ms, stamp_prefix = clock.stamp
    if ms != stamp_ms:
        second, millis = divmod(ms, 1000)
        known_second, second_text = clock.second
        if second != known_second:
            second_text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
            clock.second = (second, second_text)
        stamp_prefix = second_text + _THREE_DIGITS[millis]
        clock.stamp = (ms, stamp_prefix)
    # "sss-vrrr-rrrrrrrrrrrr": sequence, variant 0b10 and 62 random bits, as 10 bytes of hex
    tail = (
        ((sequence << 64) | 0x8000000000000000 | random.getrandbits(62))
        .to_bytes(10, "big")
        .hex("-", 6)
    )
    return (
        stamp_prefix + _THREE_DIGITS[micros % 1000] + "Z",
        f"{id_prefix}{tail[1:4]}-{tail[4:]}",
    )


# --- request context --------------------------------------------------------------------------


def _wsgi_text(value: str) -> str:
    """WSGI passes paths as latin-1 'bytes in a str'; recover the UTF-8 the client sent."""
    if value.isascii():
        return value
    return value.encode("latin-1", "replace").decode("utf-8", "replace")


def _header(environ: Mapping[str, Any], key: str) -> str | None:
    value = environ.get(key)
    if not value or not isinstance(value, str):
        return None
    return _wsgi_text(value[:_MAX_HEADER_CHARS])


def redact_query(query: str, is_sensitive: Callable[[str], bool]) -> str:
    """The query string with the values of sensitive parameters replaced by [REDACTED]."""
    parts = []
    for part in query.split("&"):
        name, sep, _value = part.partition("=")
        if sep and is_sensitive(unquote(name)):
            part = f"{name}=[REDACTED]"
        parts.append(part)
    return "&".join(parts)


def redact_path(
    path: str, view_args: Mapping[str, Any] | None, is_sensitive: Callable[[str], bool]
) -> str:
    """The path with the values of sensitive URL variables (`/reset/<token>`) replaced.

    Only whole segments are replaced (a `path` converter's value may span several), so a short
    value never hides an innocent part of the path.
    """
    if not view_args:
        return path
    for name, value in view_args.items():
        if not is_sensitive(name) or not isinstance(value, str | int) or isinstance(value, bool):
            continue
        text = str(value).strip("/")
        if not text:
            continue
        segments = path.split("/")
        wanted = text.split("/")
        for start in range(len(segments) - len(wanted) + 1):
            if segments[start : start + len(wanted)] == wanted:
                segments[start : start + len(wanted)] = ["[REDACTED]"]
                break
        path = "/".join(segments)
    return path


def request_fields(
    environ: MutableMapping[str, Any],
    route: str | None,
    is_sensitive: Callable[[str], bool],
    view_args: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fields describing the current request, computed once and cached in its environ.

    Reads the environ when the first event of the request is captured, so middleware that ran
    before (ProxyFix rewriting REMOTE_ADDR) is already reflected. The request id is the one the
    WSGI wrapper chose (`bridge.correlation`); the trace ids, the active span's or the
    `traceparent` header's. The values of sensitive URL
    variables (`view_args`, as routing matched them) are redacted in `url.path`.
    """
    cached: dict[str, Any] | None = environ.get(REQUEST_CACHE_KEY)
    if cached is not None:
        if route is not None and "http.route" not in cached:
            cached["http.route"] = route
            cached["url.path"] = redact_path(cached["url.path"], view_args, is_sensitive)
        return cached
    request_id = environ.get(REQUEST_ID_KEY)  # chosen by the WSGI wrapper, if it saw it
    if not isinstance(request_id, str):
        request_id = incoming_request_id(environ, _DEFAULT_ID_HEADERS)
    fields: dict[str, Any] = {
        "request_id": request_id,
        "http.request.method": environ.get("REQUEST_METHOD", ""),
        "url.path": _wsgi_text(
            (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))[:_MAX_PATH_CHARS]
        ),
    }
    query = environ.get("QUERY_STRING")
    if query:
        fields["url.query"] = redact_query(_wsgi_text(query[:_MAX_PATH_CHARS]), is_sensitive)
    if route is not None:
        fields["http.route"] = route
        fields["url.path"] = redact_path(fields["url.path"], view_args, is_sensitive)
    client = environ.get("REMOTE_ADDR")
    if client:
        fields["client.address"] = client
    agent = _header(environ, "HTTP_USER_AGENT")
    if agent:
        fields["user_agent.original"] = agent
    trace = trace_context(environ)
    if trace is not None:
        fields["trace_id"], fields["span_id"] = trace
    environ[REQUEST_CACHE_KEY] = fields
    return fields


def request_fields_of(request: Any, is_sensitive: Callable[[str], bool]) -> dict[str, Any]:
    """`request_fields` of a Flask request: its environ, matched route and URL variables."""
    rule = request.url_rule
    return request_fields(
        request.environ, rule.rule if rule else None, is_sensitive, request.view_args
    )


def request_duration_ms(environ: Mapping[str, Any], ended: float | None = None) -> float | None:
    """Milliseconds since the bridge's WSGI middleware saw the request, if it did, until
    `ended` (a `time.perf_counter()` reading; default: now)."""
    started = environ.get(REQUEST_START_KEY)
    if not isinstance(started, float):
        return None
    return round(((time.perf_counter() if ended is None else ended) - started) * 1000.0, 3)


def status_level(status: int) -> str:
    """The level of `request.finished`: 5xx error, 4xx warning, else info."""
    return "error" if status >= 500 else "warning" if status >= 400 else "info"


class FinishedResponse:
    """`request.finished`'s level and fields, read from the response when they are needed.

    The receiver notes the response and the clock (the request's end); the status, the size
    and the duration are read when the request's events are written, from the same response
    object Flask sends, which no longer changes once `request_finished` is sent. Reading a
    response's `content_length` parses a header: done with the other events of the request,
    it costs the request less than on its own in the receiver.
    """

    __slots__ = ("ended", "environ", "response")

    def __init__(self, response: Any, environ: Mapping[str, Any] | None) -> None:
        self.response = response
        self.environ = environ
        self.ended = time.perf_counter()

    def settle(self) -> tuple[str, dict[str, Any]]:
        """(level, fields): `http.response.status_code`, `duration_ms` when the WSGI
        middleware timed the request, `http.response.body.size` when the response says."""
        response = self.response
        status = int(getattr(response, "status_code", 0))
        fields: dict[str, Any] = {"http.response.status_code": status}
        if self.environ is not None:
            duration = request_duration_ms(self.environ, self.ended)
            if duration is not None:
                fields["duration_ms"] = duration
        size = getattr(response, "content_length", None)
        if size is not None:
            fields["http.response.body.size"] = size
        return status_level(status), fields


# --- exceptions -------------------------------------------------------------------------------


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__qualname__}: str() failed>"


def exception_fields(
    exc: BaseException, scrub: Callable[[str], str] = scrub_known
) -> dict[str, str]:
    """`exception.type`, `.message` and `.stacktrace` (OpenTelemetry names) for one exception.

    The message and the stack (chained causes and notes included) are scrubbed by `scrub`
    (default: URL credentials, sensitive parameters and registered secrets hidden) before they
    are cut, so a secret is never written in part. The stack keeps its end: the innermost
    frames say the most.
    """
    cls = type(exc)
    module = cls.__module__
    name = (
        cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"
    )
    try:
        stack = "".join(traceback.format_exception(exc))
    except Exception:
        stack = ""
    # Scrubbing is linear in the text: cut a monster down first, far from where it is cut last.
    stack = scrub(stack[-4 * _MAX_STACK_CHARS :])
    if len(stack) > _MAX_STACK_CHARS:
        stack = "...\n" + stack[-_MAX_STACK_CHARS:]
    message = scrub(_safe_str(exc)[: 4 * _MAX_MESSAGE_CHARS])
    return {
        "exception.type": name,
        "exception.message": message[:_MAX_MESSAGE_CHARS],
        "exception.stacktrace": stack,
    }


_SECRETS_KEY = "_bridge_request_secrets"  # on `g`, for the app context's teardown
_MAX_SECRETS = 256


def request_secrets(is_sensitive: Callable[[str], bool]) -> list[str]:
    """The values of the current request's sensitive fields, to scrub from exception text.

    Query arguments, cookies, headers (`Authorization`, `Cookie`, `X-Api-Key`, ...), URL
    variables, and the form and JSON body only if the application already parsed them: the
    body is never read for this. Kept on `g`, so that the app context's teardown, after the
    request is gone, still knows them. Never raises; empty outside a request.
    """
    request_ctx = _cv_request.get(None)
    app_ctx = _cv_app.get(None)
    if request_ctx is None:
        found = getattr(app_ctx.g, _SECRETS_KEY, None) if app_ctx is not None else None
        return found if isinstance(found, list) else []
    req = request_ctx.request
    cached = req.__dict__  # Werkzeug caches parsed data there (`form`, `_cached_json`)
    found = []
    sources: list[Callable[[], Iterable[tuple[Any, Any]]]] = [
        lambda: req.headers.items(),
        lambda: req.args.items(multi=True),
        lambda: req.cookies.items(multi=True),
        lambda: (req.view_args or {}).items(),
    ]
    if "form" in cached:
        sources.append(lambda: cached["form"].items(multi=True))
    parsed_json = cached.get("_cached_json", (Ellipsis,))[0]
    if parsed_json is not Ellipsis:
        sources.append(lambda: _sensitive_json(parsed_json, is_sensitive, 0))
    for source in sources:
        try:
            for name, value in source():
                if len(found) < _MAX_SECRETS and is_sensitive(str(name)):
                    found.extend(_texts(value))
        except Exception:  # one unreadable source must not cost the others
            continue
    if app_ctx is not None:
        setattr(app_ctx.g, _SECRETS_KEY, found)
    return found


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, dict):  # everything under a sensitive key is secret
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [text for item in value[:32] for text in _texts(item)]
    return []


def _sensitive_json(
    value: Any, is_sensitive: Callable[[str], bool], depth: int
) -> Iterable[tuple[str, Any]]:
    """(key, value) of every sensitive key in a parsed JSON body, at any depth (bounded)."""
    if depth > 10:
        return
    if isinstance(value, dict):
        for key, item in list(value.items())[:1000]:
            if is_sensitive(str(key)):
                yield str(key), item
            else:
                yield from _sensitive_json(item, is_sensitive, depth + 1)
    elif isinstance(value, list):
        for item in value[:1000]:
            yield from _sensitive_json(item, is_sensitive, depth + 1)

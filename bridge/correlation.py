"""What ties one request's events, log lines and outgoing calls together: ids.

`request_id`: taken from the first configured incoming header that carries a valid one
(`X-Request-ID` by default, or e.g. `X-Correlation-ID` set by a load balancer), else made up
(128 random bits, hex). It is chosen once, when the WSGI wrapper sees the request, kept in its
environ (every event of the request reads it there) and in the request's `Pending` (a
`ContextVar`: code running in the request's context, a thread started with `copy_context()`
included, reads it with `bridge.request_id()`), and echoed in the response. An incoming value
is used only if it is safe to echo and to index: 1 to 128 characters of letters, digits and
`._:@/+=-` (a newline, a quote or a megabyte never reaches a response header or a log line).

`trace_id` / `span_id`: from the active OpenTelemetry span when OpenTelemetry is installed and a
span is recording this request, else from a W3C `traceparent` header
(`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`; lowercase hex, neither id all zeros,
version `ff` invalid, a later version may append fields). Anything else is ignored.

`user.id`: the logged-in user's `get_id()`, only when Flask-Login has already loaded the user
for this request (it keeps it on `g`): reading it never loads a user, and an ORM object whose
attributes are expired (which would query the database) is left alone.
"""

from __future__ import annotations

import importlib
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from flask.globals import _cv_app, _cv_request

from bridge.pending import current_pending

__all__ = [
    "REQUEST_ID_KEY",
    "current_user_id",
    "header_key",
    "incoming_request_id",
    "request_id",
    "trace_context",
]

REQUEST_ID_KEY = "bridge.request_id"  # the environ key the WSGI wrapper sets
_SAFE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16

_otel_trace: Any
try:  # optional: the ids of the active span win over the header
    _otel_trace = importlib.import_module("opentelemetry.trace")
except ImportError:  # pragma: no cover - depends on what the app installed
    _otel_trace = None


def header_key(name: str) -> str:
    """The WSGI environ key of an HTTP header name (`X-Request-ID` -> `HTTP_X_REQUEST_ID`)."""
    return "HTTP_" + name.upper().replace("-", "_")


def new_request_id() -> str:
    """128 random bits as 32 hex digits (`random`: ids need to be unique, not secret)."""
    return f"{random.getrandbits(128):032x}"


def incoming_request_id(environ: Mapping[str, Any], header_keys: Sequence[str]) -> str:
    """The first valid id among the configured headers (environ keys), or a new one."""
    for key in header_keys:
        value = environ.get(key)
        if isinstance(value, str) and _SAFE_ID.fullmatch(value):
            return value
    return new_request_id()


def trace_context(environ: Mapping[str, Any]) -> tuple[str, str] | None:
    """(trace_id, span_id) of the active OpenTelemetry span, else of a valid `traceparent`."""
    if _otel_trace is not None:
        context = _otel_trace.get_current_span().get_span_context()
        if context.is_valid:
            return f"{context.trace_id:032x}", f"{context.span_id:016x}"
    header = environ.get("HTTP_TRACEPARENT")
    if not isinstance(header, str) or len(header) > 512:
        return None
    match = _TRACEPARENT.fullmatch(header.strip())
    if match is None:
        return None
    version, trace_id, span_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id


def request_id() -> str | None:
    """The id of the current request, for views and outgoing calls (pass it on as
    `X-Request-ID`); None outside a request. The same id as in the request's events and in
    its response header."""
    pending = current_pending()
    if pending is not None and pending.request_id:
        return pending.request_id
    ctx = _cv_request.get(None)
    if ctx is None:
        return None
    found = ctx.request.environ.get(REQUEST_ID_KEY)
    return found if isinstance(found, str) else None


def current_user_id() -> str | None:
    """`get_id()` of the user Flask-Login already loaded for this request, or None (no app
    context, nobody loaded, anonymous, or an answer that would cost a database query)."""
    app_ctx = _cv_app.get(None)
    if app_ctx is None:
        return None
    user = app_ctx.g.__dict__.get("_login_user")  # Flask-Login's cache: never load it here
    if user is None:
        return None
    try:
        if not user.is_authenticated:
            return None
        state = getattr(user, "_sa_instance_state", None)  # SQLAlchemy: expired -> a query
        if state is not None and getattr(state, "expired_attributes", None):
            return None
        user_id = user.get_id()
    except Exception:
        return None
    return None if user_id is None else str(user_id)[:256]

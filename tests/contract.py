"""The documented contracts (docs/architecture.md) as data, apart from the package's constants.

Tests check the package against these, so a key the package forgot fails a test instead of
vanishing from both sides at once.
"""

from __future__ import annotations

import re

ENVELOPE = frozenset(
    {
        "timestamp",
        "level",
        "event",
        "signal",
        "event_id",
        "service.name",
        "host.name",
        "process.pid",
    }
)
REQUEST_KEYS = frozenset(
    {
        "request_id",
        "http.request.method",
        "url.path",
        "http.route",
        "client.address",
        "user_agent.original",
    }
)
# Request-context keys a signal argument or a log record's `extra` can never overwrite.
PROTECTED_REQUEST_KEYS = REQUEST_KEYS | {"url.query", "trace_id", "span_id", "user.id"}
STATS_COUNTERS = (
    "enqueued",
    "delivered",
    "retried",
    "dropped",
    "dropped_by_reason",
    "spooled",
    "spool_bytes",
    "dead_lettered",
    "queue_depth",
    "last_error",
    "last_error_time",
    "last_success_time",
)
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

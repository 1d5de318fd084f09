"""Reading the bridge's own event lines back, for formats that reshape them.

Formats get the encoded lines the emitter made (one JSON object each, `bridge.events` schema:
`timestamp` RFC 3339 UTC with microseconds, `level`, `event`, `event_id`, `service.name`, ...).
A format that needs fields (a timestamp in nanoseconds, labels, a severity) parses them here,
in one place, so each reads them the same way and a line that somehow is not an object still
goes out whole (as its `message`) instead of failing the batch.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["LEVELS", "epoch_ns", "parse_event"]

LEVELS = ("debug", "info", "warning", "error", "critical")
_EPOCH_DAYS = datetime(1970, 1, 1, tzinfo=UTC).toordinal()


def parse_event(line: bytes) -> dict[str, Any]:
    """The event object of one line; a line that is not a JSON object becomes
    `{"message": <its text>}` (never raises)."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {"message": line.decode("utf-8", "replace").rstrip("\n")}
    if not isinstance(event, dict):
        return {"message": line.decode("utf-8", "replace").rstrip("\n")}
    return event


def epoch_ns(timestamp: object, default: int) -> int:
    """Nanoseconds since the epoch of an RFC 3339 `timestamp` (the event's own capture time);
    `default` when it is missing or unreadable.

    The bridge writes `2026-11-25T08:30:00.123456Z`: that shape is read by slicing (a third of
    `datetime.fromisoformat`'s cost); anything else RFC 3339 allows goes through fromisoformat.
    """
    if not isinstance(timestamp, str):
        return default
    if len(timestamp) == 27 and timestamp[26] == "Z" and timestamp[19] == ".":
        try:
            day = datetime(int(timestamp[:4]), int(timestamp[5:7]), int(timestamp[8:10]))
            seconds = (day.toordinal() - _EPOCH_DAYS) * 86400 + int(timestamp[11:13]) * 3600
            seconds += int(timestamp[14:16]) * 60 + int(timestamp[17:19])
            return seconds * 1_000_000_000 + int(timestamp[20:26]) * 1000
        except ValueError:
            return default
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return default
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000

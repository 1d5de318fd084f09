"""The counters every sink keeps for `stats()`: one leaf module that everything may import.

Sinks, the delivery engine, the spool and the dead-letter file all count into one `SinkStats`
per sink. Nobody writes a field from outside: every update is a method that takes the small
lock, so a count made by the request thread and one made by the delivery worker never race.
The request thread's hottest counts (lines accepted, lines written directly) are kept by their
owners without a lock and published here with `publish_progress` when `stats()` asks.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bridge import forking

__all__ = ["SinkStats"]


class SinkStats:
    """Counters of one sink. Thread-safe: every update takes a small lock (new in a fork)."""

    __slots__ = (
        "__weakref__",
        "_dead_lettered",
        "_delivered",
        "_dropped_by_reason",
        "_enqueued",
        "_last_error",
        "_last_error_time",
        "_last_success_time",
        "_lock",
        "_retried",
        "_spool_bytes",
        "_spooled",
    )

    def __init__(self) -> None:
        self._start()
        forking.reset_in_child(self)

    def _start(self) -> None:
        self._lock = threading.Lock()
        self._enqueued = 0
        self._delivered = 0
        self._retried = 0
        self._spooled = 0
        self._spool_bytes = 0
        self._dead_lettered = 0
        self._dropped_by_reason: dict[str, int] = {}
        self._last_error: str | None = None
        self._last_error_time: float | None = None
        self._last_success_time: float | None = None

    def after_fork_in_child(self) -> None:
        """A worker's counters are its own: zero, with a fresh lock (a thread of the parent
        may have held the old one at the fork, and the child would hang at its first count)."""
        self._start()

    def count_enqueued(self, n: int = 1) -> None:
        with self._lock:
            self._enqueued += n

    def count_delivered(self, n: int = 1) -> None:
        with self._lock:
            self._delivered += n
            self._last_success_time = time.time()

    def count_retried(self, n: int = 1) -> None:
        with self._lock:
            self._retried += n

    def count_dead_lettered(self, n: int = 1) -> None:
        with self._lock:
            self._dead_lettered += n

    def count_dropped(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self._dropped_by_reason[reason] = self._dropped_by_reason.get(reason, 0) + n

    def record_error(self, message: str) -> None:
        """Remember the last failure; callers keep secrets out of `message`."""
        with self._lock:
            self._last_error = message
            self._last_error_time = time.time()

    def publish_progress(self, *, enqueued: int, delivered: int | None = None) -> None:
        """Totals their owner keeps without a lock on the request thread (accepted lines,
        lines written directly), brought up to date before a snapshot."""
        with self._lock:
            self._enqueued = enqueued
            if delivered is not None:
                self._delivered = delivered

    def publish_spool(self, *, spooled: int, spool_bytes: int) -> None:
        """The spool's totals: records it appended in this process, bytes not acknowledged."""
        with self._lock:
            self._spooled = spooled
            self._spool_bytes = spool_bytes

    # Read-only views: updates go through the methods above.

    @property
    def enqueued(self) -> int:
        """Lines the sink accepted."""
        return self._enqueued

    @property
    def delivered(self) -> int:
        """Lines written or acknowledged by the collector."""
        return self._delivered

    @property
    def retried(self) -> int:
        """Lines sent again after a failure (each attempt counted)."""
        return self._retried

    @property
    def spooled(self) -> int:
        """Records the spool appended in this process."""
        return self._spooled

    @property
    def spool_bytes(self) -> int:
        """Spool bytes not acknowledged yet."""
        return self._spool_bytes

    @property
    def dead_lettered(self) -> int:
        """Lines written to the dead-letter file."""
        return self._dead_lettered

    @property
    def last_error(self) -> str | None:
        """The last failure, free of secrets."""
        return self._last_error

    @property
    def last_error_time(self) -> float | None:
        return self._last_error_time

    @property
    def last_success_time(self) -> float | None:
        return self._last_success_time

    @property
    def dropped_by_reason(self) -> dict[str, int]:
        """A copy of the drops by reason."""
        with self._lock:
            return dict(self._dropped_by_reason)

    def dropped(self) -> int:
        """Every line dropped so far, whatever the reason."""
        with self._lock:
            return sum(self._dropped_by_reason.values())

    def snapshot(self, *, queue_depth: int, spool_bytes: int | None = None) -> dict[str, Any]:
        """A plain dict with every counter `stats()` documents."""
        with self._lock:
            dropped = dict(self._dropped_by_reason)
            return {
                "enqueued": self._enqueued,
                "delivered": self._delivered,
                "retried": self._retried,
                "dropped": sum(dropped.values()),
                "dropped_by_reason": dropped,
                "spooled": self._spooled,
                "spool_bytes": self._spool_bytes if spool_bytes is None else spool_bytes,
                "dead_lettered": self._dead_lettered,
                "queue_depth": queue_depth,
                "last_error": self._last_error,
                "last_error_time": self._last_error_time,
                "last_success_time": self._last_success_time,
            }

"""What every sink promises the extension, and the counters it keeps for `stats()`.

A sink receives encoded event lines (UTF-8 JSON ending in b"\\n"). `submit` is called on the
request thread and must never wait on I/O; the sink owns any background thread it needs.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Any, Protocol

__all__ = ["Sink", "SinkStats"]


class Sink(Protocol):
    """The interface the extension uses; file, stdout and http sinks implement it."""

    name: str

    def submit(self, line: bytes) -> bool:
        """Take one encoded line; return whether it was accepted (False: dropped and counted).

        Never raises and never waits on network I/O.
        """
        ...

    def flush(self, timeout: float) -> bool:
        """Wait until every line accepted so far is delivered; False when `timeout` ran out."""
        ...

    def close(self, timeout: float) -> bool:
        """Flush within `timeout`, then stop threads and release files; idempotent."""
        ...

    def stats(self) -> dict[str, Any]:
        """The sink's counters, as `SinkStats.snapshot()` returns them."""
        ...


_live_stats: weakref.WeakSet[SinkStats] = weakref.WeakSet()


def _reset_locks_after_fork() -> None:
    """A child forked while some thread held a stats lock would hang at its first count."""
    for stats in list(_live_stats):
        stats._lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_locks_after_fork)


class SinkStats:
    """Counters of one sink. Thread-safe: every update takes a small lock (new in a fork)."""

    __slots__ = (
        "__weakref__",
        "_lock",
        "dead_lettered",
        "delivered",
        "dropped_by_reason",
        "enqueued",
        "last_error",
        "last_error_time",
        "last_success_time",
        "retried",
        "spool_bytes",
        "spooled",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.enqueued = 0
        self.delivered = 0
        self.retried = 0
        self.spooled = 0
        self.spool_bytes = 0
        self.dead_lettered = 0
        self.dropped_by_reason: dict[str, int] = {}
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self.last_success_time: float | None = None
        _live_stats.add(self)

    def count_enqueued(self, n: int = 1) -> None:
        with self._lock:
            self.enqueued += n

    def count_delivered(self, n: int = 1) -> None:
        with self._lock:
            self.delivered += n
            self.last_success_time = time.time()

    def count_retried(self, n: int = 1) -> None:
        with self._lock:
            self.retried += n

    def count_spooled(self, n: int = 1) -> None:
        with self._lock:
            self.spooled += n

    def count_dead_lettered(self, n: int = 1) -> None:
        with self._lock:
            self.dead_lettered += n

    def count_dropped(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.dropped_by_reason[reason] = self.dropped_by_reason.get(reason, 0) + n

    def record_error(self, message: str) -> None:
        """Remember the last failure; callers keep secrets out of `message`."""
        with self._lock:
            self.last_error = message
            self.last_error_time = time.time()

    def snapshot(self, *, queue_depth: int, spool_bytes: int | None = None) -> dict[str, Any]:
        """A plain dict with every counter `stats()` documents."""
        with self._lock:
            dropped = dict(self.dropped_by_reason)
            return {
                "enqueued": self.enqueued,
                "delivered": self.delivered,
                "retried": self.retried,
                "dropped": sum(dropped.values()),
                "dropped_by_reason": dropped,
                "spooled": self.spooled,
                "spool_bytes": self.spool_bytes if spool_bytes is None else spool_bytes,
                "dead_lettered": self.dead_lettered,
                "queue_depth": queue_depth,
                "last_error": self.last_error,
                "last_error_time": self.last_error_time,
                "last_success_time": self.last_success_time,
            }

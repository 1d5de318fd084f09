"""The disk spool as the delivery worker's queue: `put` appends, `take` reads a batch.

With a spool an event is accepted once it is on disk (`Spool.append`: one write on the request
thread), and the spool is the queue: the worker reads batches from it and acknowledges them
after the collector did. Its size cap bounds it: `drop_newest` and `block` refuse new lines at
the cap (counted `spool_full`) instead of letting the spool evict its oldest records, which is
what `spool` and `drop_oldest` do. An idle spool feed wakes every `IDLE_RECHECK` seconds to
adopt what dead sibling processes left behind.

The unread counters count this process's own lines; a read that stops on its limits leaves
the rest to them, so batches stay full as without a spool. Only records the counters cannot
see (released after a failure, adopted from a dead process) make the worker read again at
once (`SpoolRead.hidden`).
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.delivery.feed import BLOCK_SECONDS, NEVER, Batch, Batching, Feed, monotonic
from bridge.delivery.spool import RECORD_OVERHEAD, Spool
from bridge.stats import SinkStats

__all__ = ["IDLE_RECHECK", "SpoolFeed"]

IDLE_RECHECK = 30.0


class SpoolFeed(Feed):
    """The unread counters are a hint for the wake-up rule (lines this process appended and
    has not read yet). Records the hint cannot see (released after a failure, adopted from
    dead processes) are found by reading again while the spool says some wait."""

    idle_recheck = IDLE_RECHECK

    def __init__(
        self,
        batching: Batching,
        *,
        spool: Spool,
        max_bytes: int,
        stats: SinkStats,
        overflow: str,
        start_worker: Callable[[], None],
        block_seconds: float = BLOCK_SECONDS,
    ) -> None:
        self.spool = spool
        self._append = spool.append
        self.max_bytes = max_bytes
        self._refuse_at_cap = overflow in ("drop_newest", "block")
        super().__init__(
            batching,
            stats=stats,
            overflow=overflow,
            start_worker=start_worker,
            block_seconds=block_seconds,
        )

    def reset(self) -> None:
        super().reset()
        self._unread_events = 0
        self._quiet_events = self._quiet_bytes = 0
        self._recheck = self.spool.pending_events() > 0  # adopted records are waiting

    def _wake_changed(self) -> None:
        # Below these, a put only bumps the counters (no first line, no wake, worker running).
        if self.worker_started:
            self._quiet_events, self._quiet_bytes = self._wake_events, self._wake_bytes
        else:
            self._quiet_events = self._quiet_bytes = 0

    def put(self, line: bytes) -> bool:
        """Append one line to the spool (one write) before returning True; False is counted."""
        size = len(line)
        if self.closed or self._refuse_at_cap:
            if self.closed:
                with self.lock:
                    return self._refuse("closed")
            if not self._has_room(size):
                with self.lock:
                    return self._refuse("spool_full")
        if not self._append(line):  # the spool counted why
            with self.lock:
                self.rejected += 1
            return False
        with self.lock:
            events = self._unread_events = self._unread_events + 1
            total = self._unread_bytes = self._unread_bytes + size
            if events == 1 or events >= self._quiet_events or total >= self._quiet_bytes:
                self._put_noticed(events, total)
        return True

    def _put_noticed(self, events: int, total: int) -> None:
        """Lock held: the first unread line, a batch's worth to wake the worker, or the
        worker not started yet."""
        if events == 1:
            self._first_at = monotonic()
        if events >= self._wake_events or total >= self._wake_bytes:
            self._wake_events = self._wake_bytes = NEVER
            self._ready.notify()
            self._wake_changed()
        self.ensure_worker()

    def _has_room(self, size: int) -> bool:
        need = size + RECORD_OVERHEAD
        if self.spool.pending_bytes() + need <= self.max_bytes:
            return True
        if self.overflow != "block":
            return False
        deadline = monotonic() + self.block_seconds
        with self.lock:
            while self.spool.pending_bytes() + need > self.max_bytes:
                if not self._wait_for_room(deadline):
                    return False
        return True

    def take(self, max_events: int, max_bytes: int) -> Batch | None:
        with self.lock:
            seen_events, seen_bytes = self._unread_events, self._unread_bytes
        got = self.spool.read(max_events, max_bytes)
        with self.lock:
            if got.drained:
                # Everything appended before the read started has been read.
                self._unread_events -= seen_events
                self._unread_bytes -= seen_bytes
                self._recheck = False
            else:
                # Stopped on its limits: the counters still see the rest of our own lines
                # (full batches, as without a spool); read again at once only for records
                # they cannot see.
                self._unread_events -= min(got.fresh, seen_events)
                self._unread_bytes -= min(got.fresh_bytes, seen_bytes)
                self._recheck = got.hidden
            self._first_at = monotonic()
            if self._blocked:
                self.progress.notify_all()
        if not got.lines:
            return None
        return Batch(got.lines, got.records)

    def unread(self) -> int:
        return self._unread_events

    def accepted(self) -> int:
        return self.spool.appended()

    def pending(self) -> int:
        return self.spool.pending_events()

    def depth(self) -> int:
        return self.spool.pending_events()

"""The disk spool as the delivery engine's feed: `put` appends, `take` reads a batch.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

With a spool an event is accepted once it is on disk (`Spool.append`: one write on the request
thread; `Spool.append_many`: one write for a request's lines), and the spool is the queue: the
worker reads batches from it and acknowledges them after the collector did (`ack`); a batch that
failed for now is released back to it (`give_back`) and read again, until the spool's
`event_ttl`. What close leaves stays on disk for the next process. Its size cap bounds it:
`drop_newest` and `block` refuse new lines at the cap (through `bridge.overflow.make_room`,
counted `spool_full`) instead of letting the spool evict its oldest records, which is what
`spool` and `drop_oldest` do. An idle spool feed wakes every `IDLE_RECHECK` seconds to adopt
what dead sibling processes left behind.

The unread counters count this process's own lines; a read that stops on its limits leaves
the rest to them, so batches stay full as without a spool. Only records the counters cannot
see (released after a failure, adopted from a dead process) make the worker read again at
once (`SpoolRead.hidden`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from bridge.delivery.feed import NEVER, Batch, Batching, Feed, monotonic
from bridge.delivery.spool import RECORD_OVERHEAD, Spool, SpoolRecord
from bridge.diagnostics import report
from bridge.overflow import BLOCK_SECONDS, make_room
from bridge.stats import SinkStats

__all__ = ["IDLE_RECHECK", "SpoolFeed"]

IDLE_RECHECK = 30.0


class SpoolFeed(Feed):
    """The unread counters are a hint for the wake-up rule (lines this process appended and
    has not read yet). Records the hint cannot see (released after a failure, adopted from
    dead processes) are found by reading again while the spool says some wait.

    `sync_each_batch` (`spool_fsync = "batch"`): fsync the spool before every send, so no
    event reaches a collector that a crash could still take off the disk.
    """

    idle_recheck = IDLE_RECHECK

    def __init__(
        self,
        batching: Batching,
        *,
        spool: Spool,
        max_bytes: int,
        stats: SinkStats,
        overflow: str,
        start_worker: Callable[[], None] | None = None,
        block_seconds: float = BLOCK_SECONDS,
        sync_each_batch: bool = False,
    ) -> None:
        self.spool = spool
        self._append = spool.append
        self._append_many = spool.append_many
        self.max_bytes = max_bytes
        self._refuse_at_cap = overflow in ("drop_newest", "block")
        self._sync_each_batch = sync_each_batch
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

    def attach(self, start_worker: Callable[[], None]) -> None:
        super().attach(start_worker)
        if self.spool.pending_events():
            # Ship what dead processes left behind without waiting for traffic.
            with self.lock:
                self.ensure_worker()

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

    def put_many(self, lines: list[bytes]) -> int:
        """Append several lines to the spool, with one write when they fit its current
        segment, before returning; how many were accepted (refusals counted by reason)."""
        if self.closed or self._refuse_at_cap:
            return self._put_many_under_cap(lines)
        return self._add(lines)

    def _put_many_under_cap(self, lines: list[bytes]) -> int:
        """Closed, or `drop_newest` / `block`: each line is decided as `put` decides it. The
        lines sure to fit under the cap go in one append; a line that may not goes through
        `put` itself, after the lines before it are in (so the cap, and `block`'s wait for
        the worker, see what N puts would leave)."""
        if self.closed:
            with self.lock:
                self.rejected += len(lines)
                if lines:
                    self.stats.count_dropped("closed", len(lines))
            return 0
        accepted = start = 0
        room = self.max_bytes - self.spool.pending_bytes()
        for i, line in enumerate(lines):
            need = len(line) + RECORD_OVERHEAD
            if need <= room:
                room -= need
                continue
            accepted += self._add(lines[start:i]) + self.put(line)
            start = i + 1
            room = self.max_bytes - self.spool.pending_bytes()
        return accepted + self._add(lines[start:])

    def _add(self, lines: list[bytes]) -> int:
        """Append `lines` and count them as `put` counts each (the unread counters, the first
        line, one wake-up when they reach a batch, the worker started)."""
        if not lines:
            return 0
        count, size = self._append_many(lines)
        with self.lock:
            self.rejected += len(lines) - count  # the spool counted why
            if count:
                before = self._unread_events
                events = self._unread_events = before + count
                total = self._unread_bytes = self._unread_bytes + size
                if before == 0 or events >= self._quiet_events or total >= self._quiet_bytes:
                    if before == 0:
                        self._first_at = monotonic()
                    self._put_noticed(events, total)
        return count

    def _has_room(self, size: int) -> bool:
        """`drop_newest` / `block`: does one more record fit under the cap (waiting for the
        worker to acknowledge some, for `block`)?"""
        need = size + RECORD_OVERHEAD
        if self.spool.pending_bytes() + need <= self.max_bytes:
            return True
        with self.lock:
            return make_room(self, need, self.overflow, block_seconds=self.block_seconds)

    # -- bridge.overflow.Room (lock held) -----------------------------------------------------

    def fits(self, size: int) -> bool:
        return self.spool.pending_bytes() + size <= self.max_bytes

    def evict_oldest(self) -> bool:
        return False  # for `spool` and `drop_oldest` the spool evicts by itself, in `append`

    # -- worker thread ------------------------------------------------------------------------

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
        return Batch(got.lines, got.records)  # the very list: the spool acks it fastest

    def before_send(self, batch: Batch) -> None:
        if self._sync_each_batch:
            self.spool.sync()

    def ack(self, batch: Batch) -> None:
        """Acknowledge the records: the spool deletes a segment once all of its are."""
        if batch.records:
            self.spool.ack(_records(batch))
        self.settle(len(batch))

    def give_back(self, batch: Batch) -> None:
        """Release the records: the spool hands them out again (until `event_ttl`)."""
        self.spool.release(_records(batch))
        self.recheck()
        self.settle()

    def after_round(self) -> None:
        self.spool.maybe_sync()

    def shutdown(self, sink_name: str) -> int:
        """Close the spool: what is left stays on disk for the next process."""
        left = self.spool.pending_events()
        self.spool.close()
        if left:
            report(
                f"shutdown-{sink_name}",
                f"sink {sink_name}: {left} events not delivered yet; they stay in the spool",
            )
        return left

    # -- counts -------------------------------------------------------------------------------

    def unread(self) -> int:
        return self._unread_events

    def accepted(self) -> int:
        return self.spool.appended()

    def pending(self) -> int:
        return self.spool.pending_events()

    def depth(self) -> int:
        return self.spool.pending_events()


def _records(batch: Batch) -> list[SpoolRecord]:
    """The spool records of a batch this feed made (its handles are the spool's)."""
    assert batch.records is not None
    return cast("list[SpoolRecord]", batch.records)

"""The bounded memory queue: the delivery engine's feed when the sink has no spool.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

Memory stays bounded: `queue_max_events` / `queue_max_bytes` with an overflow policy applied
by `bridge.overflow.make_room` (`drop_newest`, `drop_oldest`, or `block` for at most
`block_seconds`, then drop). Every refusal is counted in `SinkStats` by reason. Delivery is
best effort: a batch given back after a failure waits at the head of the queue (still counted
as pending, outside the bounds) until the engine's retries run out, and what is left at close
is dropped, counted "shutdown". The wake-up rule is `bridge.delivery.feed.Feed`'s.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from bridge.delivery.feed import NEVER, Batch, Batching, Feed, monotonic
from bridge.diagnostics import report
from bridge.overflow import BLOCK_SECONDS, make_room
from bridge.stats import SinkStats

__all__ = ["MemoryFeed"]


class MemoryFeed(Feed):
    """A FIFO of lines in memory, bounded in events and bytes, with an overflow policy.

    The hot path of `put` compares the queue with two cached limits (`_limit_events`,
    `_limit_bytes`) that fold in the bounds, the wake thresholds and the closed flag; anything
    unusual (full, wake the worker, first line, closed) takes `_put_slowly`.
    """

    def __init__(
        self,
        batching: Batching,
        *,
        max_events: int,
        max_bytes: int,
        stats: SinkStats,
        overflow: str,
        start_worker: Callable[[], None] | None = None,
        block_seconds: float = BLOCK_SECONDS,
    ) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        super().__init__(
            batching,
            stats=stats,
            overflow=overflow,
            start_worker=start_worker,
            block_seconds=block_seconds,
        )

    def reset(self) -> None:
        self._lines: deque[bytes] = deque()
        self._given_back: deque[Batch] = deque()  # failed batches, resent before newer lines
        self._removed = 0  # lines taken, evicted or discarded, ever
        self._limit_events = 0
        self._limit_bytes = 0
        super().reset()

    def _wake_changed(self) -> None:
        if self.closed or not self.worker_started or not self._lines:
            self._limit_events = 0  # every put takes the slow path
        else:
            self._limit_events = min(self.max_events, self._wake_events - 1)
            self._limit_bytes = min(self.max_bytes, self._wake_bytes - 1)

    def put(self, line: bytes) -> bool:
        """Take one line (the request thread); False when it was refused, counted by reason."""
        with self.lock:
            lines = self._lines
            total = self._unread_bytes + len(line)
            if len(lines) >= self._limit_events or total > self._limit_bytes:
                return self._put_slowly(line)
            lines.append(line)
            self._unread_bytes = total
        return True

    def put_many(self, lines: list[bytes]) -> int:
        """Take several lines in order under one lock; how many were accepted. When they all
        pass `put`'s hot-path test they go in at once; otherwise each goes as `put` takes it
        (the overflow policy, the first line, the wake-up), the lock held throughout."""
        size = sum(map(len, lines))
        with self.lock:
            queue = self._lines
            total = self._unread_bytes + size
            if len(queue) + len(lines) <= self._limit_events and total <= self._limit_bytes:
                queue.extend(lines)
                self._unread_bytes = total
                return len(lines)
            accepted = 0
            for line in lines:
                total = self._unread_bytes + len(line)
                if len(queue) >= self._limit_events or total > self._limit_bytes:
                    accepted += self._put_slowly(line)
                else:
                    queue.append(line)
                    self._unread_bytes = total
                    accepted += 1
            return accepted

    def _put_slowly(self, line: bytes) -> bool:
        """Lock held: closed, full (apply the overflow policy), first line, or wake the worker."""
        if self.closed:
            return self._refuse("closed")
        size = len(line)
        lines = self._lines
        if (
            len(lines) >= self.max_events or self._unread_bytes + size > self.max_bytes
        ) and (  # a line larger than the whole queue is refused without evicting anything
            size > self.max_bytes
            or not make_room(self, size, self.overflow, block_seconds=self.block_seconds)
        ):
            return self._refuse("queue_overflow")
        lines.append(line)
        self._unread_bytes += size
        if len(lines) == 1:
            self._first_at = monotonic()
        if len(lines) >= self._wake_events or self._unread_bytes >= self._wake_bytes:
            self._wake_events = self._wake_bytes = NEVER
            self._ready.notify()
        self.ensure_worker()
        self._wake_changed()
        return True

    # -- bridge.overflow.Room (lock held) -----------------------------------------------------

    def fits(self, size: int) -> bool:
        return len(self._lines) < self.max_events and self._unread_bytes + size <= self.max_bytes

    def evict_oldest(self) -> bool:
        if not self._lines:
            return False
        self._unread_bytes -= len(self._lines.popleft())
        self._removed += 1
        self.stats.count_dropped("queue_overflow")
        self.settle_gen += 1
        return True

    # -- worker thread ------------------------------------------------------------------------

    def take(self, max_events: int, max_bytes: int) -> Batch | None:
        """A batch given back first; else the oldest lines: at most `max_events`, at most
        `max_bytes` unless one line is larger."""
        with self.lock:
            if self._given_back:
                batch = self._given_back.popleft()
                self._recheck = bool(self._given_back)
                return batch
            lines = self._lines
            self._recheck = False
            if not lines:
                return None
            if len(lines) <= max_events and self._unread_bytes <= max_bytes:
                out = list(lines)
                lines.clear()
                taken = self._unread_bytes
            else:
                out = [lines.popleft()]
                taken = len(out[0])
                while lines and len(out) < max_events and taken + len(lines[0]) <= max_bytes:
                    line = lines.popleft()
                    out.append(line)
                    taken += len(line)
            self._unread_bytes -= taken
            self._removed += len(out)
            self.inflight += len(out)
            self._first_at = monotonic()
            self._wake_changed()
            if self._blocked:
                self.progress.notify_all()
            return Batch(out)

    def ack(self, batch: Batch) -> None:
        self.settle(len(batch))

    def give_back(self, batch: Batch) -> None:
        """Send it again before any line not taken yet (the engine's split halves still go
        first, as with a spool); its lines stay in flight (pending, not queued: the queue's
        bounds are for lines not taken yet)."""
        with self.lock:
            self._given_back.append(batch)
            self._recheck = True
        self.settle()

    def shutdown(self, sink_name: str) -> int:
        """Forget every line still here, counted as dropped "shutdown"; returns how many."""
        with self.lock:
            lost = len(self._lines) + self.inflight
            self.abandoned = True
            self._removed += len(self._lines)
            self._lines.clear()
            self._given_back.clear()
            self._unread_bytes = self.inflight = 0
        if lost:
            self.stats.count_dropped("shutdown", lost)
            report(
                f"shutdown-{sink_name}",
                f"sink {sink_name}: {lost} events not delivered at shutdown (no spool): dropped",
            )
        return lost

    # -- counts -------------------------------------------------------------------------------

    def unread(self) -> int:
        return len(self._lines)

    def accepted(self) -> int:
        return self._removed + len(self._lines)

    def pending(self) -> int:
        with self.lock:
            return len(self._lines) + self.inflight

    def depth(self) -> int:
        return len(self._lines) + self.inflight

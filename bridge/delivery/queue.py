"""Where the delivery worker's batches come from: a bounded memory queue, or the disk spool.

Both feeds share one rule for waking the worker, chosen so the request thread stays cheap
(a thread woken per event costs a Flask request ~5% in GIL hand-offs): `put` wakes the worker
only when the first line arrives while it idles, and when a batch is full; otherwise the
worker sleeps until the batch timeout of the oldest line. Flush and close wake it explicitly.
An idle memory feed sleeps without a timeout; an idle spool feed wakes every `idle_recheck`
seconds to adopt what dead sibling processes left behind.

Memory stays bounded: the memory queue by `queue_max_events` / `queue_max_bytes` with its
overflow policy (`drop_newest`, `drop_oldest`, `block` for at most `block_seconds`); the spool
feed by the spool's size cap (`drop_newest` and `block` refuse new lines instead of letting the
spool evict its oldest ones). Every refusal is counted in `SinkStats` by reason.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bridge.delivery.segments import HEADER_SIZE
from bridge.delivery.spool import Spool, SpoolRecord
from bridge.sinks.base import SinkStats

__all__ = ["Batch", "Batching", "Feed", "MemoryFeed", "SpoolFeed"]

_NEVER = 1 << 62
BLOCK_SECONDS = 1.0
IDLE_RECHECK = 30.0


@dataclass(frozen=True, slots=True)
class Batching:
    """When the worker sends: `max_events` lines, `max_bytes` of lines, or `timeout` seconds
    after the oldest line arrived, whichever comes first."""

    max_events: int
    max_bytes: int
    timeout: float


class Batch:
    """Lines on their way to the collector, with the spool records they came from (if any)."""

    __slots__ = ("lines", "records")

    def __init__(self, lines: list[bytes], records: list[SpoolRecord] | None = None) -> None:
        self.lines = lines
        self.records = records

    def __len__(self) -> int:
        return len(self.lines)

    def split(self) -> tuple[Batch, Batch]:
        """Two halves, in order (a 413 reply: the collector wants smaller requests)."""
        half = len(self.lines) // 2
        recs = self.records
        return (
            Batch(self.lines[:half], None if recs is None else recs[:half]),
            Batch(self.lines[half:], None if recs is None else recs[half:]),
        )

    def subset(self, indices: Sequence[int]) -> Batch:
        """The items at `indices` (a partial failure: retry or dead-letter just those)."""
        recs = self.records
        return Batch(
            [self.lines[i] for i in indices],
            None if recs is None else [recs[i] for i in indices],
        )


class Feed:
    """The wake-up rule and the lock shared by the request thread and the worker."""

    def __init__(
        self,
        batching: Batching,
        *,
        stats: SinkStats,
        overflow: str,
        start_worker: Callable[[], None],
        idle_recheck: float | None = None,
        block_seconds: float = BLOCK_SECONDS,
    ) -> None:
        self.stats = stats
        self.overflow = overflow
        self.batch_events = batching.max_events
        self.batch_bytes = batching.max_bytes
        self.batch_timeout = batching.timeout
        self.idle_recheck = idle_recheck
        self.block_seconds = block_seconds
        self._start_worker = start_worker
        self.reset()

    def reset(self) -> None:
        """Fresh locks and counters: at construction and in a forked child."""
        self.lock = threading.Lock()
        self._ready = threading.Condition(self.lock)  # the worker waits here
        self.settled = threading.Condition(self.lock)  # flush and `block` producers wait here
        self.settle_gen = 0
        self.accepted = 0  # lines put() took
        self.rejected = 0  # lines put() refused (each counted once in stats as dropped)
        self.inflight = 0  # lines taken and not settled yet (memory feed)
        self._unread_events = 0
        self._unread_bytes = 0
        self._first_at = 0.0
        self._wake_events = _NEVER
        self._wake_bytes = _NEVER
        self._recheck = False
        self._urgent = 0
        self._blocked = 0
        self._cut = False
        self.stopping = False
        self.closed = False
        self.abandoned = False  # close counted what was left: the worker must not count it
        self.worker_started = False

    # -- request thread (lock held) -----------------------------------------------------------

    def _arrived(self, size: int) -> None:
        self.accepted += 1
        self._unread_events += 1
        self._unread_bytes += size
        if self._unread_events == 1:
            self._first_at = time.monotonic()
        if self._unread_events >= self._wake_events or self._unread_bytes >= self._wake_bytes:
            self._wake_events = self._wake_bytes = _NEVER
            self._ready.notify()
        if not self.worker_started:
            self.worker_started = True
            self._start_worker()

    def _refuse(self, reason: str) -> bool:
        self.rejected += 1
        self.stats.count_dropped(reason)
        return False

    def _wait_for_room(self, deadline: float) -> bool:
        """`block` policy: wait (lock held) for the worker to make progress; False at deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if not self.worker_started:
            self.worker_started = True
            self._start_worker()
        self._blocked += 1
        self._wake_events = self._wake_bytes = _NEVER
        self._ready.notify()
        try:
            self.settled.wait(remaining)
        finally:
            self._blocked -= 1
        return True

    # -- worker thread ------------------------------------------------------------------------

    def wait_for_batch(self) -> bool:
        """Wait until a batch should be taken; False when the worker must stop."""
        with self.lock:
            while not self.stopping:
                if self._unread_events <= 0 and not self._recheck:
                    self._wake_events = self._wake_bytes = 1
                    if not self._ready.wait(self.idle_recheck) and self.idle_recheck is not None:
                        self._recheck = True
                    continue
                if (
                    self._urgent
                    or self._recheck
                    or self._unread_events >= self.batch_events
                    or self._unread_bytes >= self.batch_bytes
                ):
                    break
                remaining = self._first_at + self.batch_timeout - time.monotonic()
                if remaining <= 0:
                    break
                self._wake_events, self._wake_bytes = self.batch_events, self.batch_bytes
                self._ready.wait(remaining)
            self._wake_events = self._wake_bytes = _NEVER
            return not self.stopping

    def sleep(self, seconds: float) -> bool:
        """Back off for `seconds` (cut short once by close); False when the worker must stop."""
        deadline = time.monotonic() + seconds
        with self.lock:
            self._wake_events = self._wake_bytes = _NEVER
            while not self.stopping and not self._cut:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
            self._cut = False
            return not self.stopping

    def settle(self, events: int = 0) -> None:
        """`events` taken lines are done (delivered, dead-lettered or dropped); wake waiters."""
        with self.lock:
            self.inflight -= events
            self.settle_gen += 1
            if self._urgent or self._blocked:
                self.settled.notify_all()

    def recheck(self) -> None:
        """Read the source on the next round even if no new line arrived (released records)."""
        with self.lock:
            self._recheck = True

    # -- flush and close ----------------------------------------------------------------------

    def hurry(self, delta: int) -> None:
        """`delta` = +1 when a flush starts (send partial batches now), -1 when it ends."""
        with self.lock:
            self._urgent += delta
            if delta > 0:
                self._ready.notify()
                if not self.worker_started and self.pending_hint():
                    self.worker_started = True
                    self._start_worker()

    def cut_backoff(self) -> None:
        """Close: make the next attempt now instead of after the current backoff."""
        with self.lock:
            self._cut = True
            self._ready.notify()

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            self._ready.notify_all()
            self.settled.notify_all()

    def pending_hint(self) -> bool:
        """Lock held: is there anything the worker has not finished yet, as far as we know?"""
        return self._unread_events > 0 or self.inflight > 0 or self._recheck

    def pending(self) -> int:
        """Lines accepted (or adopted) and not settled yet."""
        raise NotImplementedError

    def depth(self) -> int:
        """Lines waiting to be sent, for `stats()["queue_depth"]`."""
        raise NotImplementedError


class MemoryFeed(Feed):
    """A FIFO of lines in memory, bounded in events and bytes, with an overflow policy."""

    def __init__(
        self,
        batching: Batching,
        *,
        max_events: int,
        max_bytes: int,
        stats: SinkStats,
        overflow: str,
        start_worker: Callable[[], None],
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
        super().reset()
        self._lines: deque[bytes] = deque()

    def put(self, line: bytes) -> bool:
        """Take one line (the request thread); False when it was refused, counted by reason."""
        size = len(line)
        with self.lock:
            if self.closed:
                return self._refuse("closed")
            if (
                self._unread_events >= self.max_events or self._unread_bytes + size > self.max_bytes
            ) and not self._make_room(size):
                return self._refuse("queue_overflow")
            self._lines.append(line)
            self._arrived(size)
        return True

    def _make_room(self, size: int) -> bool:
        if size > self.max_bytes:
            return False
        deadline = time.monotonic() + self.block_seconds
        lines = self._lines
        while self._unread_events >= self.max_events or self._unread_bytes + size > self.max_bytes:
            if self.overflow == "drop_oldest" and lines:
                self._unread_bytes -= len(lines.popleft())
                self._unread_events -= 1
                self.stats.count_dropped("queue_overflow")
                self.settle_gen += 1
            elif self.overflow != "block" or self.closed or not self._wait_for_room(deadline):
                return False
        return True

    def take(self, max_events: int, max_bytes: int) -> Batch | None:
        """The oldest lines: at most `max_events`, at most `max_bytes` unless one line is larger."""
        with self.lock:
            lines = self._lines
            if not lines:
                self._recheck = False
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
            self._unread_events -= len(out)
            self._unread_bytes -= taken
            self._first_at = time.monotonic()
            self._recheck = False
            self.inflight += len(out)
            if self._blocked:
                self.settled.notify_all()
            return Batch(out)

    def pending(self) -> int:
        with self.lock:
            return self._unread_events + self.inflight

    def depth(self) -> int:
        return self._unread_events + self.inflight

    def discard(self) -> int:
        """Forget every queued line (close, after the flush deadline); returns how many."""
        with self.lock:
            lost = self._unread_events + self.inflight
            self.abandoned = True
            self._lines.clear()
            self._unread_events = self._unread_bytes = self.inflight = 0
            return lost


class SpoolFeed(Feed):
    """The disk spool as the queue: `put` appends on the request thread, `take` reads batches.

    The unread counters are a hint for the wake-up rule (lines this process appended and has
    not read yet); records the hint cannot see (released after a failure, adopted from dead
    processes) are found by re-reading until a read comes back short.
    """

    def __init__(
        self,
        batching: Batching,
        *,
        spool: Spool,
        max_bytes: int,
        stats: SinkStats,
        overflow: str,
        start_worker: Callable[[], None],
        idle_recheck: float | None = IDLE_RECHECK,
        block_seconds: float = BLOCK_SECONDS,
    ) -> None:
        self.spool = spool
        self.max_bytes = max_bytes
        super().__init__(
            batching,
            stats=stats,
            overflow=overflow,
            start_worker=start_worker,
            idle_recheck=idle_recheck,
            block_seconds=block_seconds,
        )

    def reset(self) -> None:
        super().reset()
        self._largest = 0
        self._recheck = True  # adopted records may be waiting

    def put(self, line: bytes) -> bool:
        """Append one line to the spool (one write) before returning True; False is counted."""
        size = len(line)
        if self.closed:
            with self.lock:
                return self._refuse("closed")
        if self.overflow in ("drop_newest", "block") and not self._has_room(size):
            with self.lock:
                return self._refuse("spool_full")
        if not self.spool.append(line):  # the spool counted why
            with self.lock:
                self.rejected += 1
            return False
        with self.lock:
            if size > self._largest:
                self._largest = size
            self._arrived(size)
        return True

    def _has_room(self, size: int) -> bool:
        need = size + HEADER_SIZE
        if self.spool.pending_bytes() + need <= self.max_bytes:
            return True
        if self.overflow != "block":
            return False
        deadline = time.monotonic() + self.block_seconds
        with self.lock:
            while self.spool.pending_bytes() + need > self.max_bytes:
                if self.closed or not self._wait_for_room(deadline):
                    return False
        return True

    def take(self, max_events: int, max_bytes: int) -> Batch | None:
        with self.lock:
            seen_events, seen_bytes = self._unread_events, self._unread_bytes
        records = self.spool.read(max_events, max_bytes)
        taken = sum(len(r.line) for r in records)
        with self.lock:
            if len(records) >= max_events or taken + self._largest > max_bytes:
                # Possibly more behind these: read again next round whatever the hint says.
                self._unread_events -= min(len(records), seen_events)
                self._unread_bytes -= min(taken, seen_bytes)
                self._recheck = True
            else:
                # Everything appended before the read started has been read.
                self._unread_events -= seen_events
                self._unread_bytes -= seen_bytes
                self._recheck = False
            self._first_at = time.monotonic()
            if self._blocked:
                self.settled.notify_all()
        if not records:
            return None
        return Batch([r.line for r in records], records)

    def pending(self) -> int:
        return self.spool.pending_events()

    def depth(self) -> int:
        return self.spool.pending_events()

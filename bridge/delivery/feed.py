"""What the delivery engine reads from: the `Feed` interface, its wake-up rule and `Batch`.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

A feed is where accepted lines wait, and it settles what the engine is done with: `put` (the
request thread; `put_many` for a request's lines at once), `take` a batch, `ack` it (delivered,
dead-lettered or dropped), `give_back` one to send again, `shutdown` (what is left). Two feeds
implement it: the bounded memory queue (`bridge.delivery.memoryfeed`) and the disk spool
(`bridge.delivery.spoolfeed`); the engine never asks which one it has.

The request thread must stay cheap (a worker woken per event costs a Flask request ~5% in GIL
hand-offs), so `put` wakes the worker only when the first line arrives while it idles and
when a batch is full; otherwise the worker sleeps until the batch timeout of the oldest line.
Flush and close wake it explicitly; a flush is woken back only once its target is reached,
not after every batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bridge.overflow import BLOCK_SECONDS
from bridge.stats import SinkStats

__all__ = ["NEVER", "Batch", "Batching", "Feed", "monotonic"]

NEVER = 1 << 62
monotonic = time.monotonic


@dataclass(frozen=True, slots=True)
class Batching:
    """When the worker sends: `max_events` lines, `max_bytes` of lines, or `timeout` seconds
    after the oldest line arrived, whichever comes first."""

    max_events: int
    max_bytes: int
    timeout: float


class Batch:
    """Lines on their way to the collector, with the feed's handles for them (the spool's
    records; None for the memory feed). Only the feed that made a batch reads its handles."""

    __slots__ = ("lines", "records")

    def __init__(self, lines: list[bytes], records: Sequence[object] | None = None) -> None:
        self.lines = lines
        self.records = records

    def __len__(self) -> int:
        return len(self.lines)

    def split(self) -> tuple[Batch, Batch]:
        """Two halves, in order (the collector wants smaller requests)."""
        half = len(self.lines) // 2
        return self.subset(range(half)), self.subset(range(half, len(self.lines)))

    def subset(self, indices: Sequence[int]) -> Batch:
        """The items at `indices` (a partial failure: retry or dead-letter just those)."""
        recs = self.records
        return Batch(
            [self.lines[i] for i in indices],
            None if recs is None else [recs[i] for i in indices],
        )


class Feed:
    """The wake-up rule, the flush bookkeeping and the lock shared with the request thread."""

    idle_recheck: float | None = None  # an idle worker wakes this often (None: never)

    def __init__(
        self,
        batching: Batching,
        *,
        stats: SinkStats,
        overflow: str,
        start_worker: Callable[[], None] | None = None,
        block_seconds: float = BLOCK_SECONDS,
    ) -> None:
        self.stats = stats
        self.overflow = overflow
        self.batch_events = batching.max_events
        self.batch_bytes = batching.max_bytes
        self.batch_timeout = batching.timeout
        self.block_seconds = block_seconds
        self._start_worker = start_worker or _no_worker
        self.reset()

    def reset(self) -> None:
        """Fresh locks and counters: at construction and in a forked child."""
        self.lock = threading.Lock()
        self._ready = threading.Condition(self.lock)  # the worker waits here
        self.progress = threading.Condition(self.lock)  # flush and `block` producers wait here
        self.settle_gen = 0
        self.rejected = 0  # lines put() refused (each counted once in stats as dropped)
        self.inflight = 0  # lines taken and not settled yet (memory feed)
        self._unread_bytes = 0
        self._first_at = 0.0
        self._wake_events = NEVER
        self._wake_bytes = NEVER
        self._recheck = False
        self._flush_targets: list[int] = []
        self._blocked = 0
        self._cut = False
        self.stopping = False
        self.closed = False
        self.abandoned = False  # close counted what was left: the worker must not count it
        self.worker_started = False

    def attach(self, start_worker: Callable[[], None]) -> None:
        """The engine's hook that starts its worker thread (called with the lock held)."""
        self._start_worker = start_worker

    def after_fork_in_child(self) -> None:
        """In a forked child (the engine calls it): the parent's lines stay the parent's; a
        closed feed stays closed."""
        closed = self.closed
        self.reset()
        if closed:
            self.close()

    # -- what each feed provides (lock held unless said otherwise) ----------------------------

    def put(self, line: bytes) -> bool:
        """Accept one line (the request thread); False when refused, counted by reason."""
        raise NotImplementedError

    def put_many(self, lines: list[bytes]) -> int:
        """Accept several lines in order (one request's), for about the cost of one `put`;
        how many were accepted. Each line is decided, and every counter and the wake-up left,
        exactly as `put` of each in turn would."""
        raise NotImplementedError

    def take(self, max_events: int, max_bytes: int) -> Batch | None:
        """The next batch to send (worker thread): at most `max_events` lines and `max_bytes`
        (unless one line is larger); None when nothing waits. Takes the lock itself."""
        raise NotImplementedError

    def before_send(self, batch: Batch) -> None:
        """Just before `batch` is sent (worker thread, lock not held)."""

    def ack(self, batch: Batch) -> None:
        """`batch` is done: delivered, dead-lettered or dropped (counted by the caller).
        Lock not held."""
        raise NotImplementedError

    def give_back(self, batch: Batch) -> None:
        """`batch` failed for now: keep it and hand it out again (lock not held)."""
        raise NotImplementedError

    def after_round(self) -> None:
        """The worker finished one round of its loop (lock not held)."""

    def shutdown(self, sink_name: str) -> int:
        """Close, after the flush deadline: deal with what is left (and say it on stderr);
        returns how many lines were not delivered. Lock not held."""
        raise NotImplementedError

    def unread(self) -> int:
        """Lines accepted and not taken yet (for the spool: a hint)."""
        raise NotImplementedError

    def accepted(self) -> int:
        """Lines `put` has accepted in this process."""
        raise NotImplementedError

    def pending(self) -> int:
        """Lines accepted (or adopted) and not settled yet. Takes the lock itself."""
        raise NotImplementedError

    def depth(self) -> int:
        """Lines waiting to be sent, for `stats()["queue_depth"]`."""
        raise NotImplementedError

    def _wake_changed(self) -> None:
        """The wake thresholds or the closed flag changed (a feed may cache a fast-path test)."""

    # -- shared helpers (lock held) -----------------------------------------------------------

    def _set_wake(self, events: int, size: int) -> None:
        self._wake_events, self._wake_bytes = events, size
        self._wake_changed()

    def ensure_worker(self) -> None:
        """Lock held: start the worker thread unless it runs (lazily, in this process)."""
        if not self.worker_started:
            self.worker_started = True
            self._start_worker()
            self._wake_changed()

    def _refuse(self, reason: str) -> bool:
        self.rejected += 1
        self.stats.count_dropped(reason)
        return False

    def wait_for_room(self, remaining: float) -> bool:
        """`block` policy (`bridge.overflow.make_room`): wake the worker and wait up to
        `remaining` seconds for it to make progress; False when the feed is closed."""
        if remaining <= 0 or self.closed:
            return False
        self.ensure_worker()
        self._blocked += 1
        self._set_wake(NEVER, NEVER)
        self._ready.notify()
        try:
            self.progress.wait(remaining)
        finally:
            self._blocked -= 1
        return True

    # -- worker thread ------------------------------------------------------------------------

    def wait_for_batch(self) -> bool:
        """Wait until a batch should be taken; False when the worker must stop."""
        with self.lock:
            while not self.stopping:
                unread = self.unread()
                if unread <= 0 and not self._recheck:
                    self._set_wake(1, 1)
                    if not self._ready.wait(self.idle_recheck) and self.idle_recheck is not None:
                        self._recheck = True
                    continue
                if (
                    self._flush_targets
                    or self._recheck
                    or unread >= self.batch_events
                    or self._unread_bytes >= self.batch_bytes
                ):
                    break
                remaining = self._first_at + self.batch_timeout - monotonic()
                if remaining <= 0:
                    break
                self._set_wake(self.batch_events, self.batch_bytes)
                self._ready.wait(remaining)
            self._set_wake(NEVER, NEVER)
            return not self.stopping

    def sleep(self, seconds: float) -> bool:
        """Back off for `seconds` (cut short once by close); False when the worker must stop."""
        deadline = monotonic() + seconds
        with self.lock:
            self._set_wake(NEVER, NEVER)
            while not self.stopping and not self._cut:
                remaining = deadline - monotonic()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
            self._cut = False
            return not self.stopping

    def settle(self, events: int = 0) -> None:
        """`events` taken lines are done (delivered, dead-lettered or dropped). Wakes a flush
        only when its target is reached, and `block` producers always."""
        pending = self.pending() if self._flush_targets else 0
        with self.lock:
            self.inflight -= events
            self.settle_gen += 1
            flushed = bool(self._flush_targets) and (
                self.accepted() - pending + events >= min(self._flush_targets)
            )
            if self._blocked or flushed:
                self.progress.notify_all()

    def recheck(self) -> None:
        """Read the source on the next round even if no new line arrived (released records)."""
        with self.lock:
            self._recheck = True

    # -- flush and close ----------------------------------------------------------------------

    def begin_flush(self) -> int:
        """A flush starts: send partial batches now. Returns its target: `settled()` must
        reach it (every line accepted so far is done)."""
        with self.lock:
            target = self.accepted()
            self._flush_targets.append(target)
            self._ready.notify()
            if self.unread() > 0 or self.inflight > 0 or self._recheck:
                self.ensure_worker()
            return target

    def end_flush(self, target: int) -> None:
        with self.lock:
            self._flush_targets.remove(target)

    def settled(self) -> int:
        """How many accepted lines are done: accepted minus pending (takes the lock)."""
        pending = self.pending()
        with self.lock:
            return self.accepted() - pending

    def close(self) -> None:
        """Refuse new lines from now on."""
        with self.lock:
            self.closed = True
            self._wake_changed()

    def cut_backoff(self) -> None:
        """Close: make the next attempt now instead of after the current backoff."""
        with self.lock:
            self._cut = True
            self._ready.notify()

    def stop(self) -> None:
        """The worker must end (close, after the flush); wakes everyone waiting."""
        with self.lock:
            self.stopping = True
            self._ready.notify_all()
            self.progress.notify_all()


def _no_worker() -> None:
    """The start hook of a feed no engine is attached to (tests drive the feed by hand)."""

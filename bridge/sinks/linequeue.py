"""The bounded queue of a `LineWriter`: the lines its background thread has still to write.

    emitter -> sink.submit -> LineWriter -> LineQueue -> (writer thread) -> Output

A line lands here when the calling thread may not write it itself (see `bridge.sinks.writer`),
and leaves in order. The queue keeps the accounting that makes `close()` exact:

- Bounds: at most `max_events` lines and `max_bytes` bytes. A line that does not fit goes
  through the sink's overflow policy (`bridge.overflow.make_room`, this queue being its
  `Room`); each eviction and each refusal counts one `queue_overflow`.
- The started rest: when part of a line is already out, its rest is put back at the head
  (`head_started`) and must be the next thing written. Eviction never drops it, whatever the
  policy; only `close()` gives it up, counted.
- Held lines: the thread takes every queued line at once (`take`) and writes them one by one.
  They stay in `held`, under the lock, until each is finished with, so that `close()` can see
  and count the ones the thread never will. `in_write` tells `close()` a `write()` is under way:
  it waits (bounded) for that one's outcome, never for a full pipe. A line leaves `held` in the
  same step, under the lock, as its outcome is counted: the thread and `close()` never both
  count it.
- Losses: what `discard` (at close) finds still queued or held is dropped, counted once, as
  `write_error` when the last attempt at a line's rest failed (`failing`), else `shutdown`. A
  line offered after that is refused (`closed`), or counted lost if it was a rest.

Every method takes `lock` itself, except those documented "under `lock`", which the writer's
thread calls while holding it (to settle a line's outcome together with its own counters).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from bridge import forking, overflow
from bridge.stats import SinkStats

__all__ = ["LineQueue"]


class LineQueue:
    """Lines waiting for the writer's thread, bounded, with the started rest at the head."""

    __slots__ = (
        "__weakref__",
        "accepted",
        "busy",
        "discarded",
        "drained",
        "failing",
        "head_started",
        "held",
        "in_write",
        "lines",
        "lock",
        "max_bytes",
        "max_events",
        "policy",
        "retry_at",
        "size",
        "start_consumer",
        "stats",
        "stopping",
        "wakeup",
    )

    block_seconds = overflow.BLOCK_SECONDS  # the longest a `block` submit waits for room

    def __init__(
        self,
        *,
        stats: SinkStats,
        policy: str,
        max_events: int,
        max_bytes: int,
        start_consumer: Callable[[], None],
    ) -> None:
        self.stats = stats
        self.policy = policy
        self.max_events = max_events
        self.max_bytes = max_bytes
        # Called under `lock` whenever there is work: starts the writer's thread if not alive.
        self.start_consumer = start_consumer
        # Never replaced, only emptied: the writer's fast path holds it and tests it directly.
        self.lines: deque[bytes] = deque()
        self.held: deque[bytes] = deque()
        self._reset()
        forking.reset_in_child(self)

    def _reset(self) -> None:
        self.lock = threading.Lock()
        self.wakeup = threading.Condition(self.lock)  # the thread waits here for lines
        # notified when the thread takes lines, runs dry, ends a write, or close() discards
        self.drained = threading.Condition(self.lock)
        self.lines.clear()
        self.held.clear()
        self.size = 0  # bytes in `lines`
        self.head_started = False  # the first of `lines` is the rest of a started line
        self.in_write = False  # the thread is inside `Output.write` for `held[0]`
        self.busy = False  # the thread has taken lines and not yet run dry
        self.retry_at = 0.0  # the thread leaves a started rest alone until then
        self.stopping = False  # close() began: the thread gives back what it cannot write
        self.discarded = False  # close() counted what was left: nothing is kept any more
        self.failing = False  # set by the writer: the last attempt at a line's rest failed
        self.accepted = 0  # lines (and rests of direct writes) taken in

    def after_fork_in_child(self) -> None:
        """The parent's lines stay the parent's: the child's queue starts empty."""
        self._reset()

    def loss_reason(self) -> str:
        """Why lines given up now are lost: the output failing them, or the sink closing."""
        return "write_error" if self.failing else "shutdown"

    def depth(self) -> int:
        """Lines accepted and not yet finished with: queued, or taken by the thread."""
        return len(self.lines) + len(self.held)

    # --- calling thread ----------------------------------------------------------------------

    def put(self, line: bytes) -> bool:
        """Queue `line` under the overflow policy; False when it is refused (counted)."""
        with self.lock:
            if not overflow.make_room(
                self, len(line), self.policy, block_seconds=self.block_seconds
            ):
                self.stats.count_dropped("queue_overflow")
                return False
            if self.discarded:  # close() is done (it woke a `block` wait): none will write it
                self.stats.count_dropped("closed")
                return False
            self.lines.append(line)
            self.size += len(line)
            self.accepted += 1
            self.start_consumer()
            self.wakeup.notify()
        return True

    def put_many(self, lines: list[bytes]) -> int:
        """Queue `lines` in order, each under the overflow policy as `put` would (with the
        thread taking none in between, unless a `block` wait lets it); how many were taken."""
        taken = 0
        with self.lock:
            for line in lines:
                if not overflow.make_room(
                    self, len(line), self.policy, block_seconds=self.block_seconds
                ):
                    self.stats.count_dropped("queue_overflow")
                elif self.discarded:
                    self.stats.count_dropped("closed")
                else:
                    self.lines.append(line)
                    self.size += len(line)
                    self.accepted += 1
                    taken += 1
            if taken:
                self.start_consumer()
                self.wakeup.notify()
        return taken

    def put_back(self, rest: bytes, *, started: bool) -> None:
        """Queue the rest of a line ahead of everything queued: it is the next thing written.

        The caller holds the writer's write lock, so the thread is not writing meanwhile.
        """
        with self.lock:
            self.accepted += 1
            if self.discarded:  # close() is done: count it lost here
                self.stats.count_dropped(self.loss_reason())
                return
            self.lines.appendleft(rest)
            self.size += len(rest)
            self.head_started = started
            self.start_consumer()
            self.wakeup.notify()

    # --- overflow.Room, under `lock` ---------------------------------------------------------

    def fits(self, size: int) -> bool:
        return len(self.lines) < self.max_events and self.size + size <= self.max_bytes

    def evict_oldest(self) -> bool:
        """Drop the oldest whole line, counted; never the started rest at the head."""
        if len(self.lines) <= self.head_started:
            return False
        oldest = self.lines[self.head_started]
        del self.lines[self.head_started]
        self.size -= len(oldest)
        self.stats.count_dropped("queue_overflow")
        return True

    def wait_for_room(self, remaining: float) -> bool:
        """Wake the thread and wait for it to take lines. Always worth another look: close()
        empties the queue, and the waiter then finds room and is refused as `closed`."""
        self.start_consumer()
        self.wakeup.notify()
        self.drained.wait(remaining)
        return True

    # --- the writer's thread -----------------------------------------------------------------

    def wait_for_lines(self) -> bool:
        """Sleep until there are lines to write (and no retry pause); False: stop the thread."""
        with self.lock:
            while not self.stopping:
                wait = self.retry_at - time.monotonic() if self.lines else None
                if wait is not None and wait <= 0:
                    break
                self.wakeup.wait(wait)
            return not (self.stopping and not self.lines)

    def pause(self, seconds: float) -> None:
        """Leave a line's rest alone for `seconds` (it just failed) before trying it again."""
        with self.lock:
            self.retry_at = time.monotonic() + seconds

    def take(self) -> bool | None:
        """Move every queued line to `held`; whether the first is a started rest, None (and
        idle) when there were none."""
        with self.lock:
            if not self.lines:
                self.busy = False
                self.drained.notify_all()
                return None
            self.held.extend(self.lines)
            started = self.head_started
            self.lines.clear()
            self.size = 0
            self.head_started = False
            self.busy = True
            self.drained.notify_all()
            return started

    def begin_write(self) -> bytes | None:
        """The first held line, marked as being written; None when nothing is held (all
        done, or close() took them)."""
        with self.lock:
            if not self.held:
                return None
            self.in_write = True
            return self.held[0]

    def end_write(self) -> bool:
        """Under `lock`: the write is over; False when close() took the line meanwhile (it
        counted it lost)."""
        self.in_write = False
        if self.stopping:
            self.drained.notify_all()  # close() may be waiting for this write
        return bool(self.held)

    def finished(self) -> None:
        """Under `lock`: the first held line is finished with (written, or dropped, counted)."""
        self.held.popleft()

    def requeue_held(self, rest: bytes, *, started: bool) -> None:
        """Under `lock`: the held lines go back to the head of the queue, `rest` first."""
        held = self.held
        held[0] = rest
        self.lines.extendleft(reversed(held))
        self.size += sum(map(len, held))
        held.clear()
        self.head_started = started
        self.busy = False

    # --- flush and close ---------------------------------------------------------------------

    def wait_empty(self, deadline: float) -> bool:
        """Wait until the thread has finished with every line; False at `deadline`."""
        with self.lock:
            if self.lines:
                self.retry_at = 0.0  # the disk may have room again: try now
                self.start_consumer()
                self.wakeup.notify()
            while self.lines or self.busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.drained.wait(remaining)
        return True

    def stop(self) -> None:
        """close() begins: the thread writes on only what it can without waiting, then ends."""
        with self.lock:
            self.stopping = True
            self.wakeup.notify_all()

    def discard(self, until: float) -> int:
        """Drop and count (once) every line not finished with; how many. Waits, until
        `until` at most, for a `write()` under way to decide its line. One stuck past that (a
        hung disk) is counted lost, whether or not it lands later."""
        with self.lock:
            while self.in_write and (remaining := until - time.monotonic()) > 0:
                self.drained.wait(remaining)
            lost = len(self.lines) + len(self.held)
            self.lines.clear()
            self.held.clear()
            self.size = 0
            self.head_started = False
            self.busy = False
            self.discarded = True
            self.drained.notify_all()  # a submit waiting for room (`block`) gives up
            if lost:
                self.stats.count_dropped(self.loss_reason(), lost)
        return lost

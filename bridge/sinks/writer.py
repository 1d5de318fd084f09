"""Writes whole lines to a file descriptor without letting a slow disk or pipe stall a request.

Measured on a 2-core machine: a background thread that wakes per event (or every 20 ms) costs
a Flask request about 5% in GIL hand-offs, while one `write()` of a small line costs ~2 us. So
the calling thread writes the line itself (one `write()`, whole line, O_APPEND or a
non-blocking pipe) when that cannot stall it, and falls back to a background thread when it
could:

- the write lock is held (another thread is writing): queue the line, never wait;
- the pipe is full (EAGAIN) or took a partial write: queue the rest;
- a write took longer than `slow_write_seconds` (a slow disk): queue for `defer_seconds`;
- the output asks for maintenance (reopen after logrotate, size rotation): queue, and let the
  background thread do the rename/open work.

Lines queued never overtake each other: the calling thread writes directly only when the queue
is empty, checked under the write lock the background thread holds while it drains.
The background thread starts lazily, sleeps on a condition (no polling) and is reset in
forked children.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from typing import Any, Protocol

from bridge.diagnostics import report
from bridge.sinks.base import SinkStats

__all__ = ["LineWriter", "Output", "WriterSink"]

_monotonic = time.monotonic


class Output(Protocol):
    """A destination for bytes: a file (with rotation), a pipe, a socket."""

    def write(self, data: bytes) -> int:
        """One write() call; may write part of `data`, or raise BlockingIOError."""
        ...

    def wait_writable(self, timeout: float) -> None:
        """Block (background thread only) until a write could make progress, or timeout."""
        ...

    def maintenance_due(self, now: float) -> bool:
        """Cheap check on the calling thread: should the background thread `maintain()`?"""
        ...

    def maintain(self) -> None:
        """Reopen or rotate; runs on the background thread under the write lock."""
        ...

    def fsync(self) -> None: ...

    def close(self) -> None: ...


_live_writers: weakref.WeakSet[LineWriter] = weakref.WeakSet()


def _reset_writers_after_fork() -> None:
    for writer in list(_live_writers):
        writer.after_fork_in_child()


os.register_at_fork(after_in_child=_reset_writers_after_fork)


class LineWriter:
    """Direct-or-deferred writer of whole lines with a bounded queue and an overflow policy."""

    defer_seconds = 5.0
    block_seconds = 1.0

    def __init__(
        self,
        output: Output,
        *,
        name: str,
        stats: SinkStats,
        overflow: str,
        max_events: int,
        max_bytes: int,
        sync: bool = False,
        fsync: bool = False,
        slow_write_seconds: float = 0.05,
    ) -> None:
        self.output = output
        self.name = name
        self.stats = stats
        self.overflow = overflow
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.sync = sync
        self.fsync_each = fsync
        self.slow_write_seconds = slow_write_seconds
        self._always_background = fsync and not sync
        self._reset_state()
        _live_writers.add(self)

    def _reset_state(self) -> None:
        self._write_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._wakeup = threading.Condition(self._queue_lock)
        self._drained = threading.Condition(self._queue_lock)
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._busy = False
        # direct writes from the calling thread: never with sync (own path) or fsync (thread)
        self._direct = not self._always_background and not self.sync
        self._resume_direct_at = 0.0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._accepted_direct = 0  # under _write_lock
        self._accepted_queued = 0  # under _queue_lock
        self._written = 0  # under _write_lock

    def after_fork_in_child(self) -> None:
        """The parent's queued lines stay the parent's; the child starts empty."""
        closed = self._closed
        self._reset_state()
        self._closed = closed
        self._direct = self._direct and not closed

    # --- calling thread ----------------------------------------------------------------------

    def submit(self, line: bytes) -> bool:
        """Write or queue one line; never raises, never waits (except `sync` and `block`).

        The fast path (direct write) is inlined: it runs for nearly every event.
        """
        if self._direct and not self._queue and self._write_lock.acquire(False):
            try:
                if self._direct and not self._queue:
                    started = _monotonic()
                    if self.output.maintenance_due(started):
                        self._defer(started, 0.0)
                    else:
                        try:
                            written = self.output.write(line)
                        except BlockingIOError:
                            written = 0
                        except OSError as exc:
                            self._count_write_error(exc)
                            return False
                        if _monotonic() - started > self.slow_write_seconds:
                            self._slow_write(started)
                        if written == len(line):
                            self._accepted_direct += 1
                            self._written += 1
                            return True
                        self._defer(started, 0.0)
                        if written:  # partial: the rest must go out next, whatever the policy
                            return self._enqueue(line[written:], force=True)
            finally:
                self._write_lock.release()
        if self._closed:
            self.stats.count_dropped("closed")
            return False
        if self.sync:
            return self._write_now(line)
        return self._enqueue(line)

    def _slow_write(self, started: float) -> None:
        elapsed = _monotonic() - started
        self._defer(started, self.defer_seconds)
        report(
            f"slow-{self.name}",
            f"sink {self.name}: a write took {elapsed * 1000:.0f} ms; "
            f"writing from a background thread for {self.defer_seconds:.0f} s",
        )

    def _defer(self, now: float, seconds: float) -> None:
        self._direct = False
        self._resume_direct_at = now + seconds

    def _write_now(self, line: bytes) -> bool:
        """`sync` mode: the line is written (and fsynced if asked) before returning.

        Rotation and reopening happen here too, on the calling thread: the user chose to
        wait for the disk.
        """
        with self._write_lock:
            self._drain_queue_locked()
            if self.output.maintenance_due(_monotonic()):
                self._maintain()
            ok = self._write_fully(line)
            self._accepted_direct += 1
            if ok and self.fsync_each:
                self._fsync()
            return ok

    def _enqueue(self, line: bytes, *, force: bool = False) -> bool:
        with self._queue_lock:
            if not force and not self._make_room(len(line)):
                return False
            self._queue.append(line)
            self._queued_bytes += len(line)
            self._accepted_queued += 1
            self._ensure_thread()
            self._wakeup.notify()
        return True

    def _make_room(self, size: int) -> bool:
        """Under the queue lock: apply the overflow policy; False when the line is dropped."""
        deadline = time.monotonic() + self.block_seconds
        while len(self._queue) >= self.max_events or self._queued_bytes + size > self.max_bytes:
            if self.overflow == "drop_oldest" and len(self._queue) > 1:
                oldest = self._queue.popleft()
                self._queued_bytes -= len(oldest)
                self.stats.count_dropped("queue_overflow")
                continue
            if self.overflow == "block":
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._ensure_thread()
                    self._wakeup.notify()
                    self._drained.wait(remaining)
                    continue
            self.stats.count_dropped("queue_overflow")
            return False
        return True

    # --- background thread -------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name=f"bridge-sink-{self.name}", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._queue_lock:
                while not self._queue and not self._stopping:
                    self._wakeup.wait()
                if self._stopping and not self._queue:
                    return
            with self._write_lock:
                self._drain_queue_locked()
                if self._stopping:
                    return
                if self.output.maintenance_due(time.monotonic()):
                    self._maintain()
                if (
                    not self._always_background
                    and not self._closed
                    and time.monotonic() >= self._resume_direct_at
                ):
                    self._direct = True

    def _drain_queue_locked(self) -> None:
        """Under the write lock: write every queued line, in order."""
        while True:
            with self._queue_lock:
                if not self._queue:
                    self._busy = False
                    self._drained.notify_all()
                    return
                batch = list(self._queue)
                self._queue.clear()
                self._queued_bytes = 0
                self._busy = True
                self._drained.notify_all()
            for index, line in enumerate(batch):
                if self.output.maintenance_due(time.monotonic()):
                    self._maintain()
                if not self._write_fully(line) and self._stopping:
                    self.stats.count_dropped("shutdown", len(batch) - index)
                    break
            if self.fsync_each:
                self._fsync()

    def _write_fully(self, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            try:
                written = self.output.write(view)  # type: ignore[arg-type]
            except BlockingIOError:
                if self._stopping:  # closing, and the reader is gone: give up this line
                    return False
                self.output.wait_writable(0.1)
                continue
            except OSError as exc:
                self._count_write_error(exc)
                return False
            view = view[written:]
        self._written += 1
        return True

    def _maintain(self) -> None:
        try:
            self.output.maintain()
        except OSError as exc:
            self.stats.record_error(f"reopen failed: {exc}")
            report(f"maintain-{self.name}", f"sink {self.name}: reopen failed: {exc}")

    def _fsync(self) -> None:
        try:
            self.output.fsync()
        except OSError as exc:
            self.stats.record_error(f"fsync failed: {exc}")

    def _count_write_error(self, exc: OSError) -> None:
        self.stats.count_dropped("write_error")
        self.stats.record_error(f"write failed: {exc}")
        report(f"write-{self.name}", f"sink {self.name}: write failed: {exc}")

    # --- lifecycle ---------------------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Wait until every accepted line is written (and fsynced if asked); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._queue_lock:
            if self._queue:
                self._ensure_thread()
                self._wakeup.notify()
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._drained.wait(remaining)
        if self.fsync_each:
            with self._write_lock:
                self._fsync()
        return True

    def close(self, timeout: float) -> bool:
        """Flush within `timeout`, stop the thread, close the output. Idempotent."""
        if self._closed:
            return True
        deadline = time.monotonic() + timeout
        flushed = self.flush(timeout)
        self._closed = True
        self._direct = False
        with self._queue_lock:
            self._stopping = True
            self._wakeup.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.1, deadline - time.monotonic()))
        with self._queue_lock:  # what the thread never took: lost, and counted once here
            lost = len(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
        if lost:
            self.stats.count_dropped("shutdown", lost)
            report(f"shutdown-{self.name}", f"sink {self.name}: {lost} lines not written at exit")
        if thread is None or not thread.is_alive():
            with self._write_lock:
                self.output.close()
        return flushed and not lost

    def counters(self) -> dict[str, Any]:
        """Accepted, written and queued counts for `stats()`."""
        return {
            "enqueued": self._accepted_direct + self._accepted_queued,
            "delivered": self._written,
            "queue_depth": len(self._queue),
        }


class WriterSink:
    """A sink whose lines go through one `LineWriter` (file, stdout): the shared Sink methods."""

    name: str
    kind: str
    _writer: LineWriter
    _stats: SinkStats

    def submit(self, line: bytes) -> bool:
        return self._writer.submit(line)

    def flush(self, timeout: float) -> bool:
        return self._writer.flush(timeout)

    def close(self, timeout: float) -> bool:
        return self._writer.close(timeout)

    def describe(self) -> dict[str, Any]:
        """Extra, non-counter facts for `stats()` (the file sink adds its path)."""
        return {}

    def stats(self) -> dict[str, Any]:
        counters = self._writer.counters()
        self._stats.enqueued = counters["enqueued"]
        self._stats.delivered = counters["delivered"]
        snapshot = self._stats.snapshot(queue_depth=counters["queue_depth"])
        snapshot["type"] = self.kind
        snapshot.update(self.describe())
        return snapshot

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

A line is in the output whole or not at all, and the counters say which. A write that fails
before any byte of a line went out (a full disk, a deleted file that cannot be recreated)
drops that line, counted as `write_error`. Once part of a line is out, its rest is the next
thing written, always (a full disk that took half a line): the rest waits at the head of the
queue, the thread tries it again with a growing pause (`retry_initial` to `retry_max`), and
lines behind it queue under the overflow policy, which never drops that rest. An output that
can no longer finish a line (its file was replaced) raises `LineAbandoned`; that line, like a
rest still unwritten at `close()`, is dropped and counted. `delivered` counts whole lines only.

When `close()` returns, every line accepted is counted, once: delivered, or dropped. The lines
the thread has taken from the queue stay visible to `close()` under the queue lock until each
is finished with; `close()` takes those the thread has not finished and counts them, waiting
(within its timeout) only for a `write()` call under way, never for a full pipe.

The bridge's reports (`diagnostics.report`) are never made under the write lock: a message is
noted under it and reported once it is released.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Protocol

from bridge import forking
from bridge.diagnostics import report
from bridge.stats import SinkStats

__all__ = ["LineAbandoned", "LineWriter", "Output", "WriterSink"]

_monotonic = time.monotonic


class LineAbandoned(OSError):
    """Raised by `Output.write` for the rest of a line it cannot finish where the line began."""


class Output(Protocol):
    """A destination for bytes: a file (with rotation), a pipe, a socket.

    After a partial write, the next `write` is always the rest of that line.
    """

    def write(self, data: bytes) -> int:
        """One write() call; may write part of `data`, or raise BlockingIOError or OSError."""
        ...

    def wait_writable(self, timeout: float) -> None:
        """Block (background thread only) until a write could make progress, or timeout."""
        ...

    def maintenance_due(self, now: float) -> bool:
        """Cheap check on the calling thread: should the background thread `maintain()`?"""
        ...

    def maintain(self) -> None:
        """Check the path, reopen or rotate; under the write lock, never on the fast path."""
        ...

    def fsync(self) -> None: ...

    def close(self) -> None: ...


Note = tuple[str, str]  # (cause, message) for `report`, made under the write lock


def _send(notes: list[Note]) -> None:
    for cause, message in notes:
        report(cause, message)


class LineWriter:
    """Direct-or-deferred writer of whole lines with a bounded queue and an overflow policy."""

    # Slots: attribute reads on the per-event fast path are measurably cheaper.
    __slots__ = (
        "__weakref__",
        "_accepted_direct",
        "_accepted_queued",
        "_always_background",
        "_busy",
        "_closed",
        "_direct",
        "_drained",
        "_failing",
        "_head_started",
        "_held",
        "_in_write",
        "_lost_counted",
        "_notes",
        "_queue",
        "_queue_lock",
        "_queued_bytes",
        "_resume_direct_at",
        "_retry_at",
        "_stopping",
        "_thread",
        "_wakeup",
        "_write_lock",
        "_written",
        "fsync_each",
        "max_bytes",
        "max_events",
        "name",
        "output",
        "overflow",
        "slow_write_seconds",
        "stats",
        "sync",
    )

    defer_seconds = 5.0
    block_seconds = 1.0
    retry_initial = 0.05  # pause before trying the rest of a line again, doubled up to...
    retry_max = 2.0

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
        forking.reset_in_child(self)

    def _reset_state(self) -> None:
        self._write_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._wakeup = threading.Condition(self._queue_lock)
        self._drained = threading.Condition(self._queue_lock)
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        # Under _queue_lock: the lines the thread took from the queue and has not finished
        # with, first the one it writes; close() counts those it never will.
        self._held: deque[bytes] = deque()
        self._in_write = False  # under _queue_lock: the thread is inside `output.write`
        self._head_started = False  # the queue's first entry is the rest of a started line
        self._retry_at = 0.0  # the thread leaves a started rest alone until then
        self._busy = False
        # direct writes from the calling thread: never with sync (own path) or fsync (thread)
        self._direct = not self._always_background and not self.sync
        self._resume_direct_at = 0.0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._lost_counted = False  # under _queue_lock: close() counted what was left
        self._failing = False  # under _write_lock: the last attempt at a rest failed
        self._notes: list[Note] = []  # under _write_lock
        self._accepted_direct = 0  # under _write_lock
        self._accepted_queued = 0  # under _queue_lock
        self._written = 0  # under _write_lock

    def after_fork_in_child(self) -> None:
        """The parent's queued lines and counters stay the parent's; the child starts empty."""
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
            note: Note | None = None
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
                            note = self._count_write_error(exc)
                            return False
                        if _monotonic() - started > self.slow_write_seconds:
                            note = self._slow_write(started)
                        if written == len(line):
                            self._accepted_direct += 1
                            self._written += 1
                            return True
                        self._defer(started, 0.0)
                        if written:  # partial: the rest must go out next, whatever the policy
                            self._put_back(line[written:], started=True)
                            return True
            finally:
                self._write_lock.release()
                if note is not None:
                    report(*note)
        if self._closed:
            self.stats.count_dropped("closed")
            return False
        if self.sync:
            return self._write_now(line)
        return self._enqueue(line)

    def _slow_write(self, started: float) -> Note:
        elapsed = _monotonic() - started
        self._defer(started, self.defer_seconds)
        return (
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
        wait for the disk. Behind the unfinished rest of a line (a full disk) the line is
        queued instead: the request never waits for the disk to free up.
        """
        with self._write_lock:
            queued = bool(self._queue)
            if not queued:
                if self.output.maintenance_due(_monotonic()):
                    self._maintain()
                before = self._written
                done = self._write_line(line, started=False)
                if done is None:
                    accepted = self._written != before
                    self._accepted_direct += accepted
                else:  # part of it is out: the thread finishes it
                    self._put_back(line[done:], started=bool(done))
                    accepted = True
                if accepted and self.fsync_each and not self._queue:
                    self._fsync()
            notes = self._take_notes()
        _send(notes)
        if queued:
            return self._enqueue(line)
        return accepted

    def _enqueue(self, line: bytes) -> bool:
        with self._queue_lock:
            if not self._make_room(len(line)):
                return False
            if self._lost_counted:  # close() is done (it woke a `block` wait): none will write it
                self.stats.count_dropped("closed")
                return False
            self._queue.append(line)
            self._queued_bytes += len(line)
            self._accepted_queued += 1
            self._ensure_thread()
            self._wakeup.notify()
        return True

    def _make_room(self, size: int) -> bool:
        """Under the queue lock: apply the overflow policy; False when the line is dropped.

        The rest of a started line at the head of the queue is never dropped.
        """
        deadline = time.monotonic() + self.block_seconds
        while len(self._queue) >= self.max_events or self._queued_bytes + size > self.max_bytes:
            if self.overflow == "drop_oldest" and len(self._queue) > self._head_started:
                oldest = self._queue[self._head_started]
                del self._queue[self._head_started]
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

    def _put_back(self, rest: bytes, *, started: bool) -> None:
        """Queue the rest of the calling thread's own line ahead of everything queued.

        The caller holds the write lock, so the background thread is not writing: the rest
        is the next thing written.
        """
        with self._queue_lock:
            self._accepted_queued += 1
            if self._lost_counted:  # close() is done: count it lost here
                self.stats.count_dropped(self._loss_reason())
                return
            self._queue.appendleft(rest)
            self._queued_bytes += len(rest)
            self._head_started = started
            self._ensure_thread()
            self._wakeup.notify()

    # --- background thread -------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name=f"bridge-sink-{self.name}", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        pause = 0.0  # after a failed attempt at a line's rest: doubled each time
        while True:
            with self._queue_lock:
                while not self._stopping:
                    wait = self._retry_at - _monotonic() if self._queue else None
                    if wait is not None and wait <= 0:
                        break
                    self._wakeup.wait(wait)
                if self._stopping and not self._queue:
                    return
            with self._write_lock:
                drained = self._drain_queue_locked()
                if drained and not self._stopping:
                    if self.output.maintenance_due(_monotonic()):
                        self._maintain()
                    if (
                        not self._always_background
                        and not self._closed
                        and _monotonic() >= self._resume_direct_at
                    ):
                        self._direct = True
                notes = self._take_notes()
            _send(notes)
            if self._stopping:
                return
            pause = 0.0 if drained else min(self.retry_max, max(self.retry_initial, pause * 2))
            if pause:
                with self._queue_lock:
                    self._retry_at = _monotonic() + pause

    def _drain_queue_locked(self) -> bool:
        """Under the write lock: write queued lines in order; False when a line's rest failed.

        The rest, and the lines behind it, then go back to the head of the queue.
        """
        while True:
            with self._queue_lock:
                if not self._queue:
                    self._busy = False
                    self._drained.notify_all()
                    return True
                self._held.extend(self._queue)
                started = self._head_started
                self._queue.clear()
                self._queued_bytes = 0
                self._head_started = False
                self._busy = True
                self._drained.notify_all()
            while finished := self._write_held(started=started):
                started = False
            if finished is not None:
                return False
            if self.fsync_each:
                self._fsync()

    def _write_held(self, *, started: bool) -> bool | None:
        """Under the write lock, on the thread: `_write_line` for the first line held.

        True when it is finished with (written, or dropped and counted); False when its rest
        failed and went back to the queue with the lines behind it; None when nothing is
        held (all done, or close() took them). Each `write()` starts only while close() has
        not taken the line, and the line leaves `_held` in the same step, under the queue
        lock, as its outcome is counted: close() and the thread never both count a line.
        close() waits (bounded) for a `write()` under way.
        """
        done = 0
        while True:
            if not done and self.output.maintenance_due(_monotonic()):
                self._maintain()
            with self._queue_lock:
                if not self._held:
                    return None
                line = self._held[0]
                self._in_write = True
            failure: OSError | None = None
            written = 0
            try:
                written = self.output.write(memoryview(line)[done:])  # type: ignore[arg-type]
            except BlockingIOError:
                pass
            except OSError as exc:
                failure = exc
            with self._queue_lock:
                self._in_write = False
                if self._stopping:
                    self._drained.notify_all()  # close() may be waiting for this write
                if not self._held:  # close() waited no longer, and counted the line lost
                    return None
                done += written
                if failure is not None:
                    if self._count_failure(failure, rest=bool(done or started)):
                        self._requeue_held(line[done:], started=True)
                        return False
                    self._held.popleft()
                    return True
                if done == len(line):
                    self._held.popleft()
                    self._failing = False
                    self._written += 1
                    return True
                if not written and self._stopping:  # the reader is gone: close() counts them
                    self._requeue_held(line[done:], started=started or bool(done))
                    return False
            if not written:
                self.output.wait_writable(0.1)

    def _requeue_held(self, rest: bytes, *, started: bool) -> None:
        """Under the queue lock: the held lines go back to the head of the queue, `rest` first."""
        held = self._held
        held[0] = rest
        self._queue.extendleft(reversed(held))
        self._queued_bytes += sum(map(len, held))
        held.clear()
        self._head_started = started
        self._busy = False

    def _write_line(self, line: bytes, *, started: bool) -> int | None:
        """Under the write lock (`sync`, calling thread): write all of `line`, or of a rest.

        None when the line is finished with: written, or dropped and counted (nothing of it
        went out, or the output abandoned it). Otherwise how much of it was written before
        a failure: the caller keeps the rest, which must be the next thing written.
        """
        view = memoryview(line)
        done = 0
        while done < len(line):
            try:
                written = self.output.write(view[done:])  # type: ignore[arg-type]
            except BlockingIOError:
                if self._stopping:  # closing, and the reader is gone: close() counts it
                    return done
                self.output.wait_writable(0.1)
                continue
            except OSError as exc:
                return done if self._count_failure(exc, rest=bool(done or started)) else None
            if not written:
                self.output.wait_writable(0.1)
            done += written
        self._failing = False
        self._written += 1
        return None

    def _count_failure(self, exc: OSError, *, rest: bool) -> bool:
        """Under the write lock: count a failed write; True when the line's rest is kept.

        `rest`: part of the line is out, so the rest must follow, unless the output
        abandoned the line; else the line is dropped.
        """
        if rest and not isinstance(exc, LineAbandoned):
            self._failing = True
            self.stats.record_error(f"write failed: {exc}")
            self._notes.append(
                (
                    f"write-{self.name}",
                    f"sink {self.name}: write failed: {exc}; the rest of the line "
                    "is written as soon as the output takes it",
                )
            )
            return True
        if isinstance(exc, LineAbandoned):
            self._failing = False
        self._notes.append(self._count_write_error(exc))
        return False

    def _maintain(self) -> bool:
        """Under the write lock: let the output reopen or rotate; False (noted) on failure."""
        try:
            self.output.maintain()
        except OSError as exc:
            self.stats.record_error(f"reopen failed: {exc}")
            self._notes.append((f"maintain-{self.name}", f"sink {self.name}: reopen failed: {exc}"))
            return False
        return True

    def _fsync(self) -> None:
        try:
            self.output.fsync()
        except OSError as exc:
            self.stats.record_error(f"fsync failed: {exc}")

    def _count_write_error(self, exc: OSError) -> Note:
        self.stats.count_dropped("write_error")
        self.stats.record_error(f"write failed: {exc}")
        return (f"write-{self.name}", f"sink {self.name}: write failed: {exc}")

    def _take_notes(self) -> list[Note]:
        notes, self._notes = self._notes, []
        return notes

    # --- lifecycle ---------------------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Wait until every accepted line is written (and fsynced if asked); False on timeout.

        Then check that the output still leads where it should (a file's path), reopening
        it if not: False when that failed too (`stats()` says why).
        """
        deadline = time.monotonic() + timeout
        with self._queue_lock:
            if self._queue:
                self._retry_at = 0.0  # the disk may have room again: try now
                self._ensure_thread()
                self._wakeup.notify()
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._drained.wait(remaining)
        if not self._write_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return False
        try:
            ok = self._closed or self._maintain()  # a closed output stays closed
            if self.fsync_each:
                self._fsync()
            notes = self._take_notes()
        finally:
            self._write_lock.release()
        _send(notes)
        return ok

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
        # The thread's chance to finish or give back its lines; close() need not wait longer.
        until = max(deadline, time.monotonic() + 0.1)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, until - time.monotonic()))
        with self._queue_lock:
            # A write() under way decides its line: wait for it, within the same bound. One
            # stuck past it (a hung disk) is counted lost, whether or not it lands later.
            while self._in_write and (remaining := until - time.monotonic()) > 0:
                self._drained.wait(remaining)
            # What the thread never wrote, queued or taken: lost, and counted once, here.
            lost = len(self._queue) + len(self._held)
            self._queue.clear()
            self._held.clear()
            self._queued_bytes = 0
            self._head_started = False
            self._busy = False
            self._lost_counted = True
            self._drained.notify_all()  # a submit waiting for room (`block`) gives up
            if lost:
                self.stats.count_dropped(self._loss_reason(), lost)
        if lost:
            report(f"shutdown-{self.name}", f"sink {self.name}: {lost} lines not written at exit")
        if thread is None or not thread.is_alive():
            with self._write_lock:
                self.output.close()
        return flushed and not lost

    def _loss_reason(self) -> str:
        return "write_error" if self._failing else "shutdown"

    def counters(self) -> dict[str, Any]:
        """Accepted, written and queued counts for `stats()`."""
        return {
            "enqueued": self._accepted_direct + self._accepted_queued,
            "delivered": self._written,
            "queue_depth": len(self._queue) + len(self._held),
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
        self._stats.publish_progress(enqueued=counters["enqueued"], delivered=counters["delivered"])
        snapshot = self._stats.snapshot(queue_depth=counters["queue_depth"])
        snapshot["type"] = self.kind
        snapshot.update(self.describe())
        return snapshot

"""Writes whole lines to an `Output` without letting a slow disk or pipe stall a request.

    emitter -> sink.submit -> LineWriter -> Output (file with rotation, pipe, socket)
                                  `-> LineQueue -> background thread -> Output

The file and stdout sinks hand every line to a `LineWriter` (`WriterSink`). Measured on a
2-core machine: a background thread that wakes per event (or every 20 ms) costs a Flask
request about 5% in GIL hand-offs, while one `write()` of a small line costs ~2 us. So the
calling thread writes the line itself (one `write()`, whole line, O_APPEND or a non-blocking
pipe) when that cannot stall it, and falls back to the background thread, through the bounded
`LineQueue` (`bridge.sinks.linequeue`), when it could:

- the write lock is held (another thread is writing): queue the line, never wait;
- the pipe is full (EAGAIN) or took a partial write: queue the rest;
- a write took longer than `slow_write_seconds` (a slow disk): queue for `defer_seconds`;
- the output asks for maintenance (reopen after logrotate, size rotation): queue, and let the
  background thread do the rename/open work. It is asked before a write: a request's lines
  written together (`submit_many`) may take a file past `rotate_bytes` by their size at most.

`submit_many` (a request's lines) takes one of these paths for all its lines at once, in one
`write()` on the fast path (`bridge.sinks.batchwrite`); every promise below holds for each of
them as if it had been submitted alone, and the counters count lines.

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

When `close()` returns, every line accepted is counted, once: delivered, or dropped. The queue
keeps the lines the thread has taken visible to `close()` until each is finished with;
`close()` counts those the thread has not finished, waiting (within its timeout) only for a
`write()` call under way, never for a full pipe.

The bridge's reports (`diagnostics.report`) are never made under the write lock: a message is
noted under it (`WriteFaults`, which also counts the failures) and reported once it is
released.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bridge import forking
from bridge.diagnostics import report
from bridge.sinks.batchwrite import write_once, write_patiently
from bridge.sinks.linequeue import LineQueue
from bridge.sinks.output import Output
from bridge.sinks.writefaults import Note, WriteFaults
from bridge.stats import SinkStats

__all__ = ["LineWriter"]

_monotonic = time.monotonic


def _send(notes: list[Note]) -> None:
    for cause, message in notes:
        report(cause, message)


class LineWriter:
    """Direct-or-deferred writer of whole lines with a bounded queue and an overflow policy."""

    # Slots: attribute reads on the per-event fast path are measurably cheaper.
    __slots__ = (
        "__weakref__",
        "_accepted_direct",
        "_always_background",
        "_closed",
        "_direct",
        "_faults",
        "_queue",
        "_queued",
        "_resume_direct_at",
        "_thread",
        "_write_lock",
        "_written",
        "fsync_each",
        "name",
        "output",
        "slow_write_seconds",
        "stats",
        "sync",
    )

    defer_seconds = 5.0
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
        self.sync = sync
        self.fsync_each = fsync
        self.slow_write_seconds = slow_write_seconds
        self._always_background = fsync and not sync
        self._closed = False
        self._queue = LineQueue(
            stats=stats,
            policy=overflow,
            max_events=max_events,
            max_bytes=max_bytes,
            start_consumer=self._ensure_thread,
        )
        # The queue's lines themselves: the fast path tests them without a call or a hop.
        self._queued = self._queue.lines
        self._reset_state()
        forking.reset_in_child(self)  # after the queue's: it is reset (emptied) first

    def _reset_state(self) -> None:
        self._write_lock = threading.Lock()
        # direct writes from the calling thread: never with sync (own path) or fsync (thread)
        self._direct = not self._always_background and not self.sync and not self._closed
        self._resume_direct_at = 0.0
        self._thread: threading.Thread | None = None
        self._faults = WriteFaults(self.output, name=self.name, stats=self.stats, queue=self._queue)
        self._accepted_direct = 0  # under _write_lock
        self._written = 0  # under _write_lock

    def after_fork_in_child(self) -> None:
        """The parent's counters and thread stay the parent's; the child starts empty."""
        self._reset_state()

    # --- calling thread ----------------------------------------------------------------------

    def submit(self, line: bytes) -> bool:
        """Write or queue one line; never raises, never waits (except `sync` and `block`).

        The fast path (direct write) is inlined: it runs for nearly every event.
        """
        if self._direct and not self._queued and self._write_lock.acquire(False):
            note: Note | None = None
            try:
                if self._direct and not self._queued:
                    started = _monotonic()
                    if self.output.maintenance_due(started):
                        self._defer(started, 0.0)
                    else:
                        try:
                            written = self.output.write(line)
                        except BlockingIOError:
                            written = 0
                        except OSError as exc:
                            note = self._faults.write_error(exc)
                            return False
                        if _monotonic() - started > self.slow_write_seconds:
                            note = self._slow_write(started)
                        if written == len(line):
                            self._accepted_direct += 1
                            self._written += 1
                            return True
                        self._defer(started, 0.0)
                        if written:  # partial: the rest must go out next, whatever the policy
                            self._queue.put_back(line[written:], started=True)
                            return True
            finally:
                self._write_lock.release()
                if note is not None:
                    report(*note)
        if self._closed:
            self.stats.count_dropped("closed")
            return False
        if self.sync:
            return self._write_now([line]) == 1
        return self._queue.put(line)

    def submit_many(self, lines: list[bytes]) -> int:
        """Write or queue `lines` in order, each as `submit` would; how many were accepted.

        On the fast path all of them go out in one `write()` (`bridge.sinks.batchwrite`).
        """
        if not lines:
            return 0
        accepted = 0
        if self._direct and not self._queued and self._write_lock.acquire(False):
            note: Note | None = None
            try:
                if self._direct and not self._queued:
                    accepted, lines, note = self._write_direct(lines)
            finally:
                self._write_lock.release()
                if note is not None:
                    report(*note)
            if not lines:
                return accepted
        if self._closed:
            self.stats.count_dropped("closed", len(lines))
            return accepted
        if self.sync:
            return accepted + self._write_now(lines)
        return accepted + self._queue.put_many(lines)

    def _write_direct(self, lines: list[bytes]) -> tuple[int, list[bytes], Note | None]:
        """Under the write lock: `submit`'s fast path for every line; (accepted, the lines
        left for the queue, a report). A failure drops, counted, every line not yet out."""
        started = _monotonic()
        if self.output.maintenance_due(started):
            self._defer(started, 0.0)
            return 0, lines, None
        whole, cut, failure = write_once(self.output, lines)
        self._accepted_direct += whole
        self._written += whole
        if failure is not None:
            return whole, [], self._faults.write_error(failure, len(lines) - whole)
        note = None
        if _monotonic() - started > self.slow_write_seconds:
            note = self._slow_write(started)
        if whole == len(lines):
            return whole, [], note
        self._defer(started, 0.0)
        if cut:  # the rest of the line cut must go out next, whatever the policy
            self._queue.put_back(lines[whole][cut:], started=True)
            whole += 1
        return whole, lines[whole:], note

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

    def _write_now(self, lines: list[bytes]) -> int:
        """`sync` mode: the lines are written (and fsynced once if asked) before returning.

        Rotation and reopening happen here too, on the calling thread: the user chose to
        wait for the disk. Behind the unfinished rest of a line (a full disk) the lines are
        queued instead: the request never waits for the disk to free up.
        """
        with self._write_lock:
            queued = bool(self._queued)
            if not queued:
                if self.output.maintenance_due(_monotonic()):
                    self._faults.maintain()
                before = self._written
                accepted, lines = self._write_lines(lines)
                if self._written != before and self.fsync_each:
                    self._faults.fsync()
            notes = self._faults.take_notes()
        _send(notes)
        if queued:
            return self._queue.put_many(lines)
        return accepted + (self._queue.put_many(lines) if lines else 0)

    def _write_lines(self, lines: list[bytes]) -> tuple[int, list[bytes]]:
        """Under the write lock (`sync`): (accepted, the lines to queue). A line nothing of
        which went out is dropped, counted, and the next are tried, as N submits would; once
        part of one is out, its rest is queued first and the lines after it are for the queue.
        """
        accepted = 0
        while lines:
            whole, cut, failure = write_patiently(self.output, lines, self._queue)
            self._written += whole
            self._accepted_direct += whole
            accepted += whole
            if whole:
                self._queue.failing = False
            if whole == len(lines):
                break
            if failure is None or self._faults.failed(failure, rest=bool(cut)):
                # closing with the pipe full (close() counts it), or part of it is out
                self._queue.put_back(lines[whole][cut:], started=bool(cut))
                return accepted + 1, lines[whole + 1 :]
            lines = lines[whole + 1 :]  # dropped, counted
        return accepted, []

    # --- background thread -------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        """Under the queue's lock (its `start_consumer`): one thread, started lazily."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name=f"bridge-sink-{self.name}", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        queue = self._queue
        pause = 0.0  # after a failed attempt at a line's rest: doubled each time
        while queue.wait_for_lines():
            with self._write_lock:
                drained = self._drain_queue_locked()
                if drained and not queue.stopping:
                    if self.output.maintenance_due(_monotonic()):
                        self._faults.maintain()
                    if (
                        not self._always_background
                        and not self._closed
                        and _monotonic() >= self._resume_direct_at
                    ):
                        self._direct = True
                notes = self._faults.take_notes()
            _send(notes)
            if queue.stopping:
                return
            pause = 0.0 if drained else min(self.retry_max, max(self.retry_initial, pause * 2))
            if pause:
                queue.pause(pause)

    def _drain_queue_locked(self) -> bool:
        """Under the write lock: write queued lines in order; False when a line's rest failed.

        The rest, and the lines behind it, then go back to the head of the queue.
        """
        while (started := self._queue.take()) is not None:
            while finished := self._write_held(started=started):
                started = False
            if finished is not None:
                return False
            if self.fsync_each:
                self._faults.fsync()
        return True

    def _write_held(self, *, started: bool) -> bool | None:
        """Under the write lock, on the thread: write the first line the queue holds.

        True when it is finished with (written, or dropped and counted); False when its rest
        failed and went back to the queue with the lines behind it; None when nothing is
        held (all done, or close() took them). Each `write()` starts only while close() has
        not taken the line, and its outcome is settled under the queue's lock, in the same
        step as the line leaves the queue's hands: close() and the thread never both count
        a line. close() waits (bounded) for a `write()` under way.
        """
        queue = self._queue
        done = 0
        while True:
            if not done and self.output.maintenance_due(_monotonic()):
                self._faults.maintain()
            line = queue.begin_write()
            if line is None:
                return None
            failure: OSError | None = None
            written = 0
            try:
                written = self.output.write(memoryview(line)[done:])  # type: ignore[arg-type]
            except BlockingIOError:
                pass
            except OSError as exc:
                failure = exc
            with queue.lock:
                if not queue.end_write():  # close() waited no longer, and counted the line lost
                    return None
                done += written
                if failure is not None:
                    if self._faults.failed(failure, rest=bool(done or started)):
                        queue.requeue_held(line[done:], started=True)
                        return False
                    queue.finished()
                    return True
                if done == len(line):
                    queue.finished()
                    queue.failing = False
                    self._written += 1
                    return True
                if not written and queue.stopping:  # the reader is gone: close() counts them
                    queue.requeue_held(line[done:], started=started or bool(done))
                    return False
            if not written:
                self.output.wait_writable(0.1)

    # --- lifecycle ---------------------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Wait until every accepted line is written (and fsynced if asked); False on timeout.

        Then check that the output still leads where it should (a file's path), reopening
        it if not: False when that failed too (`stats()` says why).
        """
        deadline = time.monotonic() + timeout
        if not self._queue.wait_empty(deadline):
            return False
        if not self._write_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return False
        try:
            ok = self._closed or self._faults.maintain()  # a closed output stays closed
            if self.fsync_each:
                self._faults.fsync()
            notes = self._faults.take_notes()
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
        self._queue.stop()
        # The thread's chance to finish or give back its lines; close() need not wait longer.
        until = max(deadline, time.monotonic() + 0.1)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, until - time.monotonic()))
        # What the thread never wrote, queued or taken: lost, and counted once, there.
        lost = self._queue.discard(until)
        if lost:
            report(f"shutdown-{self.name}", f"sink {self.name}: {lost} lines not written at exit")
        if thread is None or not thread.is_alive():
            with self._write_lock:
                self.output.close()
        return flushed and not lost

    def counters(self) -> dict[str, Any]:
        """Accepted, written and queued counts for `stats()`."""
        return {
            "enqueued": self._accepted_direct + self._queue.accepted,
            "delivered": self._written,
            "queue_depth": self._queue.depth(),
        }

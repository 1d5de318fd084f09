"""LineQueue and WriteFaults on their own: bounds, the started rest, blocking, close's counts.

The queue is driven here the way a `LineWriter` drives it (the calling thread puts, a consumer
takes and settles), without an output; `test_writer` covers the two together.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from bridge.sinks.linequeue import LineQueue
from bridge.sinks.output import LineAbandoned
from bridge.sinks.writefaults import WriteFaults
from bridge.stats import SinkStats
from tests.sinks.fakes import QuietOutput, Watched


def make_queue(**options: Any) -> LineQueue:
    settings: dict[str, Any] = {
        "stats": SinkStats(),
        "policy": "drop_newest",
        "max_events": 100,
        "max_bytes": 1 << 20,
        "start_consumer": lambda: None,
        **options,
    }
    return LineQueue(**settings)


def dropped(queue: LineQueue) -> dict[str, int]:
    return queue.stats.dropped_by_reason


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `call` on a daemon thread; its result lands in the returned list."""
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(call()), daemon=True)
    thread.start()
    return thread, results


def join(thread: threading.Thread) -> None:
    thread.join(10)
    assert not thread.is_alive()


class TestLineQueueBounds:
    def test_drop_newest_refuses_past_max_events(self) -> None:
        """A line past `max_events` is refused and counted; the queued ones stay."""
        queue = make_queue(max_events=2)
        assert [True, True, False] == [queue.put(b"a\n"), queue.put(b"b\n"), queue.put(b"c\n")]
        assert [b"a\n", b"b\n"] == list(queue.lines)
        assert {"queue_overflow": 1} == dropped(queue)
        assert 2 == queue.accepted

    def test_max_bytes_is_a_bound_that_may_be_reached(self) -> None:
        """Lines fit up to exactly `max_bytes` queued bytes, not one byte more."""
        queue = make_queue(max_bytes=10)
        assert queue.put(b"12345\n")
        assert not queue.put(b"12345\n")
        assert queue.put(b"123\n")
        assert 10 == queue.size
        assert {"queue_overflow": 1} == dropped(queue)

    def test_taking_the_lines_frees_their_room(self) -> None:
        """Once the consumer took the lines, their bytes and count no longer bound the queue."""
        queue = make_queue(max_events=1, max_bytes=10)
        assert queue.put(b"123456789\n")
        assert queue.take() is False
        assert 0 == queue.size
        assert queue.put(b"123456789\n")
        assert 2 == queue.depth()
        assert {} == dropped(queue)

    def test_drop_oldest_evicts_the_oldest_lines(self) -> None:
        """drop_oldest makes room by dropping the oldest lines, each counted."""
        queue = make_queue(policy="drop_oldest", max_events=2)
        for line in (b"a\n", b"b\n", b"c\n", b"d\n"):
            assert queue.put(line)
        assert [b"c\n", b"d\n"] == list(queue.lines)
        assert 4 == queue.size
        assert {"queue_overflow": 2} == dropped(queue)

    def test_drop_oldest_never_evicts_the_started_rest(self) -> None:
        """The rest of a started line at the head stays; the whole line behind it goes."""
        queue = make_queue(policy="drop_oldest", max_events=2)
        queue.put_back(b"st\n", started=True)
        assert queue.put(b"a\n")
        assert queue.put(b"b\n")
        assert queue.put(b"c\n")
        assert [b"st\n", b"c\n"] == list(queue.lines)
        assert {"queue_overflow": 2} == dropped(queue)

    def test_drop_oldest_refuses_when_only_the_rest_is_queued(self) -> None:
        """With nothing but the started rest to evict, the new line is refused, counted once."""
        queue = make_queue(policy="drop_oldest", max_events=1)
        queue.put_back(b"st\n", started=True)
        assert not queue.put(b"a\n")
        assert [b"st\n"] == list(queue.lines)
        assert {"queue_overflow": 1} == dropped(queue)

    def test_a_rest_put_back_unstarted_may_be_evicted(self) -> None:
        """A line put back before any byte of it went out is a whole line: it may be evicted."""
        queue = make_queue(policy="drop_oldest", max_events=1)
        queue.put_back(b"whole\n", started=False)
        assert queue.put(b"a\n")
        assert [b"a\n"] == list(queue.lines)
        assert {"queue_overflow": 1} == dropped(queue)


class TestLineQueueBlock:
    def test_block_waits_until_the_consumer_takes_lines(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """block: a put into a full queue wakes the consumer and goes in once it took lines."""
        monkeypatch.setattr(LineQueue, "block_seconds", 30.0)
        woken = threading.Event()
        queue = make_queue(policy="block", max_events=1, start_consumer=woken.set)
        assert queue.put(b"a\n")
        woken.clear()
        queue.drained = watched = Watched(queue.lock)
        thread, results = in_thread(lambda: queue.put(b"b\n"))
        assert watched.waiting.wait(10)
        assert woken.is_set(), "the consumer was not started for the waiting put"
        assert queue.take() is False
        join(thread)
        assert [True] == results
        assert [b"b\n"] == list(queue.lines)
        assert {} == dropped(queue)

    def test_block_gives_up_after_block_seconds(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """block: with no consumer, the put is refused (counted) once `block_seconds` passed."""
        monkeypatch.setattr(LineQueue, "block_seconds", 0.2)
        queue = make_queue(policy="block", max_events=1)
        assert queue.put(b"a\n")
        started = time.monotonic()
        assert not queue.put(b"b\n")
        assert 0.2 <= time.monotonic() - started < 5.0
        assert {"queue_overflow": 1} == dropped(queue)

    def test_a_blocked_put_is_refused_as_closed_by_discard(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """close() discarding the queue wakes a blocked put, which is refused as `closed`."""
        monkeypatch.setattr(LineQueue, "block_seconds", 30.0)
        queue = make_queue(policy="block", max_events=1)
        assert queue.put(b"a\n")
        queue.drained = watched = Watched(queue.lock)
        thread, results = in_thread(lambda: queue.put(b"b\n"))
        assert watched.waiting.wait(10)
        assert 1 == queue.discard(time.monotonic())
        join(thread)
        assert [False] == results
        assert {"shutdown": 1, "closed": 1} == dropped(queue)
        assert 1 == queue.accepted


class TestLineQueueConsumer:
    def test_take_hands_over_every_line_and_says_if_the_first_is_a_rest(self) -> None:
        """take() moves all queued lines to `held`, and tells whether the first is started."""
        queue = make_queue()
        queue.put(b"a\n")
        queue.put_back(b"st\n", started=True)
        assert queue.take() is True
        assert [b"st\n", b"a\n"] == list(queue.held)
        assert (0, False, True) == (len(queue.lines), queue.head_started, queue.busy)
        assert queue.take() is None
        assert not queue.busy

    def test_requeue_puts_the_rest_first_and_keeps_the_order(self) -> None:
        """A failed rest goes back to the head with the held lines, ahead of newer lines."""
        queue = make_queue()
        for line in (b"aaaa\n", b"b\n", b"c\n"):
            queue.put(line)
        queue.take()
        queue.put(b"d\n")
        assert b"aaaa\n" == queue.begin_write()
        with queue.lock:
            assert queue.end_write()
            queue.requeue_held(b"a\n", started=True)
        assert [b"a\n", b"b\n", b"c\n", b"d\n"] == list(queue.lines)
        assert (8, True, 0) == (queue.size, queue.head_started, len(queue.held))

    def test_wait_for_lines_drains_then_stops(self) -> None:
        """Once stopping, the consumer still gets the queued lines, then is told to stop."""
        queue = make_queue()
        queue.put(b"a\n")
        queue.stop()
        assert queue.wait_for_lines()
        queue.take()
        assert not queue.wait_for_lines()

    def test_flush_cuts_the_retry_pause_short(self) -> None:
        """wait_empty() makes the consumer try a paused rest now, not after the pause."""
        queue = make_queue()
        queue.put_back(b"st\n", started=True)
        queue.pause(60.0)
        queue.wakeup = watched = Watched(queue.lock)

        def consume() -> None:
            if queue.wait_for_lines():
                queue.take()
                with queue.lock:
                    queue.finished()
                queue.take()

        thread, _ = in_thread(consume)
        assert watched.waiting.wait(10)
        assert queue.wait_empty(time.monotonic() + 10)
        join(thread)

    def test_wait_empty_times_out_while_lines_wait(self) -> None:
        """wait_empty() returns False at its deadline when nobody takes the lines."""
        queue = make_queue()
        queue.put(b"a\n")
        assert not queue.wait_empty(time.monotonic() + 0.05)


class TestLineQueueDiscard:
    def test_queued_and_held_lines_are_counted_once(self) -> None:
        """discard() counts every line not finished with, queued or held, once."""
        queue = make_queue()
        for line in (b"a\n", b"b\n"):
            queue.put(line)
        queue.take()
        queue.put(b"c\n")
        assert 3 == queue.discard(time.monotonic())
        assert 0 == queue.discard(time.monotonic())
        assert {"shutdown": 3} == dropped(queue)
        assert (0, 0) == (queue.depth(), queue.size)

    def test_losses_while_a_rest_fails_are_write_errors(self) -> None:
        """While the last attempt at a rest failed, what close() gives up is a write error."""
        queue = make_queue()
        queue.put_back(b"st\n", started=True)
        queue.put(b"a\n")
        queue.failing = True
        assert 2 == queue.discard(time.monotonic())
        assert {"write_error": 2} == dropped(queue)

    def test_a_rest_put_back_after_discard_is_counted_lost(self) -> None:
        """A rest handed back once close() counted is counted lost at once, never kept."""
        queue = make_queue()
        queue.discard(time.monotonic())
        queue.put_back(b"st\n", started=True)
        assert (0, 1) == (queue.depth(), queue.accepted)
        assert {"shutdown": 1} == dropped(queue)

    def test_discard_lets_a_write_under_way_decide_its_line(self) -> None:
        """A line whose write() is under way is not counted lost if that write finishes it."""
        queue = make_queue()
        queue.put(b"a\n")
        queue.put(b"b\n")
        queue.take()
        assert b"a\n" == queue.begin_write()
        queue.stop()
        queue.drained = watched = Watched(queue.lock)
        thread, results = in_thread(lambda: queue.discard(time.monotonic() + 30))
        assert watched.waiting.wait(10)
        with queue.lock:
            assert queue.end_write()
            queue.finished()
        join(thread)
        assert [1] == results
        assert {"shutdown": 1} == dropped(queue)

    def test_a_write_stuck_past_the_bound_is_counted_lost(self) -> None:
        """A write() still under way at `until` does not hold close() up: its line is lost."""
        queue = make_queue()
        queue.put(b"a\n")
        queue.take()
        queue.begin_write()
        started = time.monotonic()
        assert 1 == queue.discard(started + 0.05)
        assert time.monotonic() - started >= 0.05
        with queue.lock:
            assert not queue.end_write(), "close() took the line: the writer must not count it"
        assert {"shutdown": 1} == dropped(queue)


class Reopen(QuietOutput):
    """An output whose reopen fails."""

    def write(self, data: bytes) -> int:
        return len(data)

    def maintain(self) -> None:
        raise OSError(errno.ENOTDIR, "Not a directory")


def make_faults() -> WriteFaults:
    return WriteFaults(Reopen(), name="t", stats=SinkStats(), queue=make_queue())


class TestWriteFaults:
    def test_a_failed_rest_is_kept_and_noted(self) -> None:
        """Part of the line is out: the rest is kept (not dropped), the queue is `failing`."""
        faults = make_faults()
        assert faults.failed(OSError(errno.ENOSPC, "full"), rest=True)
        assert faults.queue.failing
        assert {} == faults.stats.dropped_by_reason
        assert ["write"] == [cause.split("-")[0] for cause, _ in faults.take_notes()]
        assert [] == faults.take_notes()

    def test_a_failed_line_with_nothing_out_is_dropped(self) -> None:
        """Nothing of the line went out: it is dropped as a write error, and noted."""
        faults = make_faults()
        assert not faults.failed(OSError(errno.ENOSPC, "full"), rest=False)
        assert {"write_error": 1} == faults.stats.dropped_by_reason
        assert 1 == len(faults.take_notes())

    def test_an_abandoned_rest_is_dropped_and_ends_the_failing(self) -> None:
        """An output that abandoned a line's rest: the line is dropped, no longer failing."""
        faults = make_faults()
        faults.queue.failing = True
        assert not faults.failed(LineAbandoned(errno.ESTALE, "replaced"), rest=True)
        assert not faults.queue.failing
        assert {"write_error": 1} == faults.stats.dropped_by_reason

    def test_a_failed_reopen_is_recorded_and_noted(self) -> None:
        """maintain() failing returns False, records the error and notes a report."""
        faults = make_faults()
        assert not faults.maintain()
        assert "reopen failed" in (faults.stats.last_error or "")
        assert ["maintain"] == [cause.split("-")[0] for cause, _ in faults.take_notes()]

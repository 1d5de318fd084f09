"""LineWriter with outputs that run out of room, cut lines short or fail: counts stay exact.

Each line is written whole or counted as dropped; the rest of a line cut short is the next
thing written; the bridge's reports are made with no lock held that a request needs.
"""

from __future__ import annotations

import errno
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from bridge.sinks import writer as writer_module
from bridge.sinks.linequeue import LineQueue
from bridge.sinks.output import LineAbandoned
from bridge.sinks.writer import LineWriter
from bridge.stats import SinkStats
from tests.sinks.fakes import QuietOutput, Watched


def line(n: int, pad: int = 60) -> bytes:
    return json.dumps({"n": n, "pad": "x" * pad}).encode() + b"\n"


class Disk(QuietOutput):
    """An output with `free` bytes of room: a write takes what fits, then fails (ENOSPC)."""

    def __init__(self, free: int = 1 << 30) -> None:
        self.free = free
        self.data = bytearray()
        self.lock = threading.Lock()

    def write(self, data: bytes) -> int:
        with self.lock:
            if not self.free:
                raise OSError(errno.ENOSPC, "No space left on device")
            taken = min(len(data), self.free)
            self.free -= taken
            self.data += bytes(data[:taken])
            return taken

    def give(self, room: int) -> None:
        with self.lock:
            self.free += room


def make_writer(output: Any, **options: Any) -> LineWriter:
    settings: dict[str, Any] = {
        "name": "test",
        "stats": SinkStats(),
        "overflow": "drop_newest",
        "max_events": 100,
        "max_bytes": 1 << 20,
        # A write preempted on a loaded machine must not count as a slow disk here; the tests
        # of slow writes ask for one (-1.0: every write is slow).
        "slow_write_seconds": 60.0,
        **options,
    }
    return LineWriter(output, **settings)


def wait_for_failure(writer: LineWriter) -> None:
    """Until the writer's thread has tried a line's rest and failed (bounded)."""
    for _ in range(400):
        writer.flush(0.05)
        if writer.stats.last_error:
            return
    pytest.fail("the rest of the line was never tried")


def counts(writer: LineWriter) -> tuple[int, int, dict[str, int]]:
    """(enqueued, delivered, dropped_by_reason)."""
    counters = writer.counters()
    dropped = writer.stats.snapshot(queue_depth=0)["dropped_by_reason"]
    return counters["enqueued"], counters["delivered"], dropped


class TestLineCutShort:
    def test_rest_is_finished_when_room_comes_back(self) -> None:
        """No room mid-line: the rest is written later, then the lines queued behind it."""
        disk = Disk(free=len(line(0)) + 10)
        writer = make_writer(disk)
        assert [True] * 4 == [writer.submit(line(n)) for n in range(4)]
        wait_for_failure(writer)
        disk.give(1 << 20)
        assert writer.flush(5.0)
        assert b"".join(line(n) for n in range(4)) == bytes(disk.data)
        assert (4, 4, {}) == counts(writer)
        writer.close(1.0)

    def test_rest_goes_before_lines_queued_meanwhile(self) -> None:
        """Lines other threads queued during a cut-short write never land inside that line."""

        class HalfOnce(Disk):
            """The first write stalls, then takes half the line."""

            def __init__(self) -> None:
                super().__init__()
                self.started = threading.Event()
                self.release = threading.Event()

            def write(self, data: bytes) -> int:
                if not self.started.is_set():
                    self.started.set()
                    self.release.wait(10)
                    self.data += bytes(data[: len(data) // 2])
                    return len(data) // 2
                return super().write(data)

        output = HalfOnce()
        writer = make_writer(output)
        first = threading.Thread(target=writer.submit, args=(line(0),))
        first.start()
        assert output.started.wait(10)
        assert [True, True] == [writer.submit(line(1)), writer.submit(line(2))]
        output.release.set()
        first.join(10)
        assert writer.flush(5.0)
        assert line(0) + line(1) + line(2) == bytes(output.data)
        writer.close(1.0)

    def test_drop_oldest_never_drops_the_rest(self) -> None:
        """A full queue under drop_oldest drops whole lines, never the rest of a started one."""
        disk = Disk(free=10)
        writer = make_writer(disk, overflow="drop_oldest", max_events=2)
        writer.submit(line(0))
        wait_for_failure(writer)
        for n in range(1, 4):
            writer.submit(line(n))
        disk.give(1 << 20)
        assert writer.flush(5.0)
        assert line(0) + line(3) == bytes(disk.data)
        assert (4, 2, {"queue_overflow": 2}) == counts(writer)
        writer.close(1.0)

    def test_close_counts_an_unfinished_line_once(self) -> None:
        """Closed while no room comes back: the cut line and the one behind it are dropped."""
        disk = Disk(free=10)
        writer = make_writer(disk)
        writer.submit(line(0))
        writer.submit(line(1))
        wait_for_failure(writer)
        assert not writer.close(0.2)
        assert (2, 0, {"write_error": 2}) == counts(writer)
        assert writer.flush(1.0), "nothing is left to wait for"

    def test_no_room_at_all_drops_the_line_and_writes_the_next(self) -> None:
        """A line of which nothing fits is dropped (counted); the next one is written."""
        disk = Disk(free=0)
        writer = make_writer(disk)
        assert not writer.submit(line(0))
        disk.give(1 << 20)
        assert writer.submit(line(1))
        assert writer.close(1.0)
        assert line(1) == bytes(disk.data)
        assert (1, 1, {"write_error": 1}) == counts(writer)

    def test_an_abandoned_line_is_counted_and_the_next_written(self) -> None:
        """An output that cannot finish a line (its file was replaced) drops just that line."""

        class Replaced(Disk):
            """Takes half a line, then cannot finish it where it began."""

            def write(self, data: bytes) -> int:
                if not self.data:
                    self.data += bytes(data[:10])
                    return 10
                if len(self.data) == 10:
                    self.data += b"|"
                    raise LineAbandoned(errno.ESTALE, "replaced")
                return super().write(data)

        output = Replaced()
        writer = make_writer(output)
        writer.submit(line(0))
        assert writer.flush(5.0)
        writer.submit(line(1))
        assert writer.close(1.0)
        assert line(0)[:10] + b"|" + line(1) == bytes(output.data)
        assert (2, 1, {"write_error": 1}) == counts(writer)

    def test_sync_returns_while_the_rest_waits_for_room(self) -> None:
        """sync = true: a cut-short line is finished by the thread; the request goes on."""
        disk = Disk(free=10)
        writer = make_writer(disk, sync=True)
        assert writer.submit(line(0))
        assert writer.submit(line(1))  # behind the rest: queued, not written out of order
        wait_for_failure(writer)
        disk.give(1 << 20)
        assert writer.flush(5.0)
        assert line(0) + line(1) == bytes(disk.data)
        assert (2, 2, {}) == counts(writer)
        writer.close(1.0)


class Stuck(Disk):
    """A pipe nobody reads: every write finds it full; the wait for room blocks until released."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()
        self.release = threading.Event()

    def write(self, data: bytes) -> int:
        raise BlockingIOError(errno.EAGAIN, "full")

    def wait_writable(self, timeout: float) -> None:
        self.waiting.set()
        self.release.wait(10)


class Hung(Disk):
    """A write that blocks inside the kernel (a hung network disk) until released."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = threading.Event()
        self.release = threading.Event()

    def write(self, data: bytes) -> int:
        self.writing.set()
        self.release.wait(10)
        return super().write(data)


def join(thread: threading.Thread | None) -> None:
    assert thread is not None
    thread.join(10)
    assert not thread.is_alive()


class TestClose:
    def test_lines_a_thread_holds_past_close_are_counted_once(self) -> None:
        """A thread still writing when close() stops waiting: its lines are counted lost once."""
        output = Stuck()
        writer = make_writer(output)
        for n in range(5):
            writer.submit(line(n))
        assert output.waiting.wait(10)
        assert not writer.close(0.1)
        output.release.set()
        join(writer._thread)
        assert (5, 0, {"shutdown": 5}) == counts(writer)

    def test_counts_are_complete_when_close_returns(self) -> None:
        """Lines the thread took but could not write are counted by close(), not after it."""
        output = Stuck()
        writer = make_writer(output)
        for n in range(5):
            writer.submit(line(n))
        assert output.waiting.wait(10)  # the thread holds all five, waiting for room
        assert not writer.close(0.1)
        assert (5, 0, {"shutdown": 5}) == counts(writer)
        assert 0 == writer.counters()["queue_depth"]
        output.release.set()
        join(writer._thread)

    def test_a_write_stuck_past_close_is_counted_lost_once(self) -> None:
        """A write() that outlasts close(): its line is lost, and the lines behind it never go."""
        output = Hung()
        writer = make_writer(output, fsync=True)  # every line goes through the thread
        for n in range(3):
            writer.submit(line(n))
        assert output.writing.wait(10)
        assert not writer.close(0.1)
        assert (3, 0, {"shutdown": 3}) == counts(writer)
        output.release.set()
        join(writer._thread)
        assert (3, 0, {"shutdown": 3}) == counts(writer)
        assert line(0) == bytes(output.data), "the lines close() counted were not written"

    def test_a_submit_blocked_on_a_full_queue_is_refused_by_close(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """overflow = block: a submit waiting for room when close() runs is dropped, not kept."""
        monkeypatch.setattr(LineQueue, "block_seconds", 30.0)
        output = Stuck()
        writer = make_writer(output, overflow="block", max_events=1)
        watched = writer._queue.drained = Watched(writer._queue.lock)
        writer.submit(line(0))
        assert output.waiting.wait(10)  # the thread holds line 0
        writer.submit(line(1))  # the queue is full now
        results: list[bool] = []
        blocked = threading.Thread(
            target=lambda: results.append(writer.submit(line(2))), daemon=True
        )
        blocked.start()
        assert watched.waiting.wait(10)
        assert not writer.close(0.1)
        join(blocked)
        assert [False] == results
        assert (2, 0, {"shutdown": 2, "closed": 1}) == counts(writer)
        assert 0 == writer.counters()["queue_depth"]
        output.release.set()
        join(writer._thread)


Scenario = Callable[[LineWriter, Any], None]


class Failing(Disk):
    """No room at all, and a reopen that fails: every failure the writer reports."""

    def __init__(self) -> None:
        super().__init__(free=0)
        self.due = False

    def maintenance_due(self, now: float) -> bool:
        return self.due

    def maintain(self) -> None:
        self.due = False
        raise OSError(errno.ENOTDIR, "Not a directory")


def direct_write_fails(writer: LineWriter, output: Failing) -> None:
    writer.submit(line(0))


def rest_fails_on_the_thread(writer: LineWriter, output: Failing) -> None:
    output.free = 10
    writer.submit(line(0))
    wait_for_failure(writer)


def reopen_fails_on_the_thread(writer: LineWriter, output: Failing) -> None:
    output.due = True
    output.free = 1 << 20
    writer.submit(line(0))
    assert writer.flush(5.0) is False


def slow_write(writer: LineWriter, output: Failing) -> None:
    output.free = 1 << 20
    writer.slow_write_seconds = -1.0
    writer.submit(line(0))


def sync_reopen_fails(writer: LineWriter, output: Failing) -> None:
    writer.sync = True
    writer._direct = False
    output.due = True
    output.free = 1 << 20
    writer.submit(line(0))


class TestReports:
    @pytest.mark.parametrize(
        "scenario",
        [
            direct_write_fails,
            rest_fails_on_the_thread,
            reopen_fails_on_the_thread,
            slow_write,
            sync_reopen_fails,
        ],
    )
    def test_reports_are_made_without_the_write_lock(
        self, monkeypatch: pytest.MonkeyPatch, scenario: Scenario
    ) -> None:
        """Every report is made after the write lock is released (a request may need it)."""
        output = Failing()
        writer = make_writer(output)
        reports: list[tuple[str, bool]] = []

        def record(cause: str, message: str) -> bool:
            free = writer._write_lock.acquire(timeout=1.0)  # False: this thread holds it
            if free:
                writer._write_lock.release()
            reports.append((cause.split("-")[0], free))
            return True

        monkeypatch.setattr(writer_module, "report", record)
        scenario(writer, output)
        writer.close(0.1)
        assert reports, "the scenario reported nothing"
        assert [(cause, True) for cause, _ in reports] == reports

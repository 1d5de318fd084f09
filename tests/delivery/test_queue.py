"""The feeds: bounded memory queue with overflow policies, and the worker's wake-up rule."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from bridge.delivery.feed import Batch, Batching
from bridge.delivery.memoryfeed import MemoryFeed
from bridge.delivery.spool import Spool
from bridge.delivery.spoolfeed import SpoolFeed
from bridge.stats import SinkStats
from tests.delivery.helpers import CountingCondition, event_line, ids_of


def memory_feed(
    *,
    max_events: int = 100,
    max_bytes: int = 1 << 20,
    overflow: str = "drop_newest",
    batch: Batching | None = None,
    block_seconds: float = 1.0,
) -> tuple[MemoryFeed, SinkStats, list[int]]:
    stats = SinkStats()
    started: list[int] = []
    feed = MemoryFeed(
        batch or Batching(10, 1 << 20, 60.0),
        max_events=max_events,
        max_bytes=max_bytes,
        stats=stats,
        overflow=overflow,
        start_worker=lambda: started.append(1),
        block_seconds=block_seconds,
    )
    return feed, stats, started


def taken_ids(feed: MemoryFeed, max_events: int = 1000, max_bytes: int = 1 << 30) -> list[str]:
    batch = feed.take(max_events, max_bytes)
    return [] if batch is None else ids_of(batch.lines)


class TestMemoryFeed:
    def test_put_accepts_until_the_event_bound_then_drops_newest(self) -> None:
        """drop_newest: lines past queue_max_events are refused and counted queue_overflow."""
        feed, stats, _ = memory_feed(max_events=3)
        lines = [event_line() for _ in range(5)]
        assert [True, True, True, False, False] == [feed.put(line) for line in lines]
        assert ids_of(lines[:3]) == taken_ids(feed)
        assert {"queue_overflow": 2} == stats.dropped_by_reason

    def test_the_byte_bound_holds_too(self) -> None:
        """The queue never holds more than queue_max_bytes of lines."""
        line = event_line(padding="x" * 100)
        feed, stats, _ = memory_feed(max_events=1000, max_bytes=len(line) * 4)
        accepted = sum(feed.put(line) for _ in range(10))
        assert 4 == accepted
        assert 4 == feed.depth()
        assert 6 == stats.dropped_by_reason["queue_overflow"]

    def test_drop_oldest_keeps_the_newest_lines(self) -> None:
        """drop_oldest evicts from the head, counted queue_overflow, and takes the new line."""
        feed, stats, _ = memory_feed(max_events=3, overflow="drop_oldest")
        lines = [event_line() for _ in range(5)]
        assert all(feed.put(line) for line in lines)
        assert ids_of(lines[2:]) == taken_ids(feed)
        assert {"queue_overflow": 2} == stats.dropped_by_reason

    def test_block_gives_up_after_its_bounded_wait(self) -> None:
        """block: with nobody draining, the line is dropped once block_seconds have passed."""
        feed, stats, _ = memory_feed(max_events=1, overflow="block", block_seconds=0.01)
        assert feed.put(event_line())
        assert not feed.put(event_line())
        assert {"queue_overflow": 1} == stats.dropped_by_reason

    def test_block_proceeds_when_the_worker_takes_a_batch(self) -> None:
        """block: a waiting producer gets its line in as soon as the worker makes room."""
        feed, stats, _ = memory_feed(max_events=1, overflow="block", block_seconds=60.0)
        first, second = event_line(), event_line()
        assert feed.put(first)
        result: list[bool] = []
        producer = threading.Thread(target=lambda: result.append(feed.put(second)))
        producer.start()
        assert ids_of([first]) == taken_ids(feed)
        producer.join(30)
        assert [True] == result
        assert ids_of([second]) == taken_ids(feed)
        assert {} == stats.dropped_by_reason

    def test_take_respects_event_and_byte_limits(self) -> None:
        """A batch holds at most max_events lines and max_bytes of lines, oldest first."""
        feed, _, _ = memory_feed()
        lines = [event_line() for _ in range(10)]
        for line in lines:
            feed.put(line)
        assert ids_of(lines[:4]) == taken_ids(feed, max_events=4)
        assert ids_of(lines[4:6]) == taken_ids(feed, max_bytes=len(lines[4]) * 2 + 1)
        assert ids_of(lines[6:]) == taken_ids(feed)
        assert [] == taken_ids(feed)

    def test_a_line_larger_than_max_bytes_goes_alone(self) -> None:
        """An oversized line is still taken, by itself, so it cannot block the queue."""
        feed, _, _ = memory_feed()
        big, small = event_line(padding="x" * 500), event_line()
        feed.put(big)
        feed.put(small)
        assert ids_of([big]) == taken_ids(feed, max_bytes=100)
        assert ids_of([small]) == taken_ids(feed, max_bytes=100)

    def test_the_worker_starts_on_the_first_put_only(self) -> None:
        """The worker thread is started lazily: once, by the first accepted line."""
        feed, _, started = memory_feed()
        assert [] == started
        for _ in range(5):
            feed.put(event_line())
        assert [1] == started

    def test_closed_feed_refuses_and_counts(self) -> None:
        """After close, put() refuses lines and counts them as dropped "closed"."""
        feed, stats, _ = memory_feed()
        feed.close()
        assert not feed.put(event_line())
        assert {"closed": 1} == stats.dropped_by_reason
        assert 1 == feed.rejected

    def test_pending_counts_queued_and_in_flight_lines(self) -> None:
        """Lines taken but not settled are still pending (flush waits for them)."""
        feed, _, _ = memory_feed()
        for _ in range(5):
            feed.put(event_line())
        feed.take(3, 1 << 20)
        assert 5 == feed.pending()
        feed.settle(3)
        assert 2 == feed.pending()


class TestWakeUpRule:
    def run_worker(self, feed: MemoryFeed, total: int, taken: list[int]) -> threading.Thread:
        def work() -> None:
            while sum(taken) < total and feed.wait_for_batch():
                batch = feed.take(feed.batch_events, feed.batch_bytes)
                if batch is not None:
                    taken.append(len(batch))
                    feed.settle(len(batch))

        thread = threading.Thread(target=work)
        thread.start()
        return thread

    def test_puts_wake_the_worker_about_once_per_batch_not_per_line(self) -> None:
        """5000 lines in batches of 500 wake the worker at most twice per batch."""
        feed, _, _ = memory_feed(max_events=10_000, batch=Batching(500, 1 << 30, 60.0))
        ready = CountingCondition(feed.lock)
        feed._ready = ready
        taken: list[int] = []
        worker = self.run_worker(feed, 5000, taken)
        for _ in range(5000):
            assert feed.put(b"x" * 50 + b"\n")
        worker.join(30)
        assert not worker.is_alive()
        assert 5000 == sum(taken)
        assert ready.notifies <= 2 * 10

    def test_an_idle_memory_feed_waits_without_a_timeout(self) -> None:
        """Nothing queued: the worker sleeps until woken (no periodic polling)."""
        feed, _, _ = memory_feed()
        ready = CountingCondition(feed.lock)
        feed._ready = ready
        worker = threading.Thread(target=feed.wait_for_batch)
        worker.start()
        assert ready.waiting.wait(30)
        feed.stop()
        worker.join(30)
        assert [None] == ready.wait_timeouts

    def test_a_partial_batch_waits_for_the_batch_timeout(self) -> None:
        """A few lines: the worker waits the rest of batch_timeout, measured from the first."""
        feed, _, _ = memory_feed(batch=Batching(500, 1 << 30, 42.0))
        ready = CountingCondition(feed.lock)
        feed._ready = ready
        feed.put(event_line())
        worker = threading.Thread(target=feed.wait_for_batch)
        worker.start()
        assert ready.waiting.wait(30)
        feed.begin_flush()  # a flush wakes it at once
        worker.join(30)
        assert 1 == len(ready.wait_timeouts)
        timeout = ready.wait_timeouts[0]
        assert timeout is not None and 0 < timeout <= 42.0

    def test_stop_ends_a_backoff_sleep(self) -> None:
        """sleep() returns False as soon as the feed is stopped."""
        feed, _, _ = memory_feed()
        result: list[bool] = []
        worker = threading.Thread(target=lambda: result.append(feed.sleep(3600.0)))
        worker.start()
        feed.stop()
        worker.join(30)
        assert [False] == result

    def test_cut_backoff_ends_one_sleep_early(self) -> None:
        """Close cuts the current backoff short (True: carry on), once."""
        feed, _, _ = memory_feed()
        feed.cut_backoff()
        assert feed.sleep(3600.0)


class TestSpoolFeed:
    @pytest.fixture
    def spool(self, tmp_path: Path) -> Any:
        spool = Spool(
            tmp_path / "spool", max_bytes=4096, fsync="never", event_ttl=3600.0, stats=SinkStats()
        )
        yield spool
        spool.close()

    def spool_feed(self, spool: Spool, overflow: str) -> tuple[SpoolFeed, SinkStats]:
        stats = spool._stats
        feed = SpoolFeed(
            Batching(500, 1 << 20, 60.0),
            spool=spool,
            max_bytes=4096,
            stats=stats,
            overflow=overflow,
            start_worker=lambda: None,
            block_seconds=0.01,
        )
        return feed, stats

    def test_put_appends_and_take_reads_back_in_order(self, spool: Spool) -> None:
        """Lines go to disk on put and come back from take, with their spool records."""
        feed, stats = self.spool_feed(spool, "spool")
        lines = [event_line() for _ in range(5)]
        assert all(feed.put(line) for line in lines)
        batch = feed.take(500, 1 << 20)
        assert isinstance(batch, Batch) and batch.records is not None
        assert lines == batch.lines
        assert 5 == stats.spooled

    @pytest.mark.parametrize("overflow", ["drop_newest", "block"])
    def test_a_full_spool_refuses_new_lines_for_drop_newest_and_block(
        self, spool: Spool, overflow: str
    ) -> None:
        """drop_newest / block: once the spool is at its cap new lines are refused, not old ones."""
        feed, stats = self.spool_feed(spool, overflow)
        line = event_line(padding="x" * 400)
        results = [feed.put(line) for _ in range(12)]
        accepted = results.count(True)
        assert results == [True] * accepted + [False] * (12 - accepted)
        assert spool.pending_bytes() <= 4096
        assert 12 - accepted == stats.dropped_by_reason["spool_full"]

    def test_an_idle_spool_feed_wakes_rarely_to_adopt_orphans(self, spool: Spool) -> None:
        """Idle with a spool: one wake-up every IDLE_RECHECK (30 s) seconds, no faster."""
        feed, _ = self.spool_feed(spool, "spool")
        feed.take(500, 1 << 20)  # nothing there: the start-up recheck is done
        ready = CountingCondition(feed.lock)
        feed._ready = ready
        worker = threading.Thread(target=feed.wait_for_batch)
        worker.start()
        assert ready.waiting.wait(30)
        feed.stop()
        worker.join(30)
        assert [30.0] == ready.wait_timeouts

    def test_the_spool_policy_evicts_the_oldest_instead(self, spool: Spool) -> None:
        """overflow "spool": the spool's own cap evicts its oldest records; new ones get in."""
        feed, stats = self.spool_feed(spool, "spool")
        line = event_line(padding="x" * 400)
        assert all(feed.put(line) for _ in range(12))
        assert spool.pending_bytes() <= 4096
        assert stats.dropped_by_reason["spool_full"] > 0

"""`Feed.put_many`: a request's lines for the cost of about one `put`, and every counter, the
queued lines and the worker's wake-up exactly as N `put` calls would leave them (each test
feeds a twin feed the same lines one `put` at a time and compares)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from bridge.delivery.feed import Batching, Feed
from bridge.delivery.memoryfeed import MemoryFeed
from bridge.delivery.spool import RECORD_OVERHEAD, Spool
from bridge.delivery.spoolfeed import SpoolFeed
from bridge.stats import SinkStats
from tests.delivery.helpers import CountingCondition, event_line, ids_of


class CountingLock:
    """Stands in for a feed's lock: the real lock underneath, acquisitions counted."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.acquired = 0

    def __enter__(self) -> bool:
        self.acquired += 1
        return bool(self.lock.__enter__())

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.lock.__exit__(kind, exc, tb)


class SignallingCondition(threading.Condition):
    """A Condition whose every notify() releases a semaphore the test can wait on."""

    def __init__(self, lock: Any) -> None:
        super().__init__(lock)
        self.notified = threading.Semaphore(0)

    def notify(self, n: int = 1) -> None:
        super().notify(n)
        self.notified.release()


def padded(size: int) -> bytes:
    """An event line of about `size` bytes (at least the shortest such)."""
    return event_line(padding="x" * max(0, size - 60))


def snapshot(feed: Feed, started: list[int]) -> dict[str, Any]:
    """Everything `put` touches that can be observed: counters, depth, wake-up, worker."""
    ready = feed._ready
    assert isinstance(ready, CountingCondition)
    with feed.lock:
        return {
            "dropped": feed.stats.dropped_by_reason,
            "rejected": feed.rejected,
            "accepted": feed.accepted(),
            "unread": feed.unread(),
            "unread_bytes": feed._unread_bytes,
            "depth": feed.depth(),
            "notifies": ready.notifies,
            "workers_started": len(started),
        }


def watch(feed: Feed, batch_events: int, batch_bytes: int) -> None:
    """Count the feed's wake-ups, its worker waiting for a batch (as `wait_for_batch` sets)."""
    feed._ready = CountingCondition(feed.lock)
    with feed.lock:
        feed._set_wake(batch_events, batch_bytes)


def memory_twins(
    overflow: str, *, max_events: int = 100, max_bytes: int = 1 << 20, batch: int = 4
) -> tuple[tuple[MemoryFeed, list[int]], tuple[MemoryFeed, list[int]]]:
    def make() -> tuple[MemoryFeed, list[int]]:
        started: list[int] = []
        feed = MemoryFeed(
            Batching(batch, 1 << 20, 60.0),
            max_events=max_events,
            max_bytes=max_bytes,
            stats=SinkStats(),
            overflow=overflow,
            start_worker=lambda: started.append(1),
            block_seconds=0.01,
        )
        watch(feed, batch, 1 << 20)
        return feed, started

    return make(), make()


def queued(feed: MemoryFeed) -> list[str]:
    batch = feed.take(1 << 20, 1 << 40)
    return [] if batch is None else ids_of(batch.lines)


POLICIES = ["drop_newest", "drop_oldest", "block"]


class TestMemoryFeedPutMany:
    def test_under_capacity_takes_every_line_under_one_lock(self) -> None:
        """Nine lines into an idle queue: all accepted, in order, one lock acquisition."""
        (feed, started), _ = memory_twins("drop_newest")
        counting = CountingLock(feed.lock)
        feed.lock = counting  # type: ignore[assignment]
        lines = [event_line() for _ in range(9)]
        assert 9 == feed.put_many(lines)
        assert (1, [1]) == (counting.acquired, started)
        feed.lock = counting.lock
        assert ids_of(lines) == queued(feed)

    def test_a_batch_on_the_hot_path_takes_one_lock_too(self) -> None:
        """With the worker running and lines queued, a batch goes in at once."""
        (feed, _), _ = memory_twins("drop_newest", batch=100)
        first = [event_line() for _ in range(3)]
        assert 3 == feed.put_many(first)
        counting = CountingLock(feed.lock)
        feed.lock = counting  # type: ignore[assignment]
        more = [event_line() for _ in range(5)]
        assert 5 == feed.put_many(more)
        assert 1 == counting.acquired
        feed.lock = counting.lock
        assert ids_of(first + more) == queued(feed)

    def test_an_empty_batch_changes_nothing(self) -> None:
        """put_many([]) accepts nothing and starts nothing."""
        (feed, started), (twin, twin_started) = memory_twins("drop_newest")
        assert 0 == feed.put_many([])
        assert snapshot(twin, twin_started) == snapshot(feed, started)

    @pytest.mark.parametrize("overflow", POLICIES)
    def test_crossing_the_event_bound_mid_batch_matches_n_puts(self, overflow: str) -> None:
        """Past queue_max_events mid-batch: same refusals, evictions and lines as N puts."""
        (feed, started), (twin, twin_started) = memory_twins(overflow, max_events=6)
        warm = [event_line() for _ in range(3)]
        lines = [event_line() for _ in range(9)]
        for each in (feed, twin):
            assert all(each.put(line) for line in warm)
        expected = sum(twin.put(line) for line in lines)
        assert expected == feed.put_many(lines)
        assert snapshot(twin, twin_started) == snapshot(feed, started)
        assert queued(twin) == queued(feed)

    @pytest.mark.parametrize("overflow", POLICIES)
    def test_crossing_the_byte_bound_with_mixed_sizes_matches_n_puts(self, overflow: str) -> None:
        """Past queue_max_bytes with a large line in the middle: the same as N puts (for
        drop_newest a smaller line after a refused one still gets in)."""
        (feed, started), (twin, twin_started) = memory_twins(overflow, max_bytes=2000)
        lines = [padded(300), padded(900), padded(1500), padded(300), padded(2500), padded(100)]
        expected = sum(twin.put(line) for line in lines)
        assert expected == feed.put_many(lines)
        assert snapshot(twin, twin_started) == snapshot(feed, started)
        assert queued(twin) == queued(feed)
        assert {"queue_overflow"} == set(feed.stats.dropped_by_reason)

    def test_the_worker_is_woken_once_when_the_batch_crosses_the_threshold(self) -> None:
        """A batch of 9 with batches of 4: one wake-up, as 9 puts give."""
        (feed, started), (twin, twin_started) = memory_twins("drop_newest", batch=4)
        for each in (feed, twin):
            assert each.put(event_line())
        lines = [event_line() for _ in range(9)]
        assert all(twin.put(line) for line in lines)
        assert 9 == feed.put_many(lines)
        assert 1 == snapshot(feed, started)["notifies"]
        assert snapshot(twin, twin_started) == snapshot(feed, started)

    def test_block_proceeds_when_the_worker_takes_a_batch(self) -> None:
        """block: a batch past the bound waits for the worker, then every line gets in."""
        stats = SinkStats()
        feed = MemoryFeed(
            Batching(10, 1 << 20, 60.0),
            max_events=2,
            max_bytes=1 << 20,
            stats=stats,
            overflow="block",
            start_worker=lambda: None,
            block_seconds=60.0,
        )
        ready = SignallingCondition(feed.lock)
        feed._ready = ready
        lines = [event_line() for _ in range(4)]
        result: list[int] = []
        producer = threading.Thread(target=lambda: result.append(feed.put_many(lines)))
        producer.start()
        assert ready.notified.acquire(timeout=30)  # the third line waits for room
        first = feed.take(10, 1 << 20)
        producer.join(30)
        rest = feed.take(10, 1 << 20)
        assert first is not None and rest is not None
        assert [4] == result
        assert ids_of(lines) == ids_of(first.lines + rest.lines)
        assert {} == stats.dropped_by_reason

    def test_a_closed_feed_refuses_every_line_and_counts_each(self) -> None:
        """After close, each line of a batch is refused and counted "closed"."""
        (feed, started), (twin, twin_started) = memory_twins("drop_newest")
        lines = [event_line() for _ in range(3)]
        for each in (feed, twin):
            each.close()
        assert 0 == sum(twin.put(line) for line in lines)
        assert 0 == feed.put_many(lines)
        assert {"closed": 3} == feed.stats.dropped_by_reason
        assert snapshot(twin, twin_started) == snapshot(feed, started)


@pytest.fixture
def spools(tmp_path: Path) -> Iterator[list[Spool]]:
    made: list[Spool] = []
    yield made
    for spool in made:
        spool.close()


def spool_twins(
    spools: list[Spool], tmp_path: Path, overflow: str, *, max_bytes: int = 1 << 30
) -> tuple[tuple[SpoolFeed, list[int]], tuple[SpoolFeed, list[int]]]:
    def make(name: str) -> tuple[SpoolFeed, list[int]]:
        stats = SinkStats()
        spool = Spool(
            tmp_path / name,
            max_bytes=max_bytes,
            fsync="never",
            event_ttl=3600.0,
            stats=stats,
            segment_bytes=max(2048, max_bytes // 4) if max_bytes < 1 << 20 else None,
        )
        spools.append(spool)
        started: list[int] = []
        feed = SpoolFeed(
            Batching(4, 1 << 20, 60.0),
            spool=spool,
            max_bytes=max_bytes,
            stats=stats,
            overflow=overflow,
            start_worker=lambda: started.append(1),
            block_seconds=0.01,
        )
        watch(feed, 4, 1 << 20)
        return feed, started

    return make("many"), make("one-by-one")


def spooled(feed: SpoolFeed) -> list[str]:
    out: list[bytes] = []
    while (got := feed.spool.read(100, 1 << 30)).lines:
        out += got.lines
        feed.spool.ack(got.records)
    return ids_of(out)


class TestSpoolFeedPutMany:
    def test_under_the_cap_one_append_matches_n_puts(
        self, spools: list[Spool], tmp_path: Path
    ) -> None:
        """Nine lines: one spool append; counters, wake-up and worker start as 9 puts leave."""
        (feed, started), (twin, twin_started) = spool_twins(spools, tmp_path, "spool")
        calls: list[int] = []
        append_many = feed._append_many

        def counted(lines: list[bytes]) -> tuple[int, int]:
            calls.append(len(lines))
            return append_many(lines)

        feed._append_many = counted
        lines = [event_line() for _ in range(9)]
        assert all(twin.put(line) for line in lines)
        assert 9 == feed.put_many(lines)
        assert [9] == calls
        assert 1 == snapshot(feed, started)["notifies"]  # the batch of 4 was reached, once
        assert snapshot(twin, twin_started) == snapshot(feed, started)
        assert ids_of(lines) == spooled(twin) == spooled(feed)

    @pytest.mark.parametrize("overflow", ["spool", "drop_oldest", "drop_newest", "block"])
    def test_crossing_the_cap_mid_batch_matches_n_puts(
        self, spools: list[Spool], tmp_path: Path, overflow: str
    ) -> None:
        """At spool_max_bytes mid-batch, with a line larger than the cap among them: the same
        refusals and evictions (counted spool_full) and the same lines kept as N puts."""
        cap = 4096
        (feed, started), (twin, twin_started) = spool_twins(
            spools, tmp_path, overflow, max_bytes=cap
        )
        sizes = [400, 900, 400, cap, 1200, 300, 800, 150, 600, 900]
        lines = [padded(size) for size in sizes]
        warm = [padded(500) for _ in range(2)]
        for each in (feed, twin):
            assert all(each.put(line) for line in warm)
        expected = sum(twin.put(line) for line in lines)
        assert expected == feed.put_many(lines)
        assert 0 < expected < len(lines)
        assert snapshot(twin, twin_started) == snapshot(feed, started)
        assert feed.spool.pending_bytes() <= cap
        assert spooled(twin) == spooled(feed)

    def test_a_line_that_does_not_fit_waits_after_the_lines_before_it(
        self, spools: list[Spool], tmp_path: Path
    ) -> None:
        """drop_newest: the lines before a refused one are already on disk when it is
        decided; the ones after it that fit still get in."""
        need = len(padded(300)) + RECORD_OVERHEAD
        (feed, _), _ = spool_twins(spools, tmp_path, "drop_newest", max_bytes=need * 3)
        lines = [padded(300), padded(300), padded(600), padded(300)]
        assert 3 == feed.put_many(lines)
        assert {"spool_full": 1} == feed.stats.dropped_by_reason
        assert ids_of([lines[0], lines[1], lines[3]]) == spooled(feed)

    def test_a_closed_feed_refuses_every_line_and_counts_each(
        self, spools: list[Spool], tmp_path: Path
    ) -> None:
        """After close, each line of a batch is refused and counted "closed"."""
        (feed, started), (twin, twin_started) = spool_twins(spools, tmp_path, "spool")
        lines = [event_line() for _ in range(3)]
        for each in (feed, twin):
            each.close()
        assert 0 == sum(twin.put(line) for line in lines)
        assert 0 == feed.put_many(lines)
        assert {"closed": 3} == feed.stats.dropped_by_reason
        assert snapshot(twin, twin_started) == snapshot(feed, started)

    def test_a_failed_write_is_counted_per_line_and_rejected(
        self, spools: list[Spool], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The spool refuses a batch it cannot write: each line counted, none accepted."""
        (feed, started), _ = spool_twins(spools, tmp_path, "spool")
        assert feed.put(event_line())

        def failing(fd: int, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("bridge.delivery.spool.writer.os.write", failing)
        assert 0 == feed.put_many([event_line() for _ in range(4)])
        monkeypatch.undo()
        state = snapshot(feed, started)
        assert ({"spool_write_failed": 4}, 4, 1, 1) == (
            state["dropped"],
            state["rejected"],
            state["accepted"],
            state["unread"],
        )

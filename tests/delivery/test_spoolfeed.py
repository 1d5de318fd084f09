"""The spool feed's counters: full batches from the spool, and reading again at once only for
records the counters cannot see (released or adopted)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.delivery.feed import Batching
from bridge.delivery.spool import Spool
from bridge.delivery.spoolfeed import SpoolFeed
from bridge.stats import SinkStats
from tests.delivery.helpers import event_line, ids_of


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def spools(spool_dir: Path) -> Iterator[list[Spool]]:
    made: list[Spool] = []
    yield made
    for spool in made:
        spool.close()


def new_feed(spools: list[Spool], spool_dir: Path, batch_events: int = 3) -> SpoolFeed:
    spool = Spool(spool_dir, max_bytes=1 << 30, fsync="never", event_ttl=3600.0, stats=SinkStats())
    spools.append(spool)
    return SpoolFeed(
        Batching(batch_events, 1 << 20, 60.0),
        spool=spool,
        max_bytes=1 << 30,
        stats=SinkStats(),
        overflow="spool",
        start_worker=lambda: None,
    )


class TestSpoolFeedCounters:
    def test_a_full_take_leaves_the_rest_to_the_counters(
        self, spools: list[Spool], spool_dir: Path
    ) -> None:
        """After a full batch the counters still hold the rest: no immediate re-read."""
        feed = new_feed(spools, spool_dir)
        lines = [event_line() for _ in range(5)]
        assert all(feed.put(line) for line in lines)
        first = feed.take(3, 1 << 20)
        assert first is not None
        with feed.lock:
            assert (2, False) == (feed.unread(), feed._recheck)
        rest = feed.take(3, 1 << 20)
        assert rest is not None
        assert ids_of(lines) == ids_of(first.lines + rest.lines)
        with feed.lock:
            assert (0, 5) == (feed.unread(), feed.accepted())

    def test_released_records_are_read_again_at_once(
        self, spools: list[Spool], spool_dir: Path
    ) -> None:
        """Records put back by a failed send are hidden from the counters: read again now."""
        feed = new_feed(spools, spool_dir)
        lines = [event_line() for _ in range(4)]
        assert all(feed.put(line) for line in lines)
        batch = feed.take(3, 1 << 20)
        assert batch is not None and batch.records is not None
        feed.spool.release(batch.records)
        again = feed.take(2, 1 << 20)
        assert again is not None
        with feed.lock:
            assert feed._recheck  # one released record still waits
        assert ids_of(lines[:2]) == ids_of(again.lines)

    def test_adopted_records_wake_the_worker_at_once(
        self, spools: list[Spool], spool_dir: Path
    ) -> None:
        """A feed over a spool that adopted a dead sibling's records reads without waiting."""
        leaver = new_feed(spools, spool_dir)
        lines = [event_line() for _ in range(2)]
        assert all(leaver.put(line) for line in lines)
        leaver.spool.close()
        adopter = new_feed(spools, spool_dir)
        with adopter.lock:
            assert (0, True) == (adopter.unread(), adopter._recheck)
        assert adopter.wait_for_batch()  # at once, although nothing was put
        batch = adopter.take(10, 1 << 20)
        assert batch is not None
        assert ids_of(lines) == ids_of(batch.lines)

"""SinkStats (bridge.stats): the counters every sink keeps, and what a forked child gets."""

from __future__ import annotations

import pytest

from bridge.stats import SinkStats
from tests.forks import run_in_child


def count_in_child(stats: SinkStats, deadline: float = 10.0) -> dict[str, object] | None:
    """Fork while this thread holds the stats lock (a request thread counting at the moment
    another thread forks); the child counts a drop and reports its snapshot. None: it hung."""

    def work() -> dict[str, object]:
        stats.count_dropped("in_child")
        return stats.snapshot(queue_depth=0)

    result: dict[str, object] | None = run_in_child(work, deadline=deadline, holding=stats._lock)
    return result


class TestSinkStats:
    def test_snapshot_sums_drops(self) -> None:
        """dropped is the sum of dropped_by_reason."""
        stats = SinkStats()
        stats.count_dropped("queue_overflow", 2)
        stats.count_dropped("write_error")
        snapshot = stats.snapshot(queue_depth=4)
        assert (3, 4) == (snapshot["dropped"], snapshot["queue_depth"])

    def test_lock_is_new_in_a_forked_child(self) -> None:
        """A fork while another thread holds the stats lock leaves the child able to count,
        from zero: a worker's counters are its own, whatever its parent counted."""
        stats = SinkStats()
        stats.count_dropped("before_fork")
        snapshot = count_in_child(stats)
        assert snapshot is not None, "the child hung on the lock held at fork"
        assert {"in_child": 1} == snapshot["dropped_by_reason"]
        assert {"before_fork": 1} == stats.dropped_by_reason  # the parent's stay the parent's

    def test_fields_are_read_only(self) -> None:
        """Counters change only through the methods that take the lock."""
        stats = SinkStats()
        stats.count_delivered(3)
        stats.publish_spool(spooled=5, spool_bytes=100)
        with pytest.raises(AttributeError):
            stats.delivered = 0  # type: ignore[misc]
        copy = stats.dropped_by_reason
        copy["forged"] = 1
        assert (3, 5, 100, {}) == (
            stats.delivered,
            stats.spooled,
            stats.spool_bytes,
            stats.dropped_by_reason,
        )

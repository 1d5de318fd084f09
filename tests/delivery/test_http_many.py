"""`HttpSink.submit_many` end to end, against a real collector on 127.0.0.1: request-sized
batches of lines (memory queue and spool) arrive once each, in order, counted as N `submit`
calls would count them; with a spool nothing is lost while the collector is down."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bridge.sinks.http import HttpSink
from tests.collector import Collector
from tests.conftest import MakeSink
from tests.delivery.helpers import event_line, ids_of

_names = itertools.count()


def submit_batches(sink: HttpSink, total: int) -> list[bytes]:
    """`total` lines in batches of 1 to 9 (a request's events); every one accepted."""
    lines: list[bytes] = []
    sizes = itertools.cycle([3, 9, 1, 5, 7, 2, 8])
    while len(lines) < total:
        batch = [event_line(padding="x" * 250) for _ in range(min(next(sizes), total - len(lines)))]
        assert len(batch) == sink.submit_many(batch)
        lines += batch
    return lines


@pytest.fixture(params=["memory", "spool"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def sink_for(make_sink: MakeSink, url: str, mode: str, tmp_path: Path) -> HttpSink:
    spool = tmp_path / f"spool-{next(_names)}" if mode == "spool" else None
    return make_sink(url, spool_dir=spool, batch_max_events=50)


class TestSubmitMany:
    def test_every_line_arrives_once_in_order(
        self, collector: Collector, make_sink: MakeSink, tmp_path: Path, mode: str
    ) -> None:
        """2000 lines in request-sized batches: each arrives once, in submit order."""
        sink = sink_for(make_sink, collector.url, mode, tmp_path)
        lines = submit_batches(sink, 2000)
        assert sink.flush(30.0)
        assert ids_of(lines) == collector.event_ids()
        stats = sink.stats()
        assert (2000, 2000, 0, 0) == (
            stats["enqueued"],
            stats["delivered"],
            stats["dropped"],
            stats["queue_depth"],
        )

    def test_counters_read_as_n_submits_would_leave_them(
        self, make_sink: MakeSink, tmp_path: Path, mode: str
    ) -> None:
        """Collector down, a queue or spool too small: enqueued, dropped by reason and depth of
        a sink fed by submit_many equal those of a sink fed line by line."""
        with Collector(start_down=True) as collector:
            bounds = {"queue_max_events": 40} if mode == "memory" else {"spool_max_bytes": 20_000}

            def make() -> HttpSink:
                spool = tmp_path / f"spool-{next(_names)}" if mode == "spool" else None
                # The worker takes nothing meanwhile: the bounds alone decide.
                return make_sink(
                    collector.url,
                    spool_dir=spool,
                    overflow="drop_newest",
                    batch_max_events=1000,
                    batch_timeout=60.0,
                    **bounds,
                )

            many, single = make(), make()
            lines = [event_line(padding="x" * 250) for _ in range(90)]
            accepted = sum(many.submit_many(lines[i : i + 9]) for i in range(0, 90, 9))
            assert accepted == sum(single.submit(line) for line in lines)
            assert 0 < accepted < 90
            keys = ("enqueued", "dropped", "dropped_by_reason", "queue_depth", "spooled")
            assert [single.stats()[key] for key in keys] == [many.stats()[key] for key in keys]

    def test_with_a_spool_nothing_is_lost_while_the_collector_is_down(
        self, make_sink: MakeSink, tmp_path: Path
    ) -> None:
        """Down: every batch waits in the spool; up: every line arrives."""
        with Collector(start_down=True) as collector:
            sink = make_sink(collector.url, spool_dir=tmp_path / "spool", batch_max_events=100)
            lines = submit_batches(sink, 1500)
            assert not sink.flush(0.2)
            assert 1500 == sink.stats()["queue_depth"]
            collector.up()
            assert sink.flush(30.0)
            assert sorted(ids_of(lines)) == sorted(set(collector.event_ids()))
            assert (0, 1500) == (sink.stats()["spool_bytes"], sink.stats()["delivered"])

"""`Spool.append_many`: a request's lines in one `os.write`, and a spool on disk and in its
books exactly as N `append` calls leave it: the same segments, rolls, size-cap evictions and
refusals; a short write keeps only whole records, so the file always ends at a record
boundary that a reader and a crash replay accept."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.delivery.spool import Spool
from bridge.delivery.spool import writer as spool_module
from bridge.delivery.spool.header import SEGMENT_HEADER
from bridge.delivery.spool.records import parse
from bridge.stats import SinkStats
from tests.delivery.test_spool import RECORD, Clock, drain, ids, line, segment_bytes

MakeSpool = Callable[..., Spool]


@pytest.fixture
def make_spool(tmp_path: Path) -> Iterator[MakeSpool]:
    """Build spools, each in `tmp_path / name`; every one is closed at teardown."""
    made: list[Spool] = []

    def make(name: str = "spool", **kwargs: Any) -> Spool:
        options: dict[str, Any] = {
            "max_bytes": 1 << 30,
            "fsync": "never",
            "event_ttl": 3600.0,
            "stats": SinkStats(),
            "rescan_interval": 0.0,
            "clock": Clock(),
        }
        options.update(kwargs)
        spool = Spool(tmp_path / name, **options)
        made.append(spool)
        return spool

    yield make
    for spool in made:
        spool.close()


def files(spool_dir: Path) -> list[bytes]:
    """The segment files' contents, oldest first."""
    return [path.read_bytes() for path in sorted(spool_dir.glob("*.seg"))]


def records_in(data: bytes) -> list[bytes]:
    """The lines of a segment file, checked as a crash replay reads it (final: no torn end)."""
    parsed = parse(data, SEGMENT_HEADER, final=True)
    assert (0, len(data)) == (parsed.corrupt, parsed.end)
    return parsed.lines


def twins(make_spool: MakeSpool, **kwargs: Any) -> tuple[Spool, Spool]:
    """Two spools alike, with one fixed clock: append_many into the first, N appends into the
    second, and their files must be byte-identical (the timestamps included)."""
    clock = Clock()
    return (
        make_spool("many", clock=clock, stats=SinkStats(), **kwargs),
        make_spool("one-by-one", clock=clock, stats=SinkStats(), **kwargs),
    )


class CountingWrites:
    """Wraps `os.write` in the spool writer: counts the calls, optionally writes less."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, keep: Callable[[int], int] | None = None):
        self.real = os.write
        self.calls: list[int] = []
        self.keep = keep
        monkeypatch.setattr(spool_module.os, "write", self)

    def __call__(self, fd: int, data: Any) -> int:
        self.calls.append(len(data))
        if self.keep is not None:
            return self.real(fd, bytes(data)[: self.keep(len(data))])
        return self.real(fd, data)


class TestAppendMany:
    def test_one_write_per_batch(
        self, make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Nine lines that fit the current segment: one os.write, all of it."""
        spool = make_spool()
        assert spool.append(line(0))  # the segment (and its header write) exists
        writes = CountingWrites(monkeypatch)
        assert (9, 900) == spool.append_many([line(i) for i in range(1, 10)])
        assert [9 * RECORD] == writes.calls
        assert [f"e{i}" for i in range(10)] == ids(drain(spool))

    def test_the_files_are_byte_identical_to_n_appends(
        self, make_spool: MakeSpool, tmp_path: Path
    ) -> None:
        """Same lines, same clock: the same segment file, byte for byte, and the same books."""
        many, single = twins(make_spool)
        lines = [line(i, size=100 + 37 * i) for i in range(9)]
        assert (9, sum(map(len, lines))) == many.append_many(lines)
        assert all(single.append(item) for item in lines)
        assert files(tmp_path / "one-by-one") == files(tmp_path / "many")
        assert lines == records_in(files(tmp_path / "many")[0])
        assert (single.appended(), single.pending_events(), single.pending_bytes()) == (
            many.appended(),
            many.pending_events(),
            many.pending_bytes(),
        )

    def test_a_batch_rolls_across_segments_at_record_boundaries(
        self, make_spool: MakeSpool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Past the segment size the batch is split where N appends would roll: the same
        segments, one write per segment (and one per new segment's header)."""
        many, single = twins(make_spool, segment_bytes=segment_bytes(3))
        for spool in (many, single):
            assert all(spool.append(line(i)) for i in range(2))
        lines = [line(i) for i in range(2, 9)]
        writes = CountingWrites(monkeypatch)
        assert (7, 700) == many.append_many(lines)
        header = SEGMENT_HEADER
        assert [RECORD, header, 3 * RECORD, header, 3 * RECORD] == writes.calls
        monkeypatch.undo()
        assert all(single.append(item) for item in lines)
        assert files(tmp_path / "one-by-one") == files(tmp_path / "many")
        assert [3, 3, 3] == [len(records_in(data)) for data in files(tmp_path / "many")]
        assert [f"e{i}" for i in range(9)] == ids(drain(many))

    def test_the_size_cap_mid_batch_evicts_and_refuses_as_n_appends(
        self, make_spool: MakeSpool, tmp_path: Path
    ) -> None:
        """At max_bytes mid-batch: the same oldest segments evicted and counted spool_full, a
        line larger than the cap refused, the same lines kept, the same files."""
        many, single = twins(make_spool, max_bytes=10 * RECORD, segment_bytes=segment_bytes(3))
        for spool in (many, single):
            assert all(spool.append(line(i)) for i in range(8))
        lines = [line(8), line(9), line(10, size=20 * RECORD), *(line(i) for i in range(11, 15))]
        assert (6, 600) == many.append_many(lines)
        assert [True, True, False, True, True, True, True] == [single.append(x) for x in lines]
        assert files(tmp_path / "one-by-one") == files(tmp_path / "many")
        assert many.pending_bytes() <= 10 * RECORD
        assert single._stats.dropped_by_reason == many._stats.dropped_by_reason
        assert many._stats.dropped_by_reason["spool_full"] > 1
        assert ids(drain(single)) == ids(drain(many))

    def test_the_tail_serves_the_batch_without_reading_the_disk(
        self, make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A reader keeping up gets every line of a batch from memory (no pread)."""
        spool = make_spool()
        assert spool.append(line(0))
        assert ["e0"] == ids(drain(spool))  # caught up: new lines are served from memory
        preads: list[int] = []
        real_pread = os.pread

        def pread(fd: int, size: int, offset: int) -> bytes:
            preads.append(size)
            return real_pread(fd, size, offset)

        monkeypatch.setattr(os, "pread", pread)
        assert (5, 500) == spool.append_many([line(i) for i in range(1, 6)])
        assert [f"e{i}" for i in range(1, 6)] == ids(drain(spool))
        assert [] == preads

    def test_a_batch_older_than_the_ttl_expires_whole(self, make_spool: MakeSpool) -> None:
        """Its append time is kept (tail_floor too): past event_ttl every line is expired."""
        clock = Clock()
        stats = SinkStats()
        spool = make_spool(clock=clock, stats=stats, event_ttl=60.0)
        assert spool.append(line(0))
        assert ["e0"] == ids(drain(spool))
        assert (3, 300) == spool.append_many([line(i) for i in range(1, 4)])
        clock.now += 61
        assert (4, 400) == spool.append_many([line(i) for i in range(4, 8)])
        assert [f"e{i}" for i in range(4, 8)] == ids(drain(spool))
        assert {"ttl_expired": 3} == stats.dropped_by_reason

    def test_an_empty_batch_writes_nothing(
        self, make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """append_many([]) accepts nothing and never calls os.write."""
        spool = make_spool()
        writes = CountingWrites(monkeypatch)
        assert (0, 0) == spool.append_many([])
        assert [] == writes.calls

    def test_after_close_every_line_is_refused_and_counted(self, make_spool: MakeSpool) -> None:
        """A closed spool refuses each line, counted spool_write_failed, as append does."""
        stats = SinkStats()
        spool = make_spool(stats=stats)
        spool.close()
        assert (0, 0) == spool.append_many([line(i) for i in range(3)])
        assert {"spool_write_failed": 3} == stats.dropped_by_reason


class TestAppendManyFailures:
    def test_a_short_write_keeps_exactly_the_whole_records(
        self, make_spool: MakeSpool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Half a batch written: the whole records in it are accepted, the file is cut after
        them, the rest is refused and counted; a new spool replays exactly the accepted."""
        stats = SinkStats()
        spool = make_spool(stats=stats)
        assert spool.append(line(0))
        CountingWrites(monkeypatch, keep=lambda size: size // 2)
        assert (2, 200) == spool.append_many([line(i) for i in range(1, 6)])  # 2.5 written
        monkeypatch.undo()
        assert {"spool_write_failed": 3} == stats.dropped_by_reason
        [data] = files(tmp_path / "spool")
        assert [line(0), line(1), line(2)] == records_in(data)
        assert spool.append(line(6))
        spool.close()
        assert ["e0", "e1", "e2", "e6"] == ids(drain(make_spool()))

    def test_a_short_write_that_cannot_be_cut_seals_the_segment(
        self, make_spool: MakeSpool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No ftruncate either: the whole records stay accepted, nothing is written after the
        torn one, and a crash replay counts that one torn record and delivers the rest."""
        stats = SinkStats()
        spool = make_spool(stats=stats)
        CountingWrites(monkeypatch, keep=lambda size: size - 10 if size > RECORD else size)

        def no_truncate(fd: int, length: int) -> None:
            raise OSError(errno.EIO, "ftruncate failed")

        monkeypatch.setattr(spool_module.os, "ftruncate", no_truncate)
        assert (2, 200) == spool.append_many([line(i) for i in range(3)])
        monkeypatch.undo()
        assert spool.append(line(3))  # into a new segment
        assert 2 == len(files(tmp_path / "spool"))
        spool.close()
        replay_stats = SinkStats()
        assert ["e0", "e1", "e3"] == ids(drain(make_spool(stats=replay_stats)))
        assert {"spool_corrupt": 1} == replay_stats.dropped_by_reason
        assert {"spool_write_failed": 1} == stats.dropped_by_reason

    def test_a_failed_write_refuses_the_batch(
        self, make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """os.write raises: nothing accepted, each line counted spool_write_failed."""
        stats = SinkStats()
        spool = make_spool(stats=stats)
        assert spool.append(line(0))

        def failing(fd: int, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(spool_module.os, "write", failing)
        assert (0, 0) == spool.append_many([line(i) for i in range(1, 4)])
        monkeypatch.undo()
        assert {"spool_write_failed": 3} == stats.dropped_by_reason
        assert ["e0"] == ids(drain(spool))


class TestAppendManySync:
    def test_one_fsync_per_batch_sent_not_per_line(
        self, make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """spool_fsync "batch": append_many never fsyncs on the calling thread (as append);
        the sync before the send fsyncs the segment once, whatever the batch's size."""
        calls: list[int] = []
        monkeypatch.setattr(os, "fsync", calls.append)
        spool = make_spool(fsync="batch")
        assert (9, 900) == spool.append_many([line(i) for i in range(9)])
        assert [] == calls
        spool.sync()
        assert 2 == len(calls)  # the segment, and the directory that got it
        calls.clear()
        assert (9, 900) == spool.append_many([line(i) for i in range(9, 18)])
        spool.sync()
        assert 1 == len(calls)

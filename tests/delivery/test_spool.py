"""The disk spool: real files in tmp_path, real processes for adoption and crash recovery."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.delivery.spool import Spool
from bridge.delivery.spool import writer as spool_module
from bridge.delivery.spool.header import SEGMENT_HEADER, ack_slot, read_acked
from bridge.delivery.spool.records import HEADER_SIZE, RECORD_OVERHEAD, encode_record, parse
from bridge.stats import SinkStats

CHILD = Path(__file__).with_name("spool_crash_child.py")
DEADLINE = 60.0
RECORD = RECORD_OVERHEAD + 100  # the size on disk of a 100-byte line

MakeSpool = Callable[..., Spool]


def line(i: int, size: int = 100) -> bytes:
    """An event line of exactly `size` bytes with a unique event_id."""
    head = f'{{"event_id": "e{i}", "pad": "'
    return (head + "x" * (size - len(head) - 3) + '"}\n').encode()


def ids(lines: list[bytes]) -> list[str]:
    return [json.loads(item)["event_id"] for item in lines]


def drain(spool: Spool) -> list[bytes]:
    """Read and ack until the spool hands out nothing more; the lines, in order."""
    out: list[bytes] = []
    while (got := spool.read(100, 1 << 20)).lines:
        out += got.lines
        spool.ack(got.records)
    return out


def segment_bytes(records: int) -> int:
    """A segment size that holds exactly `records` 100-byte lines."""
    return SEGMENT_HEADER + records * RECORD


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


class Clock:
    """An injected clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def make_spool(spool_dir: Path) -> Iterator[MakeSpool]:
    """Build spools on `spool_dir`; every one is closed at teardown."""
    made: list[Spool] = []

    def make(**kwargs: Any) -> Spool:
        options: dict[str, Any] = {
            "max_bytes": 1 << 30,
            "fsync": "never",
            "event_ttl": 3600.0,
            "stats": SinkStats(),
            "rescan_interval": 0.0,
        }
        options.update(kwargs)
        spool = Spool(options.pop("directory", spool_dir), **options)
        made.append(spool)
        return spool

    yield make
    for spool in made:
        spool.close()


def run_child(
    directory: Path, count: int, mode: str, segment_bytes: int = 0
) -> subprocess.Popen[bytes]:
    args = [sys.executable, str(CHILD), str(directory), str(count), mode]
    if segment_bytes:
        args.append(str(segment_bytes))
    return subprocess.Popen(args, stdout=subprocess.PIPE)


def dead_owner(directory: Path, count: int, segment_bytes: int = 0) -> None:
    """Leave `count` events behind in a process that exits without closing its spool."""
    with run_child(directory, count, "exit", segment_bytes) as child:
        out, _ = child.communicate(timeout=DEADLINE)
    assert 0 == child.returncode
    assert count == len(out.splitlines())


class TestRecordFrame:
    def test_parse_round_trip(self) -> None:
        """Framed records parse back to their lines, with handles at origin + offset."""
        frames = [encode_record(line(i), 1000 + i) for i in range(3)]
        parsed = parse(b"".join(frames), final=True, origin=4096)
        assert [line(i) for i in range(3)] == parsed.lines
        assert [4096 + i * RECORD for i in range(3)] == parsed.handles
        assert (0, 3 * RECORD) == (parsed.corrupt, parsed.end)

    def test_short_tail_is_pending_while_written(self) -> None:
        """A short last record is incomplete (not corrupt) unless the segment is final."""
        data = encode_record(line(0), 1) + encode_record(line(1), 2)[:-5]
        pending = parse(data, final=False)
        torn = parse(data, final=True)
        assert ([line(0)], 0, RECORD) == (pending.lines, pending.corrupt, pending.end)
        assert RECORD == pending.need
        assert ([line(0)], 1, len(data)) == (torn.lines, torn.corrupt, torn.end)

    def test_cutoff_skips_old_records(self) -> None:
        """Records appended before the cutoff are counted as expired, not returned."""
        data = b"".join(encode_record(line(i), t) for i, t in enumerate([5, 1, 9]))
        parsed = parse(data, final=True, cutoff_us=5)
        assert ([line(0), line(2)], 1, RECORD) == (
            parsed.lines,
            parsed.expired,
            parsed.expired_bytes,
        )

    def test_limits_stop_before_a_record(self) -> None:
        """parse stops at max_events or max_bytes and says it is full."""
        data = b"".join(encode_record(line(i), 1) for i in range(4))
        by_count = parse(data, final=True, max_events=2)
        by_bytes = parse(data, final=True, max_bytes=250)
        assert ([line(0), line(1)], 2 * RECORD, True) == (
            by_count.lines,
            by_count.end,
            by_count.full,
        )
        assert ([line(0), line(1)], True) == (by_bytes.lines, by_bytes.full)


class TestAckSlots:
    def test_higher_sequence_wins(self, tmp_path: Path) -> None:
        """The valid slot with the higher sequence holds the acknowledged prefix."""
        path = tmp_path / "seg"
        path.write_bytes(segment_header_with(ack_slot(500, 1), ack_slot(900, 2)) + bytes(2000))
        assert (900, 2) == read_at(path)

    def test_torn_slot_falls_back_to_the_older_one(self, tmp_path: Path) -> None:
        """A slot whose CRC fails is ignored: the other (smaller) prefix wins, never skipping."""
        at, slot = ack_slot(900, 2)
        torn = (at, slot[:6] + bytes(len(slot) - 6))
        path = tmp_path / "seg"
        path.write_bytes(segment_header_with(ack_slot(500, 1), torn) + bytes(2000))
        assert (500, 1) == read_at(path)

    def test_no_valid_slot_starts_at_the_first_record(self, tmp_path: Path) -> None:
        """A fresh header (or another format) is read from its first record."""
        path = tmp_path / "seg"
        path.write_bytes(b"FSB1" + bytes(100))
        assert (SEGMENT_HEADER, 0) == read_at(path)


def segment_header_with(*slots: tuple[int, bytes]) -> bytes:
    header = bytearray(b"FSBs" + (2).to_bytes(4, "little") + bytes(SEGMENT_HEADER - 8))
    for at, slot in slots:
        header[at : at + len(slot)] = slot
    return bytes(header)


def read_at(path: Path) -> tuple[int, int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_acked(fd, path.stat().st_size)
    finally:
        os.close(fd)


class TestSpoolRoundTrip:
    def test_append_read_ack_deletes(self, make_spool: MakeSpool, spool_dir: Path) -> None:
        """Appended lines come back in order, byte for byte; acked segments are deleted."""
        stats = SinkStats()
        spool = make_spool(stats=stats, segment_bytes=segment_bytes(3))
        lines = [line(i) for i in range(7)]
        assert all(spool.append(item) for item in lines)
        assert 7 == spool.pending_events()
        assert 7 * RECORD == spool.pending_bytes()
        got = spool.read(100, 1 << 20)
        assert lines == got.lines
        assert 3 == len(segment_files(spool_dir))
        spool.ack(got.records)
        assert 0 == spool.pending_bytes()
        assert 0 == spool.pending_events()
        assert 1 == len(segment_files(spool_dir))  # the current segment stays until it rolls
        assert 7 == stats.spooled
        spool.close()
        assert [] == os.listdir(spool_dir)

    def test_read_respects_limits(self, make_spool: MakeSpool) -> None:
        """read() stops at max_events and max_bytes, but hands out one oversized line alone."""
        spool = make_spool()
        for i in range(5):
            spool.append(line(i))
        assert ["e0", "e1"] == ids(spool.read(2, 1 << 20).lines)
        assert ["e2", "e3"] == ids(spool.read(10, 250).lines)
        assert ["e4"] == ids(spool.read(10, 1).lines)
        assert [] == spool.read(10, 1 << 20).lines

    def test_reads_from_disk_when_far_behind(
        self, make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Lines past the in-memory tail are read back from disk, in order, none twice."""
        monkeypatch.setattr(spool_module, "TAIL_BYTES", 3 * RECORD)
        spool = make_spool()
        for i in range(10):
            spool.append(line(i))
        first = spool.read(4, 1 << 20)
        for i in range(10, 12):
            spool.append(line(i))
        assert [f"e{i}" for i in range(12)] == ids(first.lines + drain(spool))

    def test_a_reader_keeping_up_never_reads_the_disk(
        self, make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Lines this spool wrote come from memory, across segment rolls too."""
        spool = make_spool(segment_bytes=segment_bytes(5))
        preads: list[int] = []
        real_pread = os.pread

        def pread(fd: int, size: int, offset: int) -> bytes:
            preads.append(size)
            return real_pread(fd, size, offset)

        monkeypatch.setattr(os, "pread", pread)
        seen: list[bytes] = []
        for start in range(0, 24, 3):
            for i in range(start, start + 3):
                spool.append(line(i))
            got = spool.read(100, 1 << 20)
            spool.ack(got.records)
            seen += got.lines
        assert ([f"e{i}" for i in range(24)], []) == (ids(seen), preads)

    def test_read_reports_what_the_feed_cannot_count(self, make_spool: MakeSpool) -> None:
        """A read says how many lines were fresh appends, whether it stopped on its limits,
        and whether released records still wait."""
        spool = make_spool()
        for i in range(3):
            spool.append(line(i))
        first = spool.read(2, 1 << 20)
        assert (2, 200, False, False) == (
            first.fresh,
            first.fresh_bytes,
            first.drained,
            first.hidden,
        )
        spool.release(first.records)
        again = spool.read(1, 1 << 20)
        assert (["e0"], 0, False, True) == (
            ids(again.lines),
            again.fresh,
            again.drained,
            again.hidden,
        )
        rest = spool.read(10, 1 << 20)
        assert (["e1", "e2"], 1, True, False) == (
            ids(rest.lines),
            rest.fresh,
            rest.drained,
            rest.hidden,
        )

    def test_out_of_order_ack(self, make_spool: MakeSpool, spool_dir: Path) -> None:
        """A sealed segment is deleted only once its last record is acked, in any order."""
        spool = make_spool(segment_bytes=segment_bytes(3))
        for i in range(6):
            spool.append(line(i))
        first, second = segment_files(spool_dir)
        records = spool.read(100, 1 << 20).records
        spool.ack([records[4], records[2], records[0]])
        assert [first, second] == segment_files(spool_dir)
        spool.ack([records[1], records[5]])
        assert [second] == segment_files(spool_dir)
        assert RECORD == spool.pending_bytes()
        spool.ack([records[3], records[3]])
        assert 0 == spool.pending_bytes()

    def test_release_then_reread(self, make_spool: MakeSpool) -> None:
        """Released records are handed out again, before newer ones; acked ones never again."""
        spool = make_spool()
        for i in range(4):
            spool.append(line(i))
        got = spool.read(3, 1 << 20)
        spool.ack(got.records[:1])
        spool.release(got.records[1:])
        spool.append(line(4))
        again = spool.read(100, 1 << 20)
        assert ["e1", "e2", "e3", "e4"] == ids(again.lines)
        assert got.records[1:] == again.records[:2]


class TestSpoolInFlight:
    def test_partial_acks_then_the_rest(self, make_spool: MakeSpool, spool_dir: Path) -> None:
        """Acks of parts of a read (a split batch) settle exactly those records."""
        spool = make_spool(segment_bytes=segment_bytes(3))
        for i in range(6):
            spool.append(line(i))
        got = spool.read(100, 1 << 20)
        spool.ack(got.records[:2])
        assert (4, 4 * RECORD) == (spool.pending_events(), spool.pending_bytes())
        spool.ack(got.records[2:])
        assert (0, 0) == (spool.pending_events(), spool.pending_bytes())
        assert 1 == len(segment_files(spool_dir))

    def test_a_copy_of_the_handles_acks_as_well(self, make_spool: MakeSpool) -> None:
        """Any list of handles works, not only the list read returned."""
        spool = make_spool()
        for i in range(3):
            spool.append(line(i))
        got = spool.read(100, 1 << 20)
        spool.ack(list(got.records))
        spool.ack(got.records)  # the original afterwards: already done, ignored
        assert (0, 0) == (spool.pending_events(), spool.pending_bytes())

    def test_release_across_segments_rereads_in_order(self, make_spool: MakeSpool) -> None:
        """A read spanning segments, released, comes back whole and in order."""
        spool = make_spool(segment_bytes=segment_bytes(2))
        for i in range(5):
            spool.append(line(i))
        got = spool.read(100, 1 << 20)
        spool.release(got.records)
        again = spool.read(100, 1 << 20)
        assert [f"e{i}" for i in range(5)] == ids(again.lines)
        spool.ack(again.records)
        assert (0, 0) == (spool.pending_events(), spool.pending_bytes())


class TestAcknowledgementsOnDisk:
    def test_next_spool_resumes_after_the_acked_prefix(self, make_spool: MakeSpool) -> None:
        """What was acknowledged before close (or a crash) is not replayed; the rest is."""
        first = make_spool()
        for i in range(3):
            first.append(line(i))
        first.ack(first.read(1, 1 << 20).records)
        first.read(1, 1 << 20)  # handed out, never acked
        first.close()
        assert ["e1", "e2"] == ids(drain(make_spool()))

    def test_out_of_order_acks_save_only_the_contiguous_prefix(self, make_spool: MakeSpool) -> None:
        """Acks after a gap stay in memory: the next spool replays from the gap on."""
        first = make_spool()
        for i in range(5):
            first.append(line(i))
        records = first.read(100, 1 << 20).records
        first.ack([records[0], records[3], records[1]])
        first.close()
        assert ["e2", "e3", "e4"] == ids(drain(make_spool()))

    def test_prefix_is_saved_once_per_ack_call(
        self, make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """One pwrite per ack call that moves the prefix, however many records it settles."""
        spool = make_spool()
        for i in range(50):
            spool.append(line(i))
        got = spool.read(100, 1 << 20)
        writes: list[int] = []
        real_pwrite = os.pwrite

        def pwrite(fd: int, data: bytes, offset: int) -> int:
            writes.append(offset)
            return real_pwrite(fd, data, offset)

        monkeypatch.setattr(os, "pwrite", pwrite)
        spool.ack(got.records[10:])  # the prefix does not move
        spool.ack(got.records[:10])
        assert 1 == len(writes)

    def test_adoption_skips_the_acked_prefix(self, make_spool: MakeSpool, spool_dir: Path) -> None:
        """A sibling adopting a dead owner's segments counts and replays only unacked records."""
        owner = make_spool(segment_bytes=segment_bytes(4))
        for i in range(10):
            owner.append(line(i))
        got = owner.read(6, 1 << 20)
        owner.ack(got.records)
        owner.close()
        adopter = make_spool()
        assert 4 == adopter.pending_events()
        assert 4 * RECORD == adopter.pending_bytes()
        assert ["e6", "e7", "e8", "e9"] == ids(drain(adopter))
        adopter.close()
        assert [] == os.listdir(spool_dir)


class TestSpoolDamage:
    @pytest.mark.parametrize("adopt_first", [False, True], ids=["before", "after-adoption"])
    def test_torn_last_record(
        self, make_spool: MakeSpool, spool_dir: Path, adopt_first: bool
    ) -> None:
        """A short last record is skipped and counted; the records before it are delivered."""
        writer = make_spool()
        for i in range(5):
            writer.append(line(i))
        writer.close()
        stats = SinkStats()
        reader = make_spool(stats=stats) if adopt_first else None
        (segment,) = segment_files(spool_dir)
        os.truncate(segment, segment.stat().st_size - 3)
        reader = reader or make_spool(stats=stats)
        assert ["e0", "e1", "e2", "e3"] == ids(drain(reader))
        assert {"spool_corrupt": 1} == stats.dropped_by_reason
        assert [] == segment_files(spool_dir)
        assert 0 == reader.pending_bytes()

    @pytest.mark.parametrize(
        "where",
        [HEADER_SIZE + 40, 5, HEADER_SIZE - 2, RECORD - 2, 1],
        ids=["payload", "header-length", "header-length-check", "trailer", "magic"],
    )
    def test_flipped_byte(self, make_spool: MakeSpool, spool_dir: Path, where: int) -> None:
        """A damaged record in the middle is skipped and counted; the ones after it still read."""
        writer = make_spool()
        for i in range(5):
            writer.append(line(i))
        writer.close()
        (segment,) = segment_files(spool_dir)
        data = bytearray(segment.read_bytes())
        data[SEGMENT_HEADER + 2 * RECORD + where] ^= 0x5A
        segment.write_bytes(bytes(data))
        stats = SinkStats()
        reader = make_spool(stats=stats)
        assert ["e0", "e1", "e3", "e4"] == ids(drain(reader))
        assert {"spool_corrupt": 1} == stats.dropped_by_reason
        assert [] == segment_files(spool_dir)

    def test_damage_in_a_long_run_is_found(self, make_spool: MakeSpool, spool_dir: Path) -> None:
        """One flipped byte among a thousand records costs exactly that record."""
        writer = make_spool()
        for i in range(1000):
            writer.append(line(i))
        writer.close()
        (segment,) = segment_files(spool_dir)
        data = bytearray(segment.read_bytes())
        data[SEGMENT_HEADER + 777 * RECORD + HEADER_SIZE + 10] ^= 0x01
        segment.write_bytes(bytes(data))
        stats = SinkStats()
        got = ids(drain(make_spool(stats=stats)))
        assert [f"e{i}" for i in range(1000) if i != 777] == got
        assert {"spool_corrupt": 1} == stats.dropped_by_reason

    def test_release_after_the_file_was_cut_under_handed_out_records(
        self, make_spool: MakeSpool, spool_dir: Path
    ) -> None:
        """Records handed out and then truncated off the disk can still be released (a send
        failed): they come back from memory, nothing raises and nothing is left pending."""
        stats = SinkStats()
        spool = make_spool(stats=stats)
        for i in range(3):
            spool.append(line(i))
        got = spool.read(100, 1 << 20)
        (segment,) = segment_files(spool_dir)
        os.truncate(segment, SEGMENT_HEADER)
        spool.release(got.records)
        again = spool.read(100, 1 << 20)
        assert ["e0", "e1", "e2"] == ids(again.lines)
        spool.ack(again.records)
        assert (0, 0) == (spool.pending_events(), spool.pending_bytes())
        assert {} == stats.dropped_by_reason

    def test_failed_write_is_counted(
        self, make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A failing write returns False and counts spool_write_failed; nothing torn remains."""
        stats = SinkStats()
        spool = make_spool(stats=stats)
        assert spool.append(line(0))
        real_write = os.write

        def short_write(fd: int, data: bytes) -> int:
            return real_write(fd, data[:10])

        monkeypatch.setattr(os, "write", short_write)
        assert not spool.append(line(1))
        monkeypatch.setattr(os, "write", real_write)
        assert spool.append(line(2))
        assert ["e0", "e2"] == ids(drain(spool))
        assert {"spool_write_failed": 1} == stats.dropped_by_reason
        spool.close()
        assert [] == ids(drain(make_spool()))  # on disk too: nothing torn, all acked


class TestSpoolLimits:
    def test_size_cap_drops_oldest_and_counts(self, make_spool: MakeSpool) -> None:
        """Past max_bytes the oldest segments go; every lost event is counted."""
        stats = SinkStats()
        spool = make_spool(stats=stats, max_bytes=10 * RECORD, segment_bytes=segment_bytes(3))
        for i in range(20):
            assert spool.append(line(i))
            assert spool.pending_bytes() <= 10 * RECORD
        kept = ids(drain(spool))
        assert [f"e{i}" for i in range(20 - len(kept), 20)] == kept
        assert 7 <= len(kept)
        assert {"spool_full": 20 - len(kept)} == stats.dropped_by_reason

    def test_size_cap_spares_handed_out(self, make_spool: MakeSpool) -> None:
        """Segments handed out to the engine are evicted last; a release from one is counted."""
        stats = SinkStats()
        spool = make_spool(stats=stats, max_bytes=6 * RECORD, segment_bytes=segment_bytes(2))
        for i in range(4):
            spool.append(line(i))
        in_flight = spool.read(2, 1 << 20)  # e0, e1: the whole first segment
        for i in range(4, 7):
            spool.append(line(i))
        assert {"spool_full": 2} == stats.dropped_by_reason  # e2, e3 went, e0, e1 stayed
        spool.ack(in_flight.records)
        assert ["e4", "e5", "e6"] == ids(drain(spool))

    def test_release_from_evicted_segment_is_counted(self, make_spool: MakeSpool) -> None:
        """When only handed-out segments can go, their records count as lost once released."""
        stats = SinkStats()
        spool = make_spool(stats=stats, max_bytes=4 * RECORD, segment_bytes=segment_bytes(2))
        for i in range(4):
            spool.append(line(i))
        in_flight = spool.read(100, 1 << 20).records
        spool.append(line(4))  # evicts the first segment, e0 and e1 still in flight
        assert {} == stats.dropped_by_reason
        spool.release(in_flight[:2])
        spool.ack(in_flight[2:])
        assert {"spool_full": 2} == stats.dropped_by_reason
        assert ["e4"] == ids(drain(spool))
        assert 0 == spool.pending_bytes()

    def test_line_larger_than_cap_is_refused(self, make_spool: MakeSpool) -> None:
        """A single line larger than max_bytes is refused and counted; older ones stay."""
        stats = SinkStats()
        spool = make_spool(stats=stats, max_bytes=2 * RECORD)
        assert spool.append(line(0))
        assert not spool.append(line(1, size=1000))
        assert {"spool_full": 1} == stats.dropped_by_reason
        assert ["e0"] == ids(drain(spool))

    def test_append_after_close_is_refused(self, make_spool: MakeSpool) -> None:
        """After close() append returns False and counts the line as spool_write_failed."""
        stats = SinkStats()
        spool = make_spool(stats=stats)
        spool.close()
        assert not spool.append(line(0))
        assert {"spool_write_failed": 1} == stats.dropped_by_reason

    def test_ttl_expired_with_injected_clock(self, make_spool: MakeSpool) -> None:
        """Records older than event_ttl are skipped and counted, also when released."""
        clock = Clock()
        stats = SinkStats()
        spool = make_spool(stats=stats, clock=clock, event_ttl=60.0)
        spool.append(line(0))
        spool.append(line(1))
        clock.now += 50
        spool.append(line(2))
        spool.release(spool.read(1, 1 << 20).records)
        clock.now += 20
        assert ["e2"] == ids(spool.read(100, 1 << 20).lines)
        assert {"ttl_expired": 2} == stats.dropped_by_reason
        assert RECORD == spool.pending_bytes()


class TestSpoolAdoption:
    def test_dead_process_segments_are_adopted(
        self, make_spool: MakeSpool, spool_dir: Path
    ) -> None:
        """Segments of a process that died without close() are read by a new spool."""
        dead_owner(spool_dir, 300, segment_bytes=8192)
        assert 3 < len(segment_files(spool_dir))
        spool = make_spool()
        assert 300 == spool.pending_events()
        assert [f"e{i}" for i in range(300)] == ids(drain(spool))
        spool.close()
        assert [] == os.listdir(spool_dir)

    def test_adopted_over_cap_drops_oldest_and_counts(
        self, make_spool: MakeSpool, spool_dir: Path
    ) -> None:
        """Adopting more than max_bytes evicts the oldest adopted segments, counted exactly."""
        dead_owner(spool_dir, 300, segment_bytes=8192)
        stats = SinkStats()
        spool = make_spool(stats=stats, max_bytes=20000)
        assert spool.pending_bytes() <= 20000
        kept = ids(drain(spool))
        assert [f"e{i}" for i in range(300 - len(kept), 300)] == kept
        assert {"spool_full": 300 - len(kept)} == stats.dropped_by_reason

    def test_live_sibling_is_not_adopted(self, make_spool: MakeSpool) -> None:
        """A live spool's segments are never read by another spool on the same directory."""
        alive = make_spool()
        other = make_spool()
        alive.append(line(0))
        assert [] == other.read(100, 1 << 20).lines
        assert ["e0"] == ids(alive.read(100, 1 << 20).lines)

    def test_closed_sibling_is_adopted_later(self, make_spool: MakeSpool) -> None:
        """A running spool picks up what a sibling left when it closed, on a later read."""
        survivor = make_spool()
        leaver = make_spool()
        leaver.append(line(0))
        leaver.close()
        assert ["e0"] == ids(survivor.read(100, 1 << 20).lines)

    def test_two_live_spools_never_share_a_record(
        self, make_spool: MakeSpool, spool_dir: Path
    ) -> None:
        """Two spools adopting and reading at once hand out every orphaned record exactly once."""
        dead_owner(spool_dir, 2000, segment_bytes=16384)
        barrier = threading.Barrier(2)
        results: list[list[bytes]] = [[], []]
        errors: list[BaseException] = []

        def worker(slot: int) -> None:
            try:
                barrier.wait(timeout=DEADLINE)
                spool = make_spool()
                while (got := spool.read(7, 1 << 20)).lines:
                    results[slot] += got.lines
                    spool.ack(got.records)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(slot,)) for slot in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
        assert [] == errors
        seen = ids(results[0]) + ids(results[1])
        assert len(seen) == len(set(seen))
        assert {f"e{i}" for i in range(2000)} == set(seen)


class TestSpoolCrash:
    def test_sigkill_mid_stream_loses_nothing(self, make_spool: MakeSpool, spool_dir: Path) -> None:
        """Every event the killed writer reported as appended is replayed; none is garbage."""
        reported: list[int] = []
        with run_child(spool_dir, 0, "loop", segment_bytes=64 * 1024) as child:
            assert child.stdout is not None
            try:
                deadline = time.monotonic() + DEADLINE
                buffered = b""
                while len(reported) < 3000 and time.monotonic() < deadline:
                    chunk = os.read(child.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    buffered += chunk
                    *done, buffered = buffered.split(b"\n")
                    reported += [int(x) for x in done]
                child.send_signal(signal.SIGKILL)
            finally:
                child.kill()
                rest, _ = child.communicate(timeout=DEADLINE)
        reported += [int(x) for x in (buffered + rest).split(b"\n") if x]
        assert -signal.SIGKILL == child.returncode
        assert 3000 <= len(reported)
        stats = SinkStats()
        lines = drain(make_spool(stats=stats))
        got = ids(lines)
        assert len(got) == len(set(got))
        assert {f"e{i}" for i in reported} <= set(got)
        assert len(got) - len(reported) <= 1  # at most the one being reported at the kill
        assert all(item.startswith(b'{"event_id": "e') and item.endswith(b"}\n") for item in lines)
        assert stats.dropped_by_reason.get("spool_corrupt", 0) <= 1


class TestSpoolFork:
    @pytest.mark.parametrize("explicit", [True, False], ids=["after_fork_in_child", "pid-check"])
    def test_forked_child_gets_its_own_segment(
        self, make_spool: MakeSpool, spool_dir: Path, explicit: bool
    ) -> None:
        """A forked child writes its own segment; the parent's stays untouched and the child's
        records are adopted after it exits."""
        parent = make_spool()
        parent.append(line(0))
        (own,) = segment_files(spool_dir)
        before = own.read_bytes()
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            code = 1
            try:
                if explicit:
                    parent.after_fork_in_child()
                code = 0 if all(parent.append(line(i)) for i in range(100, 103)) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert 0 == os.waitstatus_to_exitcode(status)
        assert before == own.read_bytes()
        sibling = make_spool()  # adopts the dead child's segment, not the live parent's
        assert ["e100", "e101", "e102"] == ids(drain(sibling))
        parent.append(line(1))
        assert ["e0", "e1"] == ids(drain(parent))


class TestSpoolPermissions:
    def test_directory_and_files_are_private(self, make_spool: MakeSpool, tmp_path: Path) -> None:
        """A new spool directory is 0700; segment and lock files are 0600."""
        directory = tmp_path / "nested" / "spool"
        spool = make_spool(directory=directory)
        spool.append(line(0))
        assert 0o700 == stat.S_IMODE(directory.stat().st_mode)
        names = sorted(path.suffix for path in directory.iterdir())
        assert [".lock", ".seg"] == names
        assert [0o600, 0o600] == [stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()]


class TestSpoolSync:
    @pytest.mark.parametrize(
        ("policy", "synced"),
        [("never", 0), ("batch", 0), (3600.0, 0), (0.0, 2)],
    )
    def test_maybe_sync_follows_policy(
        self, make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch, policy: Any, synced: int
    ) -> None:
        """maybe_sync() fsyncs (segment and directory) only when an interval is due."""
        calls: list[int] = []
        monkeypatch.setattr(os, "fsync", calls.append)
        spool = make_spool(fsync=policy)
        spool.append(line(0))
        assert [] == calls
        spool.maybe_sync()
        assert synced == len(calls)

    def test_sync_fsyncs_rolled_segments_too(
        self, make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch, spool_dir: Path
    ) -> None:
        """sync() covers the current segment, the segments rolled since, and the directory."""
        synced: list[Path] = []

        def fsync(fd: int) -> None:
            synced.append(Path(f"/proc/self/fd/{fd}").resolve())

        monkeypatch.setattr(os, "fsync", fsync)
        spool = make_spool(fsync="batch", segment_bytes=segment_bytes(1))
        spool.append(line(0))
        spool.append(line(1))
        spool.sync()
        assert sorted([*segment_files(spool_dir), spool_dir]) == sorted(synced)
        synced.clear()
        spool.sync()
        assert [] == synced


class TestSpoolConcurrency:
    def test_threads_append_while_engine_reads(
        self, make_spool: MakeSpool, spool_dir: Path
    ) -> None:
        """Appends from four threads while the engine reads, acks and releases: every event is
        acked exactly once, and the books balance at the end."""
        spool = make_spool(segment_bytes=4096)
        writers, per_writer = 4, 1500
        failed: list[int] = []

        def write(writer: int) -> None:
            for i in range(writer * per_writer, (writer + 1) * per_writer):
                if not spool.append(line(i)):
                    failed.append(i)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for thread in threads:
            thread.start()
        rng = random.Random(7)
        acked: list[str] = []
        deadline = time.monotonic() + DEADLINE
        while len(acked) < writers * per_writer and time.monotonic() < deadline:
            got = spool.read(rng.randint(1, 50), 1 << 20)
            batch = list(zip(got.lines, got.records, strict=True))
            rng.shuffle(batch)
            keep = rng.randint(0, len(batch))
            spool.release([record for _, record in batch[keep:]])
            spool.ack([record for _, record in batch[:keep]])
            acked += ids([item for item, _ in batch[:keep]])
        for thread in threads:
            thread.join(DEADLINE)
        assert [] == failed
        assert sorted(f"e{i}" for i in range(writers * per_writer)) == sorted(acked)
        assert (0, 0) == (spool.pending_bytes(), spool.pending_events())
        assert len(segment_files(spool_dir)) <= 1
        assert [] == spool.read(100, 1 << 20).lines

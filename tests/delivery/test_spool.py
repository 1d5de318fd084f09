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

from bridge.delivery.segments import HEADER_SIZE, encode_record, parse
from bridge.delivery.spool import Spool, SpoolRecord
from bridge.sinks.base import SinkStats

CHILD = Path(__file__).with_name("spool_crash_child.py")
DEADLINE = 60.0

MakeSpool = Callable[..., Spool]


def line(i: int, size: int = 100) -> bytes:
    """An event line of exactly `size` bytes with a unique event_id."""
    head = f'{{"event_id": "e{i}", "pad": "'
    return (head + "x" * (size - len(head) - 3) + '"}\n').encode()


def ids(records: list[SpoolRecord]) -> list[str]:
    return [json.loads(r.line)["event_id"] for r in records]


def drain(spool: Spool, *, ack: bool = True) -> list[SpoolRecord]:
    """Read (and ack) until the spool hands out nothing more."""
    out: list[SpoolRecord] = []
    while batch := spool.read(100, 1 << 20):
        out += batch
        if ack:
            spool.ack(batch)
    return out


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
        """Framed records parse back to their lines, offsets and append times."""
        frames = [encode_record(line(i), 1000 + i) for i in range(3)]
        parsed = parse(b"".join(frames), 4096, final=True)
        assert [
            (4096 + i * len(frames[0]), len(frames[0]), 1000 + i, line(i)) for i in range(3)
        ] == (parsed.records)
        assert (0, 4096 + 3 * len(frames[0])) == (parsed.corrupt, parsed.end)

    def test_short_tail_is_pending_while_written(self) -> None:
        """A short last record is incomplete (not corrupt) unless the segment is final."""
        data = encode_record(line(0), 1) + encode_record(line(1), 2)[:-5]
        pending = parse(data, 0, final=False)
        torn = parse(data, 0, final=True)
        assert ([line(0)], 0, HEADER_SIZE + 100) == (
            [r[3] for r in pending.records],
            pending.corrupt,
            pending.end,
        )
        assert HEADER_SIZE + 100 == pending.need
        assert ([line(0)], 1, len(data)) == ([r[3] for r in torn.records], torn.corrupt, torn.end)


class TestSpoolRoundTrip:
    def test_append_read_ack_deletes(self, make_spool: MakeSpool, spool_dir: Path) -> None:
        """Appended lines come back in order, byte for byte; acked segments are deleted."""
        stats = SinkStats()
        spool = make_spool(stats=stats, segment_bytes=3 * (HEADER_SIZE + 100))
        lines = [line(i) for i in range(7)]
        assert all(spool.append(item) for item in lines)
        assert 7 == spool.pending_events()
        assert 7 * (HEADER_SIZE + 100) == spool.pending_bytes()
        records = spool.read(100, 1 << 20)
        assert lines == [r.line for r in records]
        assert 3 == len(segment_files(spool_dir))
        spool.ack(records)
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
        assert ["e0", "e1"] == ids(spool.read(2, 1 << 20))
        assert ["e2", "e3"] == ids(spool.read(10, 250))
        assert ["e4"] == ids(spool.read(10, 1))
        assert [] == spool.read(10, 1 << 20)

    def test_out_of_order_ack(self, make_spool: MakeSpool, spool_dir: Path) -> None:
        """A sealed segment is deleted only once its last record is acked, in any order."""
        spool = make_spool(segment_bytes=3 * (HEADER_SIZE + 100))
        for i in range(6):
            spool.append(line(i))
        first, second = segment_files(spool_dir)
        records = spool.read(100, 1 << 20)
        spool.ack([records[4], records[2], records[0]])
        assert [first, second] == segment_files(spool_dir)
        spool.ack([records[1], records[5]])
        assert [second] == segment_files(spool_dir)
        assert HEADER_SIZE + 100 == spool.pending_bytes()
        spool.ack([records[3], records[3]])
        assert 0 == spool.pending_bytes()

    def test_release_then_reread(self, make_spool: MakeSpool) -> None:
        """Released records are handed out again, before newer ones; acked ones never again."""
        spool = make_spool()
        for i in range(4):
            spool.append(line(i))
        records = spool.read(3, 1 << 20)
        spool.ack(records[:1])
        spool.release(records[1:])
        spool.append(line(4))
        again = spool.read(100, 1 << 20)
        assert ["e1", "e2", "e3", "e4"] == ids(again)
        assert records[1:] == again[:2]

    def test_unacked_segment_survives_close(self, make_spool: MakeSpool) -> None:
        """A segment with unacked records is replayed whole by the next spool (at least once)."""
        first = make_spool()
        for i in range(3):
            first.append(line(i))
        first.ack(first.read(1, 1 << 20))
        first.read(1, 1 << 20)  # handed out, never acked
        first.close()
        assert ["e0", "e1", "e2"] == ids(drain(make_spool()))


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
        [HEADER_SIZE + 40, 5, HEADER_SIZE - 2],
        ids=["payload", "header-length", "header-crc"],
    )
    def test_flipped_byte(self, make_spool: MakeSpool, spool_dir: Path, where: int) -> None:
        """A damaged record in the middle is skipped and counted; the ones after it still read."""
        writer = make_spool()
        for i in range(5):
            writer.append(line(i))
        writer.close()
        (segment,) = segment_files(spool_dir)
        data = bytearray(segment.read_bytes())
        data[2 * (HEADER_SIZE + 100) + where] ^= 0x5A
        segment.write_bytes(bytes(data))
        stats = SinkStats()
        reader = make_spool(stats=stats)
        assert ["e0", "e1", "e3", "e4"] == ids(drain(reader))
        assert {"spool_corrupt": 1} == stats.dropped_by_reason
        assert [] == segment_files(spool_dir)

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


class TestSpoolLimits:
    def test_size_cap_drops_oldest_and_counts(self, make_spool: MakeSpool) -> None:
        """Past max_bytes the oldest segments go; every lost event is counted."""
        record = HEADER_SIZE + 100
        stats = SinkStats()
        spool = make_spool(stats=stats, max_bytes=10 * record, segment_bytes=3 * record)
        for i in range(20):
            assert spool.append(line(i))
            assert spool.pending_bytes() <= 10 * record
        kept = ids(drain(spool))
        assert [f"e{i}" for i in range(20 - len(kept), 20)] == kept
        assert 7 <= len(kept)
        assert {"spool_full": 20 - len(kept)} == stats.dropped_by_reason

    def test_size_cap_spares_handed_out(self, make_spool: MakeSpool) -> None:
        """Segments handed out to the engine are evicted last; a release from one is counted."""
        record = HEADER_SIZE + 100
        stats = SinkStats()
        spool = make_spool(stats=stats, max_bytes=6 * record, segment_bytes=2 * record)
        for i in range(4):
            spool.append(line(i))
        in_flight = spool.read(2, 1 << 20)  # e0, e1: the whole first segment
        for i in range(4, 7):
            spool.append(line(i))
        assert {"spool_full": 2} == stats.dropped_by_reason  # e2, e3 went, e0, e1 stayed
        spool.ack(in_flight)
        assert ["e4", "e5", "e6"] == ids(drain(spool))

    def test_release_from_evicted_segment_is_counted(self, make_spool: MakeSpool) -> None:
        """When only handed-out segments can go, their records count as lost once released."""
        record = HEADER_SIZE + 100
        stats = SinkStats()
        spool = make_spool(stats=stats, max_bytes=4 * record, segment_bytes=2 * record)
        for i in range(4):
            spool.append(line(i))
        in_flight = spool.read(100, 1 << 20)
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
        spool = make_spool(stats=stats, max_bytes=2 * (HEADER_SIZE + 100))
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
        spool.release(spool.read(1, 1 << 20))
        clock.now += 20
        assert ["e2"] == ids(spool.read(100, 1 << 20))
        assert {"ttl_expired": 2} == stats.dropped_by_reason
        assert HEADER_SIZE + 100 == spool.pending_bytes()


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
        assert [] == other.read(100, 1 << 20)
        assert ["e0"] == ids(alive.read(100, 1 << 20))

    def test_closed_sibling_is_adopted_later(self, make_spool: MakeSpool) -> None:
        """A running spool picks up what a sibling left when it closed, on a later read."""
        survivor = make_spool()
        leaver = make_spool()
        leaver.append(line(0))
        leaver.close()
        assert ["e0"] == ids(survivor.read(100, 1 << 20))

    def test_two_live_spools_never_share_a_record(
        self, make_spool: MakeSpool, spool_dir: Path
    ) -> None:
        """Two spools adopting and reading at once hand out every orphaned record exactly once."""
        dead_owner(spool_dir, 2000, segment_bytes=16384)
        barrier = threading.Barrier(2)
        results: list[list[SpoolRecord]] = [[], []]
        errors: list[BaseException] = []

        def worker(slot: int) -> None:
            try:
                barrier.wait(timeout=DEADLINE)
                spool = make_spool()
                while batch := spool.read(7, 1 << 20):
                    results[slot] += batch
                    spool.ack(batch)
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
        records = drain(make_spool(stats=stats))
        got = ids(records)
        assert len(got) == len(set(got))
        assert {f"e{i}" for i in reported} <= set(got)
        assert len(got) - len(reported) <= 1  # at most the one being reported at the kill
        assert all(
            r.line.startswith(b'{"event_id": "e') and r.line.endswith(b"}\n") for r in records
        )
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
        spool = make_spool(fsync="batch", segment_bytes=HEADER_SIZE + 100)
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
            batch = spool.read(rng.randint(1, 50), 1 << 20)
            rng.shuffle(batch)
            keep = rng.randint(0, len(batch))
            spool.release(batch[keep:])
            spool.ack(batch[:keep])
            acked += ids(batch[:keep])
        for thread in threads:
            thread.join(DEADLINE)
        assert [] == failed
        assert sorted(f"e{i}" for i in range(writers * per_writer)) == sorted(acked)
        assert (0, 0) == (spool.pending_bytes(), spool.pending_events())
        assert len(segment_files(spool_dir)) <= 1
        assert [] == spool.read(100, 1 << 20)

"""The file sink: real files, real rotation under the writer, real processes sharing a file."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.config import FileSinkSettings
from bridge.sinks.file import FileOutput, FileSink
from bridge.sinks.writer import LineWriter
from tests.conftest import read_events
from tests.sinks.fakes import QuietOutput


def line(n: int, pad: int = 0) -> bytes:
    return json.dumps({"n": n, "pad": "x" * pad}).encode() + b"\n"


def make_sink(path: Path, check_interval: float = 0.0, **options: Any) -> FileSink:
    """A file sink that checks for rotation on every write (production: once a second)."""
    settings = FileSinkSettings(type="file", name="file-0", path=path, **options)
    return FileSink(settings, check_interval=check_interval)


def all_numbers(path: Path) -> list[int]:
    """Every `n` in the file and its numbered backups, oldest backup first."""
    files = sorted(path.parent.glob(path.name + ".*[0-9]"), key=lambda p: -int(p.suffix[1:]))
    numbers = []
    for each in [*files, path]:
        numbers.extend(event["n"] for event in read_events(each))
    return numbers


class TestFileSink:
    def test_writes_lines_in_order(self, tmp_path: Path) -> None:
        """Lines land whole and in order; the directory is created."""
        path = tmp_path / "deep" / "dir" / "events.jsonl"
        sink = make_sink(path)
        for n in range(100):
            assert sink.submit(line(n))
        assert sink.close(5.0)
        assert list(range(100)) == all_numbers(path)
        assert (100, 100) == (sink.stats()["enqueued"], sink.stats()["delivered"])

    def test_file_mode(self, tmp_path: Path) -> None:
        """A new file gets file_mode (0640 by default), whatever the umask."""
        old = os.umask(0o077)
        try:
            sink = make_sink(tmp_path / "a.jsonl")
            other = make_sink(tmp_path / "b.jsonl", file_mode=0o600)
        finally:
            os.umask(old)
        assert 0o640 == stat.S_IMODE((tmp_path / "a.jsonl").stat().st_mode)
        assert 0o600 == stat.S_IMODE((tmp_path / "b.jsonl").stat().st_mode)
        sink.close(1.0)
        other.close(1.0)

    def test_reopens_after_logrotate_rename(self, tmp_path: Path) -> None:
        """After a rename (logrotate's create mode) new lines go to a new file; none lost."""
        path = tmp_path / "events.jsonl"
        sink = make_sink(path)
        for n in range(10):
            sink.submit(line(n))
        os.rename(path, tmp_path / "events.jsonl.1")
        for n in range(10, 20):
            sink.submit(line(n))
        assert sink.flush(5.0)
        assert list(range(20)) == all_numbers(path)
        assert path.exists() and read_events(path), "the sink reopened the path"
        sink.close(1.0)

    def test_reopens_after_removal(self, tmp_path: Path) -> None:
        """A removed file is recreated."""
        path = tmp_path / "events.jsonl"
        sink = make_sink(path)
        sink.submit(line(0))
        path.unlink()
        sink.submit(line(1))
        sink.submit(line(2))
        assert sink.flush(5.0)
        assert [1, 2] == [e["n"] for e in read_events(path)]
        sink.close(1.0)

    def test_copytruncate_keeps_appending(self, tmp_path: Path) -> None:
        """With copytruncate, O_APPEND writes continue at the new end, no hole."""
        path = tmp_path / "events.jsonl"
        sink = make_sink(path)
        sink.submit(line(0))
        os.truncate(path, 0)
        sink.submit(line(1))
        assert sink.flush(5.0)
        assert [1] == [e["n"] for e in read_events(path)]
        sink.close(1.0)

    def test_size_rotation_keeps_backups(self, tmp_path: Path) -> None:
        """rotate_bytes rotates into numbered backups; the oldest beyond `backups` go."""
        path = tmp_path / "events.jsonl"
        sink = make_sink(path, rotate_bytes=8192, backups=3)
        for n in range(200):
            sink.submit(line(n, pad=200))
        assert sink.close(5.0)
        backups = sorted(p.name for p in tmp_path.glob("events.jsonl.*[0-9]"))
        assert ["events.jsonl.1", "events.jsonl.2", "events.jsonl.3"] == backups
        numbers = all_numbers(path)
        assert numbers == sorted(numbers)
        assert 199 == numbers[-1]
        assert numbers == list(range(numbers[0], 200)), "nothing lost inside the kept window"

    def test_sync_writes_before_returning(self, tmp_path: Path) -> None:
        """sync = true: the line is in the file when submit returns (audit logs)."""
        path = tmp_path / "audit.jsonl"
        sink = make_sink(path, sync=True, fsync=True)
        sink.submit(line(1))
        assert [1] == [e["n"] for e in read_events(path)]
        sink.close(1.0)

    def test_fsync_without_sync_writes_in_background(self, tmp_path: Path) -> None:
        """fsync = true alone: lines go through the thread, flush waits for them."""
        path = tmp_path / "events.jsonl"
        sink = make_sink(path, fsync=True)
        for n in range(5):
            sink.submit(line(n))
        assert sink.flush(5.0)
        assert list(range(5)) == all_numbers(path)
        sink.close(1.0)

    def test_concurrent_threads_never_tear_lines(self, tmp_path: Path) -> None:
        """Eight threads writing at once: every line whole, every line present."""
        path = tmp_path / "events.jsonl"
        sink = make_sink(path)

        def work(base: int) -> None:
            for n in range(base, base + 500):
                sink.submit(line(n, pad=n % 300))

        threads = [threading.Thread(target=work, args=(i * 1000,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sink.close(10.0)
        expected = sorted(i * 1000 + k for i in range(8) for k in range(500))
        assert expected == sorted(all_numbers(path))


def _append_from_process(path: str, base: int, count: int, rotate_bytes: int) -> None:
    sink = make_sink(Path(path), rotate_bytes=rotate_bytes, backups=50)
    for n in range(base, base + count):
        sink.submit(line(n, pad=100))
    sink.close(10.0)


@pytest.mark.parametrize("rotate_bytes", [0, 32768])
def test_processes_share_one_file(tmp_path: Path, rotate_bytes: int) -> None:
    """Four processes append to one file (rotating it too): no torn or lost line."""
    path = tmp_path / "events.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_append_from_process, args=(str(path), i * 10_000, 1500, rotate_bytes))
        for i in range(4)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert 0 == proc.exitcode
    expected = sorted(i * 10_000 + k for i in range(4) for k in range(1500))
    assert expected == sorted(all_numbers(path))


class SlowOutput(QuietOutput):
    """An output whose writes block until released, like a disk that stalls."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.data = bytearray()
        self.writer_threads: set[str] = set()

    def write(self, data: bytes) -> int:
        self.writer_threads.add(threading.current_thread().name)
        self.started.set()
        self.release.wait(10)
        self.data += bytes(data)
        return len(data)


class TestSlowOutput:
    def test_request_thread_never_waits_on_a_busy_writer(self) -> None:
        """While one write is stuck, other threads queue their lines and return at once."""
        from bridge.stats import SinkStats

        output = SlowOutput()
        writer = LineWriter(
            output,
            name="slow",
            stats=SinkStats(),
            overflow="drop_newest",
            max_events=100,
            max_bytes=1 << 20,
        )
        stuck = threading.Thread(target=writer.submit, args=(line(0),))
        stuck.start()
        assert output.started.wait(10)
        returned = []
        for n in range(1, 6):  # the write lock is held: these must queue, not wait
            returned.append(writer.submit(line(n)))
        assert [True] * 5 == returned
        assert 5 == writer.counters()["queue_depth"]
        output.release.set()
        stuck.join(10)
        assert writer.flush(10)
        assert list(range(6)) == [json.loads(x)["n"] for x in bytes(output.data).splitlines()]
        writer.close(1.0)

    def test_overflow_drops_newest_and_counts(self) -> None:
        """A full queue drops by policy and counts the reason."""
        from bridge.stats import SinkStats

        output = SlowOutput()
        stats = SinkStats()
        writer = LineWriter(
            output,
            name="slow",
            stats=stats,
            overflow="drop_newest",
            max_events=3,
            max_bytes=1 << 20,
        )
        stuck = threading.Thread(target=writer.submit, args=(line(0),))
        stuck.start()
        assert output.started.wait(10)
        accepted = [writer.submit(line(n)) for n in range(1, 7)]
        assert [True, True, True, False, False, False] == accepted
        assert {"queue_overflow": 3} == stats.snapshot(queue_depth=0)["dropped_by_reason"]
        output.release.set()
        stuck.join(10)
        assert writer.close(10.0)
        assert [0, 1, 2, 3] == [json.loads(x)["n"] for x in bytes(output.data).splitlines()]

    def test_slow_write_moves_writing_to_the_thread(self) -> None:
        """After a slow write, lines are written by the background thread for a while."""
        from bridge.stats import SinkStats

        output = SlowOutput()
        output.release.set()
        writer = LineWriter(
            output,
            name="slow",
            stats=SinkStats(),
            overflow="drop_newest",
            max_events=100,
            max_bytes=1 << 20,
            slow_write_seconds=-1.0,
        )
        writer.submit(line(0))  # every write counts as slow here
        writer.submit(line(1))
        assert writer.flush(10)
        assert threading.current_thread().name in output.writer_threads
        assert "bridge-sink-slow" in output.writer_threads
        writer.close(1.0)


def test_close_is_idempotent(tmp_path: Path) -> None:
    """close() twice is fine; submit after close is refused and counted."""
    sink = make_sink(tmp_path / "e.jsonl")
    assert sink.close(1.0)
    assert sink.close(1.0)
    assert not sink.submit(line(1))
    assert {"closed": 1} == sink.stats()["dropped_by_reason"]


def test_file_output_detects_rename_without_writes(tmp_path: Path) -> None:
    """maintenance_due notices a renamed file once the check interval has passed."""
    path = tmp_path / "e.jsonl"
    output = FileOutput(path, mode=0o640, rotate_bytes=0, backups=0)
    os.rename(path, tmp_path / "old")
    assert output.maintenance_due(time.monotonic() + 10)
    output.maintain()
    assert path.exists()
    output.close()


def test_sync_mode_follows_rotation(tmp_path: Path) -> None:
    """sync = true still reopens after a rename and rotates by size."""
    path = tmp_path / "audit.jsonl"
    sink = make_sink(path, sync=True, rotate_bytes=4096, backups=2)
    sink.submit(line(0))
    os.rename(path, tmp_path / "moved.jsonl")
    for n in range(1, 60):
        sink.submit(line(n, pad=100))
    assert sink.close(5.0)
    assert [0] == [e["n"] for e in read_events(tmp_path / "moved.jsonl")]
    assert (tmp_path / "audit.jsonl.1").exists()
    assert list(range(1, 60))[-len(all_numbers(path)) :] == all_numbers(path)

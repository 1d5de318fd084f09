"""submit_many through the file and stdout sinks: real pipes, real files, threads, rotation."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path
from typing import Any

from bridge.sinks.file import FileOutput
from bridge.streams import PIPE_BUF, StreamOutput
from tests.conftest import read_events
from tests.sinks.test_file import all_numbers
from tests.sinks.test_file import make_sink as make_file_sink
from tests.sinks.test_stdout import F_SETPIPE_SZ
from tests.sinks.test_stdout import make_sink as make_stdout_sink
from tests.sinks.test_writer import counts, make_writer
from tests.sinks.test_writer_many import Recording, batch


def numbers(data: bytes) -> list[int]:
    return [json.loads(raw)["n"] for raw in data.splitlines()]


def read_lines(fd: int, lines: int) -> bytes:
    """Read the pipe until `lines` newlines came through (or it was closed)."""
    data = bytearray()
    while data.count(b"\n") < lines:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        data.extend(chunk)
    return bytes(data)


def fill(write_fd: int) -> int:
    """Fill the pipe until a write would block; how many bytes it took."""
    os.set_blocking(write_fd, False)
    taken = 0
    try:
        while True:
            taken += os.write(write_fd, b"z" * 512)
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(write_fd, True)
    return taken


class TestStdoutBatches:
    def test_a_full_pipe_keeps_every_line_whole_and_in_order(self, pipe: tuple[int, int]) -> None:
        """Batches into a full pipe return at once; once a reader drains it, all arrive."""
        read_fd, write_fd = pipe
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, 4096)
        filler = fill(write_fd)
        sink = make_stdout_sink(write_fd)
        for first in range(0, 180, 9):
            assert 9 == sink.submit_many(batch(9, pad=230, first=first))
        assert sink.stats()["queue_depth"] > 0
        received = bytearray()
        reader = threading.Thread(
            target=lambda: received.extend(read_lines(read_fd, 180)), daemon=True
        )
        reader.start()
        assert sink.flush(10.0)
        reader.join(10)
        assert not reader.is_alive()
        assert b"z" * filler == bytes(received[:filler])
        assert list(range(180)) == numbers(bytes(received[filler:]))
        assert (180, 180) == (sink.stats()["enqueued"], sink.stats()["delivered"])
        sink.close(1.0)

    def test_a_batch_over_pipe_buf_goes_in_atomic_runs_of_whole_lines(
        self, pipe: tuple[int, int]
    ) -> None:
        """40 lines (~10 KB) on a pipe: writes of whole lines, none over PIPE_BUF."""
        read_fd, write_fd = pipe
        output = Recording(StreamOutput(write_fd))
        writer = make_writer(output)
        received = bytearray()
        reader = threading.Thread(
            target=lambda: received.extend(read_lines(read_fd, 40)), daemon=True
        )
        reader.start()
        lines = batch(40, pad=230)
        assert 40 == writer.submit_many(lines)
        assert writer.flush(10.0)
        reader.join(10)
        assert b"".join(lines) == bytes(received)
        assert all(len(data) <= PIPE_BUF for data in output.writes)
        assert all(data.endswith(b"\n") for data in output.writes)
        assert b"".join(lines) == b"".join(output.writes)
        assert 3 == len(output.writes), "as few writes as PIPE_BUF allows"
        assert (40, 40, {}) == counts(writer)
        writer.close(1.0)


class TestFileBatches:
    def test_threads_writing_batches_never_mix_them(self, tmp_path: Path) -> None:
        """Eight threads, 5-line batches: every line whole and present once, each thread's in
        order, and the lines of a batch written in one call side by side in the file."""
        path = tmp_path / "e.jsonl"
        output = Recording(FileOutput(path, mode=0o640, rotate_bytes=0, backups=0))
        writer = make_writer(output, max_events=100_000, max_bytes=1 << 26)

        def work(base: int) -> None:
            for first in range(base, base + 300, 5):
                writer.submit_many(batch(5, pad=first % 300, first=first))

        threads = [threading.Thread(target=work, args=(i * 1000,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert writer.close(10.0)
        written = path.read_bytes()
        found = [event["n"] for event in read_events(path)]
        assert sorted(i * 1000 + k for i in range(8) for k in range(300)) == sorted(found)
        for i in range(8):
            assert sorted(n for n in found if n // 1000 == i) == [
                n for n in found if n // 1000 == i
            ]
        assert written == b"".join(output.writes), "one write() lands as one piece"
        whole_batches = [numbers(data) for data in output.writes if data.count(b"\n") > 1]
        assert whole_batches, "some batches took the fast path"
        for got in whole_batches:
            assert list(range(got[0], got[0] + 5)) == got and got[0] % 5 == 0
        assert (2400, 2400, {}) == counts(writer)

    def test_size_rotation_overshoots_by_a_batch_at_most(self, tmp_path: Path) -> None:
        """rotate_bytes with batches: backups kept, nothing lost inside the kept window, and
        no file past rotate_bytes by more than one batch."""
        path = tmp_path / "events.jsonl"
        sink = make_file_sink(path, rotate_bytes=8192, backups=3)
        size = len(b"".join(batch(5)))
        for first in range(0, 300, 5):
            assert 5 == sink.submit_many(batch(5, first=first))
        assert sink.close(5.0)
        backups = sorted(p.name for p in tmp_path.glob("events.jsonl.*[0-9]"))
        assert ["events.jsonl.1", "events.jsonl.2", "events.jsonl.3"] == backups
        kept = all_numbers(path)
        assert list(range(kept[0], 300)) == kept
        for each in tmp_path.glob("events.jsonl*"):
            assert each.stat().st_size < 8192 + size, each.name

    def test_sync_follows_rotation_with_batches(self, tmp_path: Path) -> None:
        """sync = true rotates on the calling thread between batches; every line is kept."""
        path = tmp_path / "audit.jsonl"
        sink = make_file_sink(path, sync=True, fsync=True, rotate_bytes=4096, backups=20)
        for first in range(0, 100, 5):
            assert 5 == sink.submit_many(batch(5, pad=100, first=first))
        assert sink.close(5.0)
        assert list(range(100)) == all_numbers(path)
        assert (tmp_path / "audit.jsonl.1").exists()

    def test_a_cut_batch_leaves_only_the_cut_line_owed(self, tmp_path: Path) -> None:
        """Cut inside line 1 with lines 2-4 dropped by a full queue: once the rest of line 1
        is out, the file owes nothing, so logrotate is followed at the next check."""
        path = tmp_path / "e.jsonl"
        inner = FileOutput(path, mode=0o640, rotate_bytes=0, backups=0, check_interval=0.0)
        output = Recording(inner)
        lines = batch(5)
        output.plan.append(len(lines[0]) + 20)
        writer = make_writer(output, max_events=1)
        assert 2 == writer.submit_many(lines)  # lines 0 and 1 (its rest at the queue's head)
        assert writer.flush(5.0)
        assert lines[0] + lines[1] == path.read_bytes()
        os.rename(path, tmp_path / "e.jsonl.1")
        assert writer.submit(lines[2])
        assert writer.flush(5.0)
        assert lines[2] == path.read_bytes()
        assert (3, 3, {"queue_overflow": 3}) == counts(writer)
        writer.close(1.0)

    def test_the_sink_counts_lines_not_batches(self, tmp_path: Path) -> None:
        """stats() after batches: enqueued and delivered in lines."""
        path = tmp_path / "e.jsonl"
        sink = make_file_sink(path)
        assert 9 == sink.submit_many(batch(9))
        assert 3 == sink.submit_many(batch(3, first=9))
        assert sink.close(5.0)
        stats: dict[str, Any] = sink.stats()
        assert (12, 12, 0) == (stats["enqueued"], stats["delivered"], stats["dropped"])
        assert list(range(12)) == all_numbers(path)

"""LineWriter.submit_many: a request's lines in one write(), each kept as if submitted alone.

The proof throughout: a second writer fed the same lines by N `submit` calls, under the same
conditions (the same room on the disk or in the pipe), ends with the same bytes and counters.
"""

from __future__ import annotations

import errno
import json
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.sinks.file import FileOutput
from tests.sinks.fakes import QuietOutput
from tests.sinks.test_writer import Disk, Stuck, counts, make_writer, wait_for_failure


def line(n: int, pad: int = 200) -> bytes:
    return json.dumps({"n": n, "pad": "x" * pad}).encode() + b"\n"


def batch(count: int, pad: int = 200, first: int = 0) -> list[bytes]:
    return [line(n, pad) for n in range(first, first + count)]


class Recording:
    """A real output whose write() and fsync() calls are recorded, with faults on cue.

    `plan` scripts the next writes, one step each: an int writes only that many bytes,
    "eagain" finds the pipe full, "enospc" the disk full (nothing written). With `full_after_part`
    the disk is full (`full`) from the first short write on, until the test clears it.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batch_bytes: int = inner.batch_bytes
        self.writes: list[bytes] = []
        self.threads: list[str] = []
        self.fsyncs = 0
        self.plan: deque[int | str] = deque()
        self.full = False
        self.full_after_part = False

    def write(self, data: bytes) -> int:
        data = bytes(data)
        step = self.plan.popleft() if self.plan else None
        if step == "eagain":
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        if step == "enospc" or self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        if isinstance(step, int):
            data = data[:step]
            self.full = self.full_after_part
        written: int = self.inner.write(data)
        self.writes.append(data[:written])
        self.threads.append(threading.current_thread().name)
        return written

    def settle_partial(self, rest: int) -> None:
        self.inner.settle_partial(rest)

    def wait_writable(self, timeout: float) -> None:
        self.inner.wait_writable(timeout)

    def maintenance_due(self, now: float) -> bool:
        return bool(self.inner.maintenance_due(now))

    def maintain(self) -> None:
        self.inner.maintain()

    def fsync(self) -> None:
        self.fsyncs += 1
        self.inner.fsync()

    def close(self) -> None:
        self.inner.close()


def file_output(path: Path) -> Recording:
    return Recording(FileOutput(path, mode=0o640, rotate_bytes=0, backups=0))


class TestFastPath:
    def test_a_batch_is_one_write(self, tmp_path: Path) -> None:
        """Nine lines, queue empty, lock free: one write() call, every line counted."""
        output = file_output(tmp_path / "e.jsonl")
        writer = make_writer(output)
        lines = batch(9)
        assert 9 == writer.submit_many(lines)
        assert [b"".join(lines)] == output.writes
        assert (9, 9, {}) == counts(writer)
        assert writer.close(1.0)
        assert b"".join(lines) == (tmp_path / "e.jsonl").read_bytes()

    def test_an_empty_batch_counts_nothing(self, tmp_path: Path) -> None:
        """No lines: nothing written, nothing counted."""
        output = file_output(tmp_path / "e.jsonl")
        writer = make_writer(output)
        assert 0 == writer.submit_many([])
        assert ([], (0, 0, {})) == (output.writes, counts(writer))
        writer.close(1.0)

    def test_a_batch_larger_than_one_write_may_carry_goes_in_whole_line_runs(
        self, tmp_path: Path
    ) -> None:
        """batch_bytes of three lines: nine lines in three writes, each of whole lines."""
        output = file_output(tmp_path / "e.jsonl")
        lines = batch(9)
        output.batch_bytes = len(b"".join(lines[:3]))
        writer = make_writer(output)
        assert 9 == writer.submit_many(lines)
        assert [b"".join(lines[i : i + 3]) for i in (0, 3, 6)] == output.writes
        assert (9, 9, {}) == counts(writer)
        writer.close(1.0)

    def test_a_line_longer_than_batch_bytes_goes_alone(self, tmp_path: Path) -> None:
        """A line over batch_bytes is a run of its own; the short lines around it are joined."""
        output = file_output(tmp_path / "e.jsonl")
        lines = [line(0, 10), line(1, 10), line(2, 5000), line(3, 10), line(4, 10)]
        output.batch_bytes = 4096
        writer = make_writer(output)
        assert 5 == writer.submit_many(lines)
        assert [lines[0] + lines[1], lines[2], lines[3] + lines[4]] == output.writes
        writer.close(1.0)

    @pytest.mark.parametrize("into_line", [1, 100, 150])
    def test_a_write_cut_inside_a_line_is_finished_by_the_thread(
        self, tmp_path: Path, into_line: int
    ) -> None:
        """Cut inside line 3: lines 0-2 counted at once, the rest of 3 and lines 4-8 follow."""
        path = tmp_path / "e.jsonl"
        output = file_output(path)
        lines = batch(9)
        output.plan.append(len(b"".join(lines[:3])) + into_line)
        writer = make_writer(output)
        assert 9 == writer.submit_many(lines)
        assert writer.flush(5.0)
        assert b"".join(lines) == path.read_bytes()
        assert lines[3][into_line:] == output.writes[1], "the rest of line 3 is written next"
        assert (9, 9, {}) == counts(writer)
        writer.close(1.0)

    def test_a_write_cut_between_lines_starts_nothing(self, tmp_path: Path) -> None:
        """Cut right after line 3: lines 4-8 are queued whole and written one by one."""
        path = tmp_path / "e.jsonl"
        output = file_output(path)
        lines = batch(9)
        output.plan.append(len(b"".join(lines[:4])))
        writer = make_writer(output)
        assert 9 == writer.submit_many(lines)
        assert writer.flush(5.0)
        assert b"".join(lines) == path.read_bytes()
        assert [b"".join(lines[:4]), *lines[4:]] == output.writes
        assert (9, 9, {}) == counts(writer)
        writer.close(1.0)

    def test_a_full_pipe_queues_every_line(self, tmp_path: Path) -> None:
        """EAGAIN before any byte: all nine lines go to the thread, in order."""
        path = tmp_path / "e.jsonl"
        output = file_output(path)
        output.plan.append("eagain")
        writer = make_writer(output)
        lines = batch(9)
        assert 9 == writer.submit_many(lines)
        assert writer.flush(5.0)
        assert b"".join(lines) == path.read_bytes()
        assert (9, 9, {}) == counts(writer)
        writer.close(1.0)

    def test_a_full_disk_before_any_byte_drops_each_line_as_submits_would(
        self, tmp_path: Path
    ) -> None:
        """ENOSPC before any byte: nine lines counted write_error, as nine failed submits."""
        batched = file_output(tmp_path / "a.jsonl")
        batched.plan.append("enospc")
        single = file_output(tmp_path / "b.jsonl")
        single.plan.extend(["enospc"] * 9)
        many, one = make_writer(batched), make_writer(single)
        lines = batch(9)
        assert 0 == many.submit_many(lines)
        assert [False] * 9 == [one.submit(each) for each in lines]
        assert (0, 0, {"write_error": 9}) == counts(many)
        assert counts(one) == counts(many)
        assert one.stats.last_error == many.stats.last_error
        many.close(1.0)
        one.close(1.0)

    def test_a_full_disk_after_part_of_a_line_keeps_its_rest_next(self, tmp_path: Path) -> None:
        """Disk full in line 2: its rest waits at the head, then it and lines 3-8 go out."""
        path = tmp_path / "e.jsonl"
        output = file_output(path)
        lines = batch(9)
        output.plan.append(len(b"".join(lines[:2])) + 50)
        output.full_after_part = True
        writer = make_writer(output)
        assert 9 == writer.submit_many(lines)
        wait_for_failure(writer)
        assert b"".join(lines[:2]) + lines[2][:50] == path.read_bytes()
        output.full = False
        assert writer.flush(5.0)
        assert b"".join(lines) == path.read_bytes()
        assert (9, 9, {}) == counts(writer)
        writer.close(1.0)

    def test_a_slow_write_moves_the_next_batches_to_the_thread(self, tmp_path: Path) -> None:
        """A slow batch write defers writing to the thread, as a slow single write does."""
        output = file_output(tmp_path / "e.jsonl")
        writer = make_writer(output, slow_write_seconds=-1.0)
        assert 3 == writer.submit_many(batch(3))
        assert 3 == writer.submit_many(batch(3, first=3))
        assert writer.flush(5.0)
        assert threading.current_thread().name == output.threads[0]
        assert {"bridge-sink-test"} == set(output.threads[1:])
        assert (6, 6, {}) == counts(writer)
        writer.close(1.0)


class TestSync:
    def test_one_write_and_one_fsync_per_batch(self, tmp_path: Path) -> None:
        """sync + fsync: the batch is in the file on return, after one write and one fsync."""
        path = tmp_path / "e.jsonl"
        output = file_output(path)
        writer = make_writer(output, sync=True, fsync=True)
        lines = batch(9)
        assert 9 == writer.submit_many(lines)
        assert b"".join(lines) == path.read_bytes()
        assert (1, 1) == (len(output.writes), output.fsyncs)
        assert (9, 9, {}) == counts(writer)
        writer.close(1.0)

    def test_a_write_cut_short_is_finished_in_the_same_call(self, tmp_path: Path) -> None:
        """sync: a short write (not a failure) is followed by the rest, before returning."""
        path = tmp_path / "e.jsonl"
        output = file_output(path)
        lines = batch(9)
        output.plan.append(len(b"".join(lines[:2])) + 7)
        writer = make_writer(output, sync=True, fsync=True)
        assert 9 == writer.submit_many(lines)
        assert b"".join(lines) == path.read_bytes()
        assert 1 == output.fsyncs
        writer.close(1.0)

    @pytest.mark.parametrize("free", [0, 1, 250, 2 * 262, 2 * 262 + 30, 9 * 262 - 1])
    def test_a_disk_filling_up_counts_as_submits_do(self, free: int) -> None:
        """sync on a disk with `free` bytes: same bytes and counters as nine sync submits,
        once room comes back and again after close."""
        lines = batch(9, pad=242)
        assert {262} == {len(each) for each in lines}
        many_disk, one_disk = Disk(free=free), Disk(free=free)
        many, one = make_writer(many_disk, sync=True), make_writer(one_disk, sync=True)
        accepted = many.submit_many(lines)
        assert sum(one.submit(each) for each in lines) == accepted
        assert counts(one) == counts(many)
        for disk in (many_disk, one_disk):
            disk.give(1 << 20)
        assert many.flush(5.0) and one.flush(5.0)
        assert bytes(one_disk.data) == bytes(many_disk.data)
        assert counts(one) == counts(many)
        many.close(1.0)
        one.close(1.0)
        assert counts(one) == counts(many)


class TestQueued:
    @pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
    def test_overflow_counts_as_submits_do(self, policy: str) -> None:
        """Output blocked, queue of 2, batch of 5: the counters of five submits."""
        many_out, one_out = Stuck(), Stuck()
        many = make_writer(many_out, overflow=policy, max_events=2)
        one = make_writer(one_out, overflow=policy, max_events=2)
        for writer, output in ((many, many_out), (one, one_out)):
            writer.submit(line(99))
            assert output.waiting.wait(10)  # the thread holds it, waiting for room
        lines = batch(5)
        accepted = many.submit_many(lines)
        assert sum(one.submit(each) for each in lines) == accepted
        expected_accepted = {"drop_newest": 2, "drop_oldest": 5}[policy]
        assert expected_accepted == accepted
        assert (1 + expected_accepted, 0, {"queue_overflow": 3}) == counts(many)
        assert counts(one) == counts(many)
        for output in (many_out, one_out):
            output.release.set()
        many.close(0.1)
        one.close(0.1)
        assert counts(one) == counts(many)

    def test_a_closed_writer_counts_every_line_closed(self) -> None:
        """After close(): none accepted, each line counted `closed`, as submits would."""
        many, one = make_writer(Disk()), make_writer(Disk())
        many.close(1.0)
        one.close(1.0)
        lines = batch(4)
        assert 0 == many.submit_many(lines)
        assert [False] * 4 == [one.submit(each) for each in lines]
        assert (0, 0, {"closed": 4}) == counts(many)
        assert counts(one) == counts(many)

    def test_fsync_alone_writes_batches_from_the_thread(self, tmp_path: Path) -> None:
        """fsync without sync: the batch goes through the queue, every line written and synced."""
        path = tmp_path / "e.jsonl"
        output = file_output(path)
        writer = make_writer(output, fsync=True)
        lines = batch(5)
        assert 5 == writer.submit_many(lines)
        assert writer.flush(5.0)
        assert b"".join(lines) == path.read_bytes()
        assert {"bridge-sink-test"} == set(output.threads)
        assert (5, 5, {}) == counts(writer)
        writer.close(1.0)

    def test_lines_behind_a_queued_line_queue_behind_it(self, tmp_path: Path) -> None:
        """A batch submitted while lines are queued never overtakes them."""
        path = tmp_path / "e.jsonl"
        output = file_output(path)
        output.plan.append("eagain")
        writer = make_writer(output)
        assert writer.submit(line(0))  # EAGAIN: queued, the fast path is off until drained
        assert 3 == writer.submit_many(batch(3, first=1))
        assert writer.flush(5.0)
        assert b"".join(batch(4)) == path.read_bytes()
        writer.close(1.0)


class Pipe(QuietOutput):
    """A pipe with `room` bytes left: a write takes what fits (EAGAIN when nothing does);
    the writer's thread waits for room the test gives."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.data = bytearray()
        self.changed = threading.Condition()

    def write(self, data: bytes) -> int:
        with self.changed:
            if not self.room:
                raise BlockingIOError(errno.EAGAIN, "full")
            taken = min(len(data), self.room)
            self.room -= taken
            self.data += bytes(data[:taken])
            return taken

    def wait_writable(self, timeout: float) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.room > 0, timeout)

    def give(self) -> None:
        with self.changed:
            self.room = 1 << 30
            self.changed.notify_all()


sizes = st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=12)


def lines_of(lengths: list[int]) -> list[bytes]:
    return [b"%d" % n + b"x" * (size - 1) + b"\n" for n, size in enumerate(lengths)]


class TestSameAsSubmits:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(lengths=sizes, room=st.integers(min_value=0, max_value=5000))
    def test_a_pipe_filling_up_anywhere(self, lengths: list[int], room: int) -> None:
        """A pipe full after any byte of the batch: the bytes and counters of N submits."""
        lines = lines_of(lengths)
        many_pipe, one_pipe = Pipe(room), Pipe(room)
        many, one = make_writer(many_pipe), make_writer(one_pipe)
        try:
            accepted = many.submit_many(lines)
            assert sum(one.submit(each) for each in lines) == accepted
            for pipe in (many_pipe, one_pipe):
                pipe.give()
            assert many.flush(5.0) and one.flush(5.0)
            assert b"".join(lines) == bytes(many_pipe.data) == bytes(one_pipe.data)
            assert (len(lines), len(lines), {}) == counts(many) == counts(one)
        finally:
            many.close(1.0)
            one.close(1.0)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(lengths=sizes, room=st.integers(min_value=0, max_value=5000))
    def test_a_disk_filling_up_inside_a_line(self, lengths: list[int], room: int) -> None:
        """A disk full inside a line (or never): the bytes and counters of N submits."""
        lines = lines_of(lengths)
        ends = {len(b"".join(lines[:i])) for i in range(1, len(lines))}
        if room in ends:  # between two lines: see test_a_disk_full_between_lines
            room += 1
        many_disk, one_disk = Disk(free=room), Disk(free=room)
        many, one = make_writer(many_disk), make_writer(one_disk)
        try:
            accepted = many.submit_many(lines)
            assert sum(one.submit(each) for each in lines) == accepted
            assert counts(one) == counts(many)
            for disk in (many_disk, one_disk):
                disk.give(1 << 30)
            assert many.flush(5.0) and one.flush(5.0)
            assert bytes(one_disk.data) == bytes(many_disk.data)
            assert counts(one) == counts(many)
        finally:
            many.close(1.0)
            one.close(1.0)

    def test_a_disk_full_between_lines(self) -> None:
        """A write that stops exactly after line 2 queues lines 3-5 (accepted); with the disk
        still full the thread drops each, counted: delivered and dropped as N submits."""
        lines = batch(6)
        disk = Disk(free=len(b"".join(lines[:3])))
        writer = make_writer(disk)
        assert 6 == writer.submit_many(lines)
        deadline = time.monotonic() + 10
        while writer.counters()["queue_depth"] and time.monotonic() < deadline:
            writer.flush(0.05)
        assert (6, 3, {"write_error": 3}) == counts(writer)
        assert b"".join(lines[:3]) == bytes(disk.data)
        writer.close(1.0)

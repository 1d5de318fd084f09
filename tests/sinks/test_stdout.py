"""The stdout sink: whole lines, never interleaved, never blocked by a full pipe."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.config import StdoutSinkSettings
from bridge.sinks.stdout import StdoutSink, StreamOutput

ROOT = Path(__file__).resolve().parents[2]
F_SETPIPE_SZ = 1031
PIPE_BUF = select.PIPE_BUF
DEADLINE = 20.0  # seconds a step may take before the test fails instead of hanging


def line(n: int, pad: int = 0) -> bytes:
    return json.dumps({"n": n, "pad": "y" * pad}).encode() + b"\n"


def drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def make_sink(fd: int, **options: object) -> StdoutSink:
    settings = StdoutSinkSettings(type="stdout", name="stdout-0", **options)  # type: ignore[arg-type]
    return StdoutSink(settings, fd=fd)


class TestStdoutSink:
    def test_lines_reach_the_pipe(self, pipe: tuple[int, int]) -> None:
        """Lines are written whole, in order."""
        read_fd, write_fd = pipe
        sink = make_sink(write_fd)
        for n in range(50):
            assert sink.submit(line(n))
        assert sink.flush(5.0)
        assert list(range(50)) == [json.loads(x)["n"] for x in drain(read_fd).splitlines()]
        sink.close(1.0)

    def test_full_pipe_never_blocks_and_nothing_is_lost(self, pipe: tuple[int, int]) -> None:
        """With nobody reading, submit returns at once; lines follow once the pipe drains."""
        read_fd, write_fd = pipe
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, 4096)  # F_SETPIPE_SZ: the smallest pipe, one page
        sink = make_sink(write_fd)
        total = 300  # ~60 KB into a 4 KB pipe: the writer must queue
        for n in range(total):
            assert sink.submit(line(n, pad=150))
        assert sink.stats()["queue_depth"] > 0
        received = bytearray()
        reader = threading.Thread(
            target=lambda: received.extend(_read_until(read_fd, total)), daemon=True
        )
        reader.start()
        assert sink.flush(10.0)
        reader.join(10)
        numbers = [json.loads(x)["n"] for x in bytes(received).splitlines()]
        assert list(range(total)) == numbers
        sink.close(1.0)

    def test_fd_itself_stays_blocking(self, pipe: tuple[int, int]) -> None:
        """The sink's non-blocking mode does not leak onto the descriptor others use."""
        _read_fd, write_fd = pipe
        sink = make_sink(write_fd)
        sink.submit(line(1))
        assert os.get_blocking(write_fd)
        sink.close(1.0)

    def test_threads_never_interleave(self, pipe: tuple[int, int]) -> None:
        """Eight threads writing large lines at once: every line arrives whole."""
        read_fd, write_fd = pipe
        sink = make_sink(write_fd)
        received = bytearray()
        reader = threading.Thread(
            target=lambda: received.extend(_read_until(read_fd, 800)), daemon=True
        )
        reader.start()

        def work(base: int) -> None:
            for n in range(base, base + 100):
                sink.submit(line(n, pad=6000))  # larger than PIPE_BUF

        threads = [threading.Thread(target=work, args=(i * 1000,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sink.flush(20.0)
        reader.join(20)
        numbers = sorted(json.loads(x)["n"] for x in bytes(received).splitlines())
        assert sorted(i * 1000 + k for i in range(8) for k in range(100)) == numbers
        sink.close(1.0)

    def test_close_with_a_stuck_reader_counts_the_loss(self, pipe: tuple[int, int]) -> None:
        """Nobody reads: close() returns within its timeout and counts what it could not write."""
        _read_fd, write_fd = pipe
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, 4096)
        sink = make_sink(write_fd)
        for n in range(100):
            sink.submit(line(n, pad=150))
        assert not sink.close(0.2)
        stats = sink.stats()
        assert stats["dropped_by_reason"]["shutdown"] > 0
        assert 100 == stats["delivered"] + stats["dropped_by_reason"]["shutdown"]

    def test_socket_stdout(self) -> None:
        """A socket as stdout (journald) is written with MSG_DONTWAIT."""
        left, right = socket.socketpair()
        with left, right:
            sink = make_sink(left.fileno())
            sink.submit(line(5))
            assert sink.flush(5.0)
            assert {"n": 5, "pad": ""} == json.loads(right.recv(4096))
            sink.close(1.0)


def _read_until(fd: int, lines: int) -> bytes:
    data = bytearray()
    while data.count(b"\n") < lines:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        data.extend(chunk)
    return bytes(data)


class Writer:
    """A `tests.sinks.pipe_writer` process: its own stdout sink on the shared pipe."""

    def __init__(self, write_fd: int, extra_fds: tuple[int, ...] = ()) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.sinks.pipe_writer", str(write_fd)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(write_fd, *extra_fds),
        )
        self.child = 0

    def ask(self, **command: Any) -> dict[str, Any]:
        """Send one command and wait (bounded) for its answer."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps(command).encode() + b"\n")
        stdin.flush()
        ready, _, _ = select.select([stdout], [], [], DEADLINE)
        assert ready, f"no answer to {command['op']} within {DEADLINE} s"
        answer: dict[str, Any] = json.loads(stdout.readline())
        self.child = answer.get("child", self.child)
        if "child_status" in answer:
            self.child = 0  # reaped: its pid may be someone else's now
        return answer

    def stop(self) -> None:
        """SIGSTOP, and wait until every thread of the process is stopped."""
        os.kill(self.process.pid, signal.SIGSTOP)
        _, status = os.waitpid(self.process.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        for pid in (self.child, self.process.pid):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def writers() -> Iterator[Callable[..., Writer]]:
    """Factory of writer processes; each is killed at teardown, stopped or not."""
    started: list[Writer] = []

    def start(write_fd: int, extra_fds: tuple[int, ...] = ()) -> Writer:
        writer = Writer(write_fd, extra_fds)
        started.append(writer)
        return writer

    yield start
    for writer in started:
        writer.kill()


def read_lines(fd: int, lines: int, head: bytes = b"") -> list[bytes]:
    """Read until `lines` complete lines arrived (after `head`); fails past the deadline."""
    data = bytearray(head)
    deadline = time.monotonic() + DEADLINE
    while data.count(b"\n") < lines:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{lines} lines expected, got: {bytes(data)[:200]!r}..."
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 1 << 16)
            assert chunk, "the pipe closed before every line arrived"
            data.extend(chunk)
    return bytes(data).splitlines()


def numbers_of(lines: list[bytes]) -> list[int]:
    """The `n` of each line; fails on a torn line, quoting it."""
    numbers = []
    for raw in lines:
        try:
            numbers.append(json.loads(raw)["n"])
        except ValueError:
            pytest.fail(f"torn or interleaved line: {raw[:80]!r}...{raw[-80:]!r}")
    return numbers


class TestStdoutAcrossProcesses:
    """Processes sharing one pipe (gunicorn workers): no line is ever torn or interleaved."""

    def test_small_line_waits_for_another_process_big_line(
        self, pipe: tuple[int, int], writers: Callable[..., Writer]
    ) -> None:
        """A's line larger than the pipe went out in part: B's line, with room, waits for it."""
        read_fd, write_fd = pipe
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, PIPE_BUF)
        first, second = writers(write_fd), writers(write_fd)
        assert 1 == first.ask(op="submit", n=1, pad=3 * PIPE_BUF)["queue_depth"]  # partial
        first.stop()  # mid-line, and unable to finish it by itself
        head = drain(read_fd)
        assert PIPE_BUF == len(head)
        answer = second.ask(op="submit", n=2, pad=10)  # the pipe is empty now
        assert {"accepted": True, "delivered": 0, "queue_depth": 1} == answer
        first.resume()
        assert [1, 2] == numbers_of(read_lines(read_fd, 2, head))
        assert {"child_status": 0} == second.ask(op="close")
        assert {"child_status": 0} == first.ask(op="close")

    def test_many_big_lines_from_two_processes_arrive_whole(
        self, pipe: tuple[int, int], writers: Callable[..., Writer]
    ) -> None:
        """Two processes, lines of 1 to 5 pipe sizes through a one-page pipe: all arrive whole."""
        read_fd, write_fd = pipe
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, PIPE_BUF)
        pair = [writers(write_fd), writers(write_fd)]
        received = bytearray()
        total = 2 * 40
        reader = threading.Thread(
            target=lambda: received.extend(_read_until(read_fd, total)), daemon=True
        )
        reader.start()
        for k in range(40):
            for index, writer in enumerate(pair):
                pad = (k % 5) * PIPE_BUF + (100 if index else 3000)
                assert writer.ask(op="submit", n=index * 1000 + k, pad=pad)["accepted"]
        for writer in pair:
            assert {"child_status": 0} == writer.ask(op="close")  # close flushes
        reader.join(DEADLINE)
        assert not reader.is_alive()
        expected = sorted(index * 1000 + k for index in range(2) for k in range(40))
        assert expected == sorted(numbers_of(bytes(received).splitlines()))

    def test_forked_child_opens_the_pipe_anew(
        self, pipe: tuple[int, int], writers: Callable[..., Writer]
    ) -> None:
        """A child forked mid-line holds no lock of its parent's: its line waits too."""
        read_fd, write_fd = pipe
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, PIPE_BUF)
        ack_read, ack_write = os.pipe()
        try:
            parent = writers(write_fd, (ack_write,))
            assert 1 == parent.ask(op="submit", n=1, pad=3 * PIPE_BUF)["queue_depth"]
            child = parent.ask(op="fork_submit", n=2, pad=10, ack_fd=ack_write)["child"]
            parent.stop()
            head = drain(read_fd)
            os.kill(child, signal.SIGUSR1)  # the child submits now, the pipe empty
            ready, _, _ = select.select([ack_read], [], [], DEADLINE)
            assert ready, "the forked child never submitted its line"
            parent.resume()
            assert [1, 2] == numbers_of(read_lines(read_fd, 2, head))
            assert {"child_status": 0} == parent.ask(op="close")
        finally:
            os.close(ack_read)
            os.close(ack_write)


class TestStreamOutput:
    def test_line_given_up_at_close_is_ended(self, pipe: tuple[int, int]) -> None:
        """A line closed half-written ends with a newline: the next line starts fresh."""
        read_fd, write_fd = pipe
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, PIPE_BUF)
        output = StreamOutput(write_fd)
        assert PIPE_BUF == output.write(line(1, pad=3 * PIPE_BUF))
        assert PIPE_BUF == len(drain(read_fd))
        output.close()
        assert b"\n" == drain(read_fd)

    def test_close_returns_while_another_writer_never_finishes(self, pipe: tuple[int, int]) -> None:
        """Another open of the pipe keeps the lock: close() gives up in time, counting the loss."""
        read_fd, write_fd = pipe
        other = os.open(f"/proc/self/fd/{write_fd}", os.O_WRONLY)
        try:
            fcntl.flock(other, fcntl.LOCK_EX)  # as a process stopped in the middle of a line
            sink = make_sink(write_fd)
            assert sink.submit(line(1))
            assert 1 == sink.stats()["queue_depth"]
            assert not sink.close(0.3)
            assert {"shutdown": 1} == sink.stats()["dropped_by_reason"]
            assert b"" == drain(read_fd)
        finally:
            os.close(other)

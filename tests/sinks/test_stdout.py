"""The stdout sink: whole lines, never interleaved, never blocked by a full pipe."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
from collections.abc import Iterator

import pytest

from bridge.config import StdoutSinkSettings
from bridge.sinks.stdout import StdoutSink


def line(n: int, pad: int = 0) -> bytes:
    return json.dumps({"n": n, "pad": "y" * pad}).encode() + b"\n"


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):
            os.close(fd)


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
        fcntl.fcntl(write_fd, 1031, 4096)  # F_SETPIPE_SZ: the smallest pipe, one page
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
        fcntl.fcntl(write_fd, 1031, 4096)
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

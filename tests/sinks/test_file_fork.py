"""Forks at any moment while the file sink rotates: parent and children go on writing.

A child forked while its parent held the rotation lock (`<path>.lock`) used to keep that flock
for as long as it lived, and every later rotation, in the parent and in every child, waited
for it: a `sync` request hung, a background sink dropped its queue.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import threading
import time
import warnings
from pathlib import Path

import pytest

from bridge.sinks import rotation as rotation_module
from tests.sinks.test_file import line, make_sink

FORKS = 20
LINES = 1500


def fork_quietly() -> int:
    """os.fork(); Python 3.12+ warns when the process has threads, as here on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


class Children:
    """Forked children: each writes one line through the inherited sink, then holds."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.hold_read, self.hold_write = os.pipe()  # one byte releases one child
        self.ready_read, self.ready_write = os.pipe()  # one byte per child: wrote its line?

    def fork(self, sink: object, number: int) -> None:
        pid = fork_quietly()
        if pid == 0:  # pragma: no cover - the child
            status = 1
            try:
                child_line = json.dumps({"child": number}).encode() + b"\n"
                wrote = sink.submit(child_line) and sink.flush(10.0)  # type: ignore[attr-defined]
                os.write(self.ready_write, b"1" if wrote else b"0")
                os.read(self.hold_read, 1)  # live on, as a worker or a subprocess would
                status = 0
            finally:
                os._exit(status)
        self.pids.append(pid)

    def wrote(self, deadline: float) -> list[bytes]:
        """What each child said, as they report (a child that hung says nothing)."""
        answers: list[bytes] = []
        while len(answers) < len(self.pids):
            ready, _, _ = select.select([self.ready_read], [], [], deadline - time.monotonic())
            if not ready:
                break
            answers.extend(bytes([b]) for b in os.read(self.ready_read, len(self.pids)))
        return answers

    def release(self, deadline: float) -> list[int]:
        """Let every child exit; their exit codes (-9: stuck, killed at the deadline)."""
        os.write(self.hold_write, b"x" * len(self.pids))
        codes = []
        for pid in self.pids:
            pidfd = os.pidfd_open(pid)
            try:
                ready, _, _ = select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:  # stuck on a lock: the test fails, it does not hang
                    os.kill(pid, signal.SIGKILL)
            finally:
                os.close(pidfd)
            codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        for fd in (self.hold_read, self.hold_write, self.ready_read, self.ready_write):
            os.close(fd)
        return codes


class TestForkDuringRotation:
    @pytest.mark.parametrize("sync", [True, False], ids=["sync", "background"])
    def test_forks_at_any_moment_leave_everyone_writing(self, tmp_path: Path, sync: bool) -> None:
        """A thread forks long-lived children while another writes with frequent rotations:
        no write waits on a child, nothing is dropped, every child writes its line too."""
        path = tmp_path / "events.jsonl"
        # Many backups: nothing falls off, and each rotation renames them all, so the rotation
        # lock is held most of the time and forks land inside it.
        sink = make_sink(path, rotate_bytes=4096, backups=400, sync=sync)
        children = Children()
        written = threading.Event()

        def write() -> None:
            for n in range(LINES):
                sink.submit(line(n, pad=100))
            written.set()

        def fork() -> None:
            for number in range(FORKS):
                children.fork(sink, number)
                if written.is_set():
                    break

        writer = threading.Thread(target=write)
        forker = threading.Thread(target=fork)
        try:
            writer.start()
            forker.start()
            forker.join(60)
            hung = not written.wait(20)
            flushed = not hung and sink.flush(20)
            answers = children.wrote(time.monotonic() + 20)
        finally:
            codes = children.release(time.monotonic() + 10)  # a stuck rotation goes on
            writer.join(60)
            forker.join(60)
            sink.close(10)
        assert (False, True) == (hung, flushed), "the parent waited on a child's lock"
        assert [b"1"] * len(children.pids) == answers
        assert [0] * len(children.pids) == codes
        events = [json.loads(raw) for each in sorted(tmp_path.iterdir()) for raw in lines(each)]
        assert list(range(LINES)) == sorted(e["n"] for e in events if "n" in e)
        assert sorted(range(len(children.pids))) == sorted(
            e["child"] for e in events if "child" in e
        )
        assert ({}, LINES) == (sink.stats()["dropped_by_reason"], sink.stats()["delivered"])


def lines(path: Path) -> list[bytes]:
    """The lines of a log file or backup (the lock file has none)."""
    if path.name.endswith(".lock"):
        return []
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), f"{path.name} ends mid-line"
    return raw.splitlines()


class HeldLock:
    """`<path>.lock` held by someone else (another open of it, as another process has)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class TestRotationLock:
    def test_a_busy_lock_never_holds_up_a_sync_write(self, tmp_path: Path) -> None:
        """sync = true while another process holds the lock: the request writes and goes
        on (the file grows past rotate_bytes); rotation happens once the lock is free."""
        path = tmp_path / "events.jsonl"
        held = HeldLock(path)
        sink = make_sink(path, rotate_bytes=4096, backups=3, sync=True)
        request = threading.Thread(
            target=lambda: [sink.submit(line(n, pad=100)) for n in range(100)]
        )
        try:
            request.start()
            request.join(10)
            waited = request.is_alive()
        finally:
            held.release()  # the old code's request goes on now
            request.join(10)
        assert not waited, "the request waited for the lock"
        assert not (tmp_path / "events.jsonl.1").exists()
        for n in range(100, 110):
            sink.submit(line(n, pad=100))
        assert sink.close(5.0)
        assert (tmp_path / "events.jsonl.1").exists()
        assert {} == sink.stats()["dropped_by_reason"]

    def test_a_lock_held_for_long_is_reported(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A lock that stays busy (a stuck process) is said in stats(), not waited on."""
        monkeypatch.setattr(rotation_module, "LOCK_BUSY_REPORT_SECONDS", 0.0)
        path = tmp_path / "events.jsonl"
        held = HeldLock(path)
        try:
            sink = make_sink(path, rotate_bytes=4096, backups=3, sync=True)
            for n in range(100):
                sink.submit(line(n, pad=100))
            error = sink.stats()["last_error"]
            sink.close(5.0)
        finally:
            held.release()
        assert error is not None and "locked by another process" in error

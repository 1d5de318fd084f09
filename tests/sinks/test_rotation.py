"""SizeRotation on its own: renames and backups, never twice, a busy lock never waited for.

`test_file` and `test_file_fork` cover it through the file sink (several processes, forks).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.sinks import rotation as rotation_module
from bridge.sinks.rotation import SizeRotation
from tests.sinks.test_file_fork import HeldLock


def identity(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


class Reopens:
    """A `reopen` callback that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


@pytest.fixture
def events(tmp_path: Path) -> Iterator[Path]:
    """`events.jsonl` holding 100 bytes."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"x" * 99 + b"\n")
    yield path


def names(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.parent.iterdir()) if p.suffix != ".lock"}


class TestSizeRotation:
    def test_too_large_from_rotate_bytes_on(self, events: Path) -> None:
        """A file is too large once it reaches `rotate_bytes`; 0 never rotates."""
        fd = os.open(events, os.O_RDONLY)
        try:
            verdicts = [
                SizeRotation(events, mode=0o600, rotate_bytes=size, backups=1).too_large(fd)
                for size in (100, 101, 0)
            ]
        finally:
            os.close(fd)
        assert [True, False, False] == verdicts

    def test_rotation_shifts_the_backups_and_reopens(self, events: Path) -> None:
        """path -> path.1 -> path.2; the oldest past `backups` is replaced; then reopen."""
        events.with_name("events.jsonl.1").write_bytes(b"one\n")
        events.with_name("events.jsonl.2").write_bytes(b"two\n")
        reopen = Reopens()
        rotation = SizeRotation(events, mode=0o600, rotate_bytes=100, backups=2)
        rotation.rotate(identity(events), reopen)
        expected = {"events.jsonl.1": b"x" * 99 + b"\n", "events.jsonl.2": b"one\n"}
        assert expected == names(events)
        assert 1 == reopen.calls

    def test_no_backups_removes_the_file(self, events: Path) -> None:
        """backups = 0: the file is removed, then the path reopened."""
        reopen = Reopens()
        SizeRotation(events, mode=0o600, rotate_bytes=100, backups=0).rotate(
            identity(events), reopen
        )
        assert ({}, 1) == (names(events), reopen.calls)

    def test_a_file_rotated_already_is_not_rotated_again(self, events: Path) -> None:
        """Another process rotated first (the path names a new file): nothing is renamed."""
        found = identity(events)
        os.replace(events, events.with_name("events.jsonl.1"))
        events.write_bytes(b"y" * 200)
        reopen = Reopens()
        SizeRotation(events, mode=0o600, rotate_bytes=100, backups=3).rotate(found, reopen)
        assert {"events.jsonl": b"y" * 200, "events.jsonl.1": b"x" * 99 + b"\n"} == names(events)
        assert 0 == reopen.calls

    def test_a_busy_lock_is_not_waited_for_then_reported(
        self, events: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Another holder of the lock: no rotation, no wait; held on too long, an OSError."""
        monkeypatch.setattr(rotation_module, "LOCK_BUSY_REPORT_SECONDS", 0.0)
        held = HeldLock(events)
        reopen = Reopens()
        rotation = SizeRotation(events, mode=0o600, rotate_bytes=100, backups=1)
        try:
            rotation.rotate(identity(events), reopen)  # the first sight of it: no error yet
            with pytest.raises(OSError) as raised:
                rotation.rotate(identity(events), reopen)
        finally:
            held.release()
        assert errno.EAGAIN == raised.value.errno
        assert ({"events.jsonl": b"x" * 99 + b"\n"}, 0) == (names(events), reopen.calls)
        rotation.rotate(identity(events), reopen)  # free again: rotates
        assert ({"events.jsonl.1": b"x" * 99 + b"\n"}, 1) == (names(events), reopen.calls)

    def test_the_lock_is_released_and_closed_after_a_rotation(self, events: Path) -> None:
        """After a rotation no lock is held and no lock descriptor stays open."""
        before = set(os.listdir("/proc/self/fd"))
        SizeRotation(events, mode=0o600, rotate_bytes=100, backups=1).rotate(
            identity(events), Reopens()
        )
        assert before == set(os.listdir("/proc/self/fd"))
        fd = os.open(f"{events}.lock", os.O_WRONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if still held
        finally:
            os.close(fd)

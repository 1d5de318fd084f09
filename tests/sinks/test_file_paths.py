"""The file sink in a directory other users can reach: nothing planted there is followed.

The scenario of the issue: under umask 000 the log directory came out 0777, a local user
swapped the log file for a symlink, and the process (root) appended to a 0600 root file.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from bridge.config import FileSinkSettings
from bridge.errors import ConfigError
from bridge.sinks.file import FileSink
from tests.sinks.test_file import line, make_sink

SECRET = b"root:secret\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A private file of the process's user, somewhere else: what a planted symlink targets."""
    target = tmp_path / "private" / "shadow"
    target.parent.mkdir(mode=0o700)
    target.write_bytes(SECRET)
    target.chmod(0o600)
    return target


def numbers(path: Path) -> list[int]:
    return [json.loads(raw)["n"] for raw in path.read_bytes().splitlines()]


class TestDirectories:
    def test_created_without_group_or_world_write_under_umask_000(self, tmp_path: Path) -> None:
        """Missing directories are never group or world writable, whatever the umask."""
        old = os.umask(0)
        try:
            sink = make_sink(tmp_path / "var" / "log" / "app" / "events.jsonl")
        finally:
            os.umask(old)
        sink.close(1.0)
        modes = {
            name: stat.S_IMODE((tmp_path / name).stat().st_mode)
            for name in ("var", "var/log", "var/log/app")
        }
        assert {name: 0 for name in modes} == {name: mode & 0o022 for name, mode in modes.items()}


class TestPlantedSymlinks:
    def test_log_replaced_by_a_symlink_is_not_followed(
        self, tmp_path: Path, victim: Path, reports: list[str]
    ) -> None:
        """The log deleted and a symlink put in its place: nothing is written through it;
        the lines are dropped, counted and reported."""
        path = tmp_path / "events.jsonl"
        sink = make_sink(path)
        sink.submit(line(0))
        path.unlink()
        path.symlink_to(victim)
        for n in range(1, 4):
            sink.submit(line(n))
        flushed = sink.flush(5.0)
        sink.close(1.0)
        assert SECRET == victim.read_bytes()
        assert not flushed
        stats = sink.stats()
        assert ({"write_error": 3}, 1) == (stats["dropped_by_reason"], stats["delivered"])
        assert "symlink" in stats["last_error"]
        assert any("symlink" in message for message in reports)

    def test_renamed_log_and_a_symlink_in_its_place(self, tmp_path: Path, victim: Path) -> None:
        """The log renamed and a symlink planted: lines go on into the renamed file."""
        path = tmp_path / "events.jsonl"
        sink = make_sink(path)
        sink.submit(line(0))
        os.rename(path, tmp_path / "events.jsonl.old")
        path.symlink_to(victim)
        sink.submit(line(1))
        flushed = sink.flush(5.0)
        sink.close(1.0)
        assert SECRET == victim.read_bytes()
        assert not flushed
        assert [0, 1] == numbers(tmp_path / "events.jsonl.old")

    def test_dangling_symlink_at_start_is_refused_and_its_target_not_created(
        self, tmp_path: Path
    ) -> None:
        """A symlink at the path before start-up: a clear ConfigError, no file created."""
        path = tmp_path / "events.jsonl"
        target = tmp_path / "created-by-the-bridge"
        path.symlink_to(target)
        with pytest.raises(ConfigError, match="symlink"):
            FileSink(FileSinkSettings(type="file", name="file-0", path=path))
        assert not target.exists()

    def test_dangling_symlink_as_lock_file_creates_nothing(
        self, tmp_path: Path, reports: list[str]
    ) -> None:
        """A symlink planted at `<path>.lock`: the rotation is refused and reported, the
        symlink's target never created, and every line still written."""
        path = tmp_path / "events.jsonl"
        target = tmp_path / "created-by-the-bridge"
        (tmp_path / "events.jsonl.lock").symlink_to(target)
        sink = make_sink(path, rotate_bytes=4096, backups=2)
        for n in range(100):
            sink.submit(line(n, pad=100))
        sink.close(5.0)
        assert not target.exists()
        assert list(range(100)) == numbers(path)
        assert "symlink" in sink.stats()["last_error"]
        assert any("symlink" in message for message in reports)

    def test_symlink_planted_as_a_backup_is_replaced_not_written(
        self, tmp_path: Path, victim: Path
    ) -> None:
        """Rotation renames onto `<path>.1`: a symlink there is replaced, its target intact."""
        path = tmp_path / "events.jsonl"
        (tmp_path / "events.jsonl.1").symlink_to(victim)
        sink = make_sink(path, rotate_bytes=4096, backups=1)
        for n in range(60):
            sink.submit(line(n, pad=100))
        assert sink.close(5.0)
        assert SECRET == victim.read_bytes()
        assert not (tmp_path / "events.jsonl.1").is_symlink()
        assert list(range(60))[-len(numbers(path)) :] == numbers(path)


class TestPlantedFifo:
    def test_fifo_in_place_of_the_log_never_hangs_a_sync_write(
        self, tmp_path: Path, reports: list[str]
    ) -> None:
        """A FIFO swapped in for the log: refused at once (an open of it would wait for a
        reader forever, with the request waiting behind it)."""
        path = tmp_path / "events.jsonl"
        sink = make_sink(path, sync=True)
        sink.submit(line(0))
        path.unlink()
        os.mkfifo(path)
        request = threading.Thread(target=sink.submit, args=(line(1),))
        request.start()
        request.join(10)
        hung = request.is_alive()
        if hung:  # let the old code's open return, so that the test fails instead of hanging
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            request.join(10)
        sink.close(1.0)
        assert not hung, "the request waited on the FIFO"
        assert {"write_error": 1} == sink.stats()["dropped_by_reason"]
        assert "not a regular file" in sink.stats()["last_error"]

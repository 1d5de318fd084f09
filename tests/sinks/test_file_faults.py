"""The file sink when the disk fills up or the file is deleted under it: real files, real errors.

Every event is in the file as one valid line or counted as dropped, never glued onto half a
line, never written on unseen into a deleted file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sinks.disk_full_child import ROOM, first_line, line, restarted_later
from tests.sinks.test_file import make_sink

ROOT = Path(__file__).resolve().parents[2]


def run_child(how: str, scenario: str, path: Path) -> dict[str, Any]:
    """Runs tests/sinks/disk_full_child.py and returns what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.sinks.disk_full_child", how, scenario, str(path)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert 0 == done.returncode, done.stderr.decode(errors="replace")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (a disk that really fills up); skipped where mounting is not allowed."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mount = shutil.which("mount")
    if mount is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mounted = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def disk(how: str, tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """The log path: on a small tmpfs (`tmpfs`) or anywhere (`fsize`: a file size limit)."""
    if how == "tmpfs":
        where: Path = request.getfixturevalue("small_tmpfs")
        return where / "events.jsonl"
    return tmp_path / "events.jsonl"


@pytest.mark.parametrize("how", ["fsize", "tmpfs"])
class TestDiskFull:
    def test_a_line_cut_short_is_finished_when_room_comes_back(
        self, tmp_path: Path, how: str, request: pytest.FixtureRequest
    ) -> None:
        """Half a line written, then no room: the rest follows later, then the lines behind."""
        path = disk(how, tmp_path, request)
        result = run_child(how, "complete", path)
        stats = result["stats"]
        assert [0, 1, 2, 3] == [json.loads(raw)["n"] for raw in path.read_bytes().splitlines()]
        assert (True, 4, 4, 0) == (
            result["flushed"],
            stats["enqueued"],
            stats["delivered"],
            stats["dropped"],
        )
        assert stats["last_error"].startswith("write failed: [Errno")

    def test_a_batch_cut_short_is_finished_when_room_comes_back(
        self, tmp_path: Path, how: str, request: pytest.FixtureRequest
    ) -> None:
        """A request's lines in one write, cut inside the first: its rest follows once there
        is room, then the others, each counted once."""
        path = disk(how, tmp_path, request)
        result = run_child(how, "batch", path)
        stats = result["stats"]
        assert [0, 1, 2, 3] == [json.loads(raw)["n"] for raw in path.read_bytes().splitlines()]
        assert (3, True, 4, 4, 0) == (
            result["accepted"],
            result["flushed"],
            stats["enqueued"],
            stats["delivered"],
            stats["dropped"],
        )

    def test_a_cut_batch_owes_only_the_cut_line(
        self, tmp_path: Path, how: str, request: pytest.FixtureRequest
    ) -> None:
        """A batch cut inside its first line, the others dropped by a full queue: once that
        line is finished nothing is owed, so the file renamed next is followed at once."""
        path = disk(how, tmp_path, request)
        result = run_child(how, "batch_rotated", path)
        stats = result["stats"]
        rotated = path.with_name(path.name + ".1").read_bytes()
        assert ([0, 1], [4]) == (
            [json.loads(raw)["n"] for raw in rotated.splitlines()],
            [json.loads(raw)["n"] for raw in path.read_bytes().splitlines()],
        )
        assert (1, True, 3, 3, {"queue_overflow": 2}) == (
            result["accepted"],
            result["flushed"],
            stats["enqueued"],
            stats["delivered"],
            stats["dropped_by_reason"],
        )

    def test_a_line_left_unfinished_at_close_is_counted_and_not_continued(
        self, tmp_path: Path, how: str, request: pytest.FixtureRequest
    ) -> None:
        """Closed with half a line out: dropped and counted; a later sink starts a new line."""
        path = disk(how, tmp_path, request)
        result = run_child(how, "reopen", path)
        expected = [first_line(how), line(1)[:ROOM] + b"\n", line(2)]
        assert expected == path.read_bytes().splitlines(keepends=True)
        assert (False, 2, 1, {"write_error": 1}) == (
            result["closed"],
            result["stats"]["enqueued"],
            result["stats"]["delivered"],
            result["stats"]["dropped_by_reason"],
        )
        assert (1, 0) == (result["later"]["delivered"], result["later"]["dropped"])

    def test_deleting_the_full_log_makes_room_for_the_next_lines(
        self, tmp_path: Path, how: str, request: pytest.FixtureRequest
    ) -> None:
        """The full log deleted to make room: the sink lets the deleted file go (its pages
        with it), drops the line begun in it, counted, and writes on into a new file."""
        path = disk(how, tmp_path, request)
        result = run_child(how, "deleted", path)
        stats = result["stats"]
        assert [line(2)] == path.read_bytes().splitlines(keepends=True)
        assert (True, 3, 2, {"write_error": 1}) == (
            result["flushed"],
            stats["enqueued"],
            stats["delivered"],
            stats["dropped_by_reason"],
        )


class TestFreshLine:
    def test_a_file_ending_mid_line_gets_a_newline_before_the_first_line(
        self, tmp_path: Path
    ) -> None:
        """A file a crash left without its last newline: the sink's first line is its own."""
        path = tmp_path / "events.jsonl"
        path.write_bytes(line(0) + line(1)[:30])
        restarted_later(path)
        sink = make_sink(path)
        sink.submit(line(2))
        sink.submit(line(3))
        assert sink.close(5.0)
        assert [line(0), line(1)[:30] + b"\n", line(2), line(3)] == path.read_bytes().splitlines(
            keepends=True
        )

    def test_a_line_another_worker_was_still_writing_gets_no_blank_line(
        self, tmp_path: Path
    ) -> None:
        """The unfinished tail seen at open was a sibling's append in progress: it ends whole,
        and the sink's first line follows it without an empty line between."""
        path = tmp_path / "events.jsonl"
        path.write_bytes(line(0) + line(1)[:30])
        sink = make_sink(path)
        with path.open("ab") as sibling:  # the sibling's write() completes
            sibling.write(line(1)[30:])
        sink.submit(line(2))
        assert sink.close(5.0)
        assert [line(0), line(1), line(2)] == path.read_bytes().splitlines(keepends=True)

    def test_a_complete_file_gets_no_blank_line(self, tmp_path: Path) -> None:
        """A file ending with a newline is appended to as it is."""
        path = tmp_path / "events.jsonl"
        path.write_bytes(line(0))
        sink = make_sink(path)
        sink.submit(line(1))
        assert sink.close(5.0)
        assert line(0) + line(1) == path.read_bytes()


class TestDeletedFile:
    def test_flush_follows_a_deleted_file_at_once(self, tmp_path: Path) -> None:
        """flush() checks the path itself: a deleted file is recreated without waiting."""
        path = tmp_path / "events.jsonl"
        sink = make_sink(path, check_interval=3600.0)
        sink.submit(line(0))
        path.unlink()
        assert sink.flush(5.0)
        assert path.exists()
        sink.submit(line(1))
        assert sink.close(5.0)
        assert [1] == [json.loads(raw)["n"] for raw in path.read_bytes().splitlines()]

    def test_directory_replaced_by_a_file_drops_and_says_so(self, tmp_path: Path) -> None:
        """The log directory swapped for a file: lines are dropped and counted, not written
        into the deleted file; once the directory is back, lines land again."""
        logs = tmp_path / "logs"
        path = logs / "events.jsonl"
        sink = make_sink(path)
        sink.submit(line(0))
        assert sink.flush(5.0)
        shutil.rmtree(logs)
        logs.write_bytes(b"")
        for n in range(1, 4):
            sink.submit(line(n))
        assert not sink.flush(5.0)
        stats = sink.stats()
        assert ({"write_error": 3}, 1) == (stats["dropped_by_reason"], stats["delivered"])
        assert "Not a directory" in stats["last_error"]
        logs.unlink()
        logs.mkdir()
        sink.submit(line(4))
        assert sink.close(5.0)
        assert [4] == [json.loads(raw)["n"] for raw in path.read_bytes().splitlines()]
        assert (2, 3) == (sink.stats()["delivered"], sink.stats()["dropped"])

    def test_a_renamed_file_is_written_on_while_the_path_cannot_be_reopened(
        self, tmp_path: Path
    ) -> None:
        """The directory renamed away and a file put in its place: the old file (still
        linked) keeps the lines, and stats() tells why the path was not reopened."""
        logs = tmp_path / "logs"
        path = logs / "events.jsonl"
        sink = make_sink(path)
        sink.submit(line(0))
        os.rename(logs, tmp_path / "logs.old")
        logs.write_bytes(b"")
        sink.submit(line(1))
        assert not sink.flush(5.0)
        assert sink.stats()["last_error"].startswith("reopen failed:")
        assert (2, 0) == (sink.stats()["delivered"], sink.stats()["dropped"])
        sink.close(1.0)
        old = tmp_path / "logs.old" / "events.jsonl"
        assert [0, 1] == [json.loads(raw)["n"] for raw in old.read_bytes().splitlines()]

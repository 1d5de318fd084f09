"""The audit file sink attacked the way production treats it: full disks in the middle of a
checkpoint, files renamed, truncated, deleted or replaced by a symlink under the writer, forks
while another thread writes, workers rotating under each other, close() from a signal handler,
hostile arguments and globs. Every file left behind is read back oldest first and checked with
the stdlib oracle of `test_audit_sink` (MACs, seq, prev), and each record a `submit_many`
reported written is found, each one it reported not written accounted for by `audit.lost`."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.audit.sink import AuditSink
from bridge.config import FileSinkSettings
from tests.audit.test_audit_sink import KEY, _line, audit_app, lines_of, oracle_chains
from tests.conftest import LOGIN_SIGNAL
from tests.forks import run_in_child


@pytest.fixture(autouse=True)
def _audit_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_KEY", KEY)


def make_sink(path: Path, *, check_interval: float = 0.0, **overrides: Any) -> AuditSink:
    values: dict[str, Any] = dict(
        type="file", name="audit", path=path, audit=True, audit_key=KEY, events=("*",)
    )
    values.update(sync=True, fsync=False)
    values.update(overrides)
    return AuditSink(FileSinkSettings(**values), check_interval=check_interval)


def events_of(lines: list[bytes]) -> list[str]:
    return [json.loads(line)["event"] for line in lines]


def files_oldest_first(path: Path) -> list[Path]:
    backups = [p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()]
    return [*sorted(backups, key=lambda p: -int(p.suffix[1:])), path]


def _raise_the_limit(signum: int, frame: Any) -> None:
    """Room comes back the moment a write is refused (another process freed space)."""
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))


def _limit_file_size(size: int) -> None:
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))


class TestFullDisk:
    def test_a_cut_inside_a_batch_does_not_stop_logrotate_being_followed(
        self, tmp_path: Path
    ) -> None:
        """A request's records cut by a full disk, room back, then logrotate renames the file:
        the renamed file ends with a rotation checkpoint and the new path gets the rest."""
        path = tmp_path / "a.jsonl"

        def child() -> list[int]:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            sink = make_sink(path)
            sink.submit_many([_line("one")])
            _limit_file_size(path.stat().st_size + 40)  # inside "two", "three" not reached
            cut = sink.submit_many([_line("two"), _line("three")])
            _limit_file_size(resource.RLIM_INFINITY)
            after = sink.submit_many([_line("four")])
            os.rename(path, tmp_path / "a.jsonl-1")
            moved = sink.submit_many([_line("five")])
            sink.close(5.0)
            return [cut, after, moved]

        assert [0, 1, 1] == run_in_child(child, deadline=60.0)
        old, new = lines_of(tmp_path / "a.jsonl-1"), lines_of(path)
        [records] = oracle_chains(old + new).values()
        assert ["one", "two", "four", "audit.checkpoint"] == events_of(old)
        assert ["five", "audit.checkpoint"] == events_of(new)
        assert 1 == records[2]["audit.lost"]  # three

    def test_a_rotation_checkpoint_cut_by_a_full_disk_is_finished_before_any_record(
        self, tmp_path: Path
    ) -> None:
        """Room runs out inside a rotation checkpoint and comes back at once: the checkpoint
        is finished whole in the file it ends, and the records go to the new file."""
        path = tmp_path / "a.jsonl"

        def child() -> list[int]:
            signal.signal(signal.SIGXFSZ, _raise_the_limit)
            sink = make_sink(path, rotate_bytes=1, backups=9)  # every write rotates
            first = sink.submit_many([_line("one")])
            second = sink.submit_many([_line("two")])
            _limit_file_size(path.stat().st_size + 40)  # inside the checkpoint after "two"
            third = sink.submit_many([_line("three"), _line("four")])
            sink.close(5.0)
            return [first, second, third]

        assert [1, 1, 2] == run_in_child(child, deadline=60.0)
        files = files_oldest_first(path)
        [records] = oracle_chains(lines_of(*files)).values()
        assert ["one", "two", "three", "four"] == [
            r["event"] for r in records if r["event"] != "audit.checkpoint"
        ]
        assert not any("audit.lost" in r for r in records)
        for old in files[:-1]:
            assert "audit.checkpoint" == events_of(lines_of(old))[-1]

    def test_a_checkpoint_that_found_no_room_is_not_counted_as_a_lost_record(
        self, tmp_path: Path
    ) -> None:
        """The directory is removed under the writer, three records fail, it comes back: the
        next record says audit.lost = 3, the records reported not written, not the failed
        checkpoints (which are no events and are not missing from the chain)."""
        directory = tmp_path / "logs"
        path = directory / "a.jsonl"
        sink = make_sink(path)
        try:
            assert 1 == sink.submit_many([_line("one")])
            shutil.rmtree(directory)
            failed = [sink.submit_many([_line(f"lost-{n}")]) for n in range(3)]
            directory.mkdir()
            assert 1 == sink.submit_many([_line("back")])
            stats = sink.stats()
        finally:
            sink.close(5.0)
        assert [0, 0, 0] == failed
        first = json.loads(lines_of(path)[0])
        assert ("back", 3) == (first["event"], first["audit.lost"])
        assert ({"write_error": 3}, 2, 5) == (
            stats["dropped_by_reason"],
            stats["delivered"],  # one and back: events, as enqueued counts them
            stats["enqueued"],
        )

    def test_a_shutdown_checkpoint_cut_by_a_full_disk_is_finished_when_room_came_back(
        self, tmp_path: Path
    ) -> None:
        """Room runs out inside the shutdown checkpoint and comes back at once: the file ends
        with the whole checkpoint."""
        path = tmp_path / "a.jsonl"

        def child() -> bool:
            signal.signal(signal.SIGXFSZ, _raise_the_limit)
            sink = make_sink(path)
            sink.submit_many([_line("one")])
            _limit_file_size(path.stat().st_size + 40)
            return bool(sink.close(5.0))

        run_in_child(child, deadline=60.0)
        [records] = oracle_chains(lines_of(path)).values()
        assert ["one", "audit.checkpoint"] == [r["event"] for r in records]

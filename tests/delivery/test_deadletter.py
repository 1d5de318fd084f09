"""The dead-letter file: one record per refused event, 0600, appended; counted either way."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from bridge.delivery.deadletter import DeadLetter
from bridge.sinks.base import SinkStats
from tests.delivery.helpers import event_line


class TestDeadLetter:
    def test_one_record_per_event_with_status_response_and_time(self, tmp_path: Path) -> None:
        """Each refused event becomes one JSON line holding the original line."""
        stats = SinkStats()
        letters = DeadLetter(tmp_path / "dl" / "dead.jsonl", stats=stats, sink_name="dl-a")
        lines = [event_line(), event_line()]
        assert letters.put(lines, reason="rejected_4xx", status=400, response="no")
        records = [json.loads(x) for x in (tmp_path / "dl" / "dead.jsonl").read_text().splitlines()]
        assert [line.decode().rstrip("\n") for line in lines] == [r["line"] for r in records]
        assert {(400, "no", "rejected_4xx")} == {
            (r["status"], r["response"], r["reason"]) for r in records
        }
        assert all(r["time"].endswith("Z") for r in records)
        assert (2, {"rejected_4xx": 2}) == (stats.dead_lettered, stats.dropped_by_reason)

    def test_the_file_is_created_0600_and_appended(self, tmp_path: Path) -> None:
        """Owner-only permissions whatever the umask; later batches are appended."""
        path = tmp_path / "dead.jsonl"
        letters = DeadLetter(path, stats=SinkStats(), sink_name="dl-b")
        letters.put([event_line()], reason="rejected_4xx", status=400, response="")
        letters.put([event_line()], reason="rejected_4xx", status=404, response="")
        assert 0o600 == stat.S_IMODE(path.stat().st_mode)
        assert 2 == len(path.read_text().splitlines())

    def test_the_response_excerpt_is_bounded(self, tmp_path: Path) -> None:
        """A huge error page is cut to an excerpt."""
        path = tmp_path / "dead.jsonl"
        DeadLetter(path, stats=SinkStats(), sink_name="dl-c").put(
            [event_line()], reason="rejected_4xx", status=400, response="e" * 100_000
        )
        assert len(json.loads(path.read_text())["response"]) <= 512

    def test_without_a_path_events_are_counted_and_reported(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """No file: dropped by reason, not dead_lettered, and one stderr line."""
        stats = SinkStats()
        assert not DeadLetter(None, stats=stats, sink_name="dl-d").put(
            [event_line()], reason="rejected_4xx", status=403, response=""
        )
        assert (0, {"rejected_4xx": 1}) == (stats.dead_lettered, stats.dropped_by_reason)
        assert "1 events refused (rejected_4xx, status 403)" in capsys.readouterr().err

    def test_a_failed_write_is_counted_not_raised(self, tmp_path: Path) -> None:
        """An unwritable path (a directory) loses the events, counted, without raising."""
        stats = SinkStats()
        letters = DeadLetter(tmp_path, stats=stats, sink_name="dl-e")
        assert not letters.put([event_line()], reason="rejected_4xx", status=400, response="")
        assert (0, {"rejected_4xx": 1}) == (stats.dead_lettered, stats.dropped_by_reason)
        assert stats.last_error is not None and "dead-letter write failed" in stats.last_error

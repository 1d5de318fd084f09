"""The dead-letter file: one record per refused event, 0600, appended, never through a planted
symlink; events whose dead letter cannot be written are kept until it can."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from bridge.delivery.deadletter import DeadLetter
from bridge.outcome import PartlyDelivered
from bridge.sinks.http import HttpSink, delivery_engine
from bridge.stats import SinkStats
from tests.collector import Collector, Reply
from tests.delivery.helpers import ScriptedTransport, event_line, fast_settings, ids_of


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

    def test_a_failed_write_is_reported_not_raised_nor_counted_as_lost(
        self, tmp_path: Path
    ) -> None:
        """An unwritable path (a directory): False, the error recorded, no event counted as
        dropped (the caller keeps them)."""
        stats = SinkStats()
        letters = DeadLetter(tmp_path, stats=stats, sink_name="dl-e")
        assert not letters.put([event_line()], reason="rejected_4xx", status=400, response="")
        assert (0, {}) == (stats.dead_lettered, stats.dropped_by_reason)
        assert stats.last_error is not None and "dead-letter write failed" in stats.last_error


class TestDeadLetterFiles:
    def test_directories_are_created_without_group_or_world_write(self, tmp_path: Path) -> None:
        """Under umask 0, the missing parents are created owner-only and the file 0600."""
        path = tmp_path / "a" / "b" / "dead.jsonl"
        old = os.umask(0)
        try:
            assert DeadLetter(path, stats=SinkStats(), sink_name="dl-f").put(
                [event_line()], reason="rejected_4xx", status=400, response=""
            )
        finally:
            os.umask(old)
        modes = [stat.S_IMODE(p.stat().st_mode) for p in (path.parents[1], path.parent, path)]
        assert [0o700, 0o700, 0o600] == modes

    @pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
    def test_a_planted_symlink_is_refused_never_followed(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], dangling: bool
    ) -> None:
        """A symlink at the path: nothing written through it, its target never created; the
        refusal is reported on stderr and in last_error."""
        target = tmp_path / "victim"
        if not dangling:
            target.write_text("precious\n")
        path = tmp_path / "dead.jsonl"
        path.symlink_to(target)
        stats = SinkStats()
        letters = DeadLetter(path, stats=stats, sink_name=f"dl-g-{dangling}")
        assert not letters.put([event_line()], reason="rejected_4xx", status=400, response="")
        assert (None if dangling else "precious\n") == (
            None if not target.exists() else target.read_text()
        )
        refusal = f"{path} is a symbolic link: refused, never followed"
        assert stats.last_error is not None and refusal in stats.last_error
        assert refusal in capsys.readouterr().err

    def test_a_planted_fifo_is_refused_without_blocking(self, tmp_path: Path) -> None:
        """A FIFO at the path (nobody reading) fails at once instead of hanging the worker."""
        path = tmp_path / "dead.jsonl"
        os.mkfifo(path)
        stats = SinkStats()
        letters = DeadLetter(path, stats=stats, sink_name="dl-h")
        assert not letters.put([event_line()], reason="rejected_4xx", status=400, response="")
        assert 0 == stats.dead_lettered


class TestDeadLetterWriteFailure:
    """Refused events whose dead letter cannot be written stay pending, never deleted."""

    @pytest.mark.parametrize("spool", [True, False], ids=["spool", "memory"])
    def test_refused_events_are_kept_until_their_dead_letter_is_written(
        self, tmp_path: Path, spool: bool
    ) -> None:
        """A 400 for every request and a dead-letter path that cannot be created: the events
        stay pending; once it can be, they are written there, and only then settled."""
        blocker = tmp_path / "letters"
        blocker.write_text("")  # a file where the dead-letter directory should be
        dead = blocker / "dead.jsonl"
        with Collector() as collector:
            collector.always(Reply(400, body=b"schema error"))
            sink = HttpSink(
                fast_settings(
                    collector.url,
                    name=f"dl-keep-{spool}",
                    dead_letter_path=dead,
                    spool_dir=tmp_path / "spool" if spool else None,
                )
            )
            try:
                lines = [event_line() for _ in range(3)]
                assert all(sink.submit(line) for line in lines)
                assert not sink.flush(0.5)
                stats = sink.stats()
                assert (3, 0, 0) == (stats["queue_depth"], stats["dead_lettered"], stats["dropped"])
                assert "the dead-letter file could not be written" in stats["last_error"]
                blocker.unlink()
                assert sink.flush(20.0)
                lettered = [json.loads(x)["line"] + "\n" for x in dead.read_text().splitlines()]
                assert sorted(ids_of(lines)) == sorted(ids_of([x.encode() for x in lettered]))
                stats = sink.stats()
                assert (0, 3) == (stats["queue_depth"], stats["dead_lettered"])
            finally:
                sink.close(0.5)

    def test_items_a_2xx_reply_refuses_are_kept_too(self, tmp_path: Path) -> None:
        """An item refused inside a 2xx reply, its dead letter unwritable: the others are
        delivered once, it alone is sent again until it can be written down."""
        blocker = tmp_path / "letters"
        blocker.write_text("")
        dead = blocker / "dead.jsonl"
        settings = fast_settings(name="dl-items")
        stats = SinkStats()
        transport = ScriptedTransport(
            PartlyDelivered(reject=(1,)), *[PartlyDelivered(reject=(0,))] * 10_000
        )
        letters = DeadLetter(dead, stats=stats, sink_name=settings.name)
        engine = delivery_engine(settings, transport, stats=stats, dead_letter=letters)
        try:
            lines = [event_line() for _ in range(3)]
            assert all(engine.submit(line) for line in lines)
            assert not engine.flush(0.5)
            assert (2, 1, 0) == (stats.delivered, engine.queue_depth(), stats.dead_lettered)
            blocker.unlink()
            assert engine.flush(20.0)
            assert [json.loads(lines[1])] == [
                json.loads(json.loads(x)["line"]) for x in dead.read_text().splitlines()
            ]
            assert ids_of(lines[1:2]) == sorted(set(transport.sent_ids()[3:]))
            assert (2, 1, 0) == (stats.delivered, stats.dead_lettered, engine.queue_depth())
        finally:
            engine.close(0.5)

"""The delivery engine against a scripted transport: batching, retry, split, dead-letter,
flush and close, fork. No network here (see tests/sinks/test_http.py for the real thing)."""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.delivery.deadletter import DeadLetter
from bridge.delivery.engine import DeliveryEngine
from bridge.delivery.spool import Spool
from bridge.errors import FatalError, RetryableError
from bridge.outcome import Delivered, Outcome, PartlyDelivered
from bridge.sinks.http import delivery_engine
from bridge.stats import SinkStats
from tests.delivery.helpers import ScriptedTransport, event_line, fast_settings, ids_of

_names = itertools.count()
MakeEngine = Callable[..., tuple[DeliveryEngine, ScriptedTransport, SinkStats]]


@pytest.fixture
def make_engine(tmp_path: Path) -> Iterator[MakeEngine]:
    """Factory: `make_engine(*script, spool=False, dead_letter=True, **settings)`."""
    made: list[DeliveryEngine] = []

    def make(
        *script: Outcome | Exception,
        spool: bool = False,
        dead_letter: bool = True,
        **overrides: Any,
    ) -> tuple[DeliveryEngine, ScriptedTransport, SinkStats]:
        name = f"engine-{next(_names)}"
        settings = fast_settings(
            name=name, spool_dir=tmp_path / "spool" if spool else None, **overrides
        )
        stats = SinkStats()
        transport = ScriptedTransport(*script)
        spool_obj = None
        if spool:
            spool_obj = Spool(
                tmp_path / "spool",
                max_bytes=1 << 24,
                fsync="never",
                event_ttl=settings.event_ttl,
                stats=stats,
            )
        letters = DeadLetter(
            tmp_path / "dead.jsonl" if dead_letter else None, stats=stats, sink_name=name
        )
        engine = delivery_engine(
            settings, transport, stats=stats, dead_letter=letters, spool=spool_obj
        )
        made.append(engine)
        return engine, transport, stats

    yield make
    for engine in made:
        engine.close(0.5)  # tests that need delivery flush first; the rest must not stall


def submit_all(engine: DeliveryEngine, count: int, **fields: Any) -> list[bytes]:
    lines = [event_line(**fields) for _ in range(count)]
    for line in lines:
        assert engine.submit(line)
    return lines


def dead_letters(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "dead.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class TestBatching:
    def test_lines_go_out_in_batches_of_batch_max_events(self, make_engine: MakeEngine) -> None:
        """1200 lines with batch_max_events=500 go out as 500, 500, 200, in order."""
        engine, transport, stats = make_engine(batch_max_events=500, batch_timeout=60.0)
        lines = submit_all(engine, 1200)
        assert engine.flush(10.0)
        assert [500, 500, 200] == transport.batch_sizes()
        assert ids_of(lines) == transport.sent_ids()
        assert 1200 == stats.delivered

    def test_batches_are_bounded_in_bytes(self, make_engine: MakeEngine) -> None:
        """batch_max_bytes splits a run of lines into requests no larger than it."""
        line_size = len(event_line(padding="x" * 1000))
        engine, transport, _ = make_engine(batch_max_bytes=line_size * 3, batch_timeout=60.0)
        submit_all(engine, 10, padding="x" * 1000)
        assert engine.flush(10.0)
        assert all(size <= 3 for size in transport.batch_sizes())
        assert 10 == sum(transport.batch_sizes())

    def test_a_partial_batch_is_sent_after_batch_timeout(self, make_engine: MakeEngine) -> None:
        """Without flush, a lone line still goes out once batch_timeout has passed."""
        engine, transport, _ = make_engine(batch_timeout=0.01)
        lines = submit_all(engine, 1)
        assert transport.wait_for_calls(1)
        assert ids_of(lines) == transport.sent_ids()

    def test_no_worker_thread_before_the_first_submit(self, make_engine: MakeEngine) -> None:
        """The worker starts lazily, in the process that emits."""
        engine, _, _ = make_engine()
        assert not any(t.name == f"bridge-http-{engine.name}" for t in threading.enumerate())
        submit_all(engine, 1)
        assert any(t.name == f"bridge-http-{engine.name}" for t in threading.enumerate())


class TestRetries:
    def test_retryable_failures_are_retried_until_delivered(self, make_engine: MakeEngine) -> None:
        """Two 503s, then success: every line arrives once, retried is counted per event."""
        engine, transport, stats = make_engine(
            RetryableError("HTTP 503", status=503), RetryableError("timed out")
        )
        lines = submit_all(engine, 10)
        assert engine.flush(10.0)
        assert [10, 10, 10] == transport.batch_sizes()
        assert ids_of(lines) == transport.sent_ids()[-10:]
        assert (10, 20) == (stats.delivered, stats.retried)
        assert stats.last_error is not None and "timed out" in stats.last_error

    def test_without_a_spool_retries_stop_after_retry_max_duration(
        self, make_engine: MakeEngine
    ) -> None:
        """retry_max_duration=0: the first failure exhausts; the batch is dropped, counted."""
        engine, transport, stats = make_engine(RetryableError("down"), retry_max_duration=0.0)
        submit_all(engine, 7)
        assert not engine.flush(10.0)  # lost events: flush says so
        assert 1 == len(transport.calls)
        assert {"retry_exhausted": 7} == stats.dropped_by_reason

    def test_with_a_spool_retries_go_on(self, make_engine: MakeEngine) -> None:
        """With a spool the batch is released to the spool and read again until delivered."""
        failures = [RetryableError("down") for _ in range(5)]
        engine, transport, stats = make_engine(*failures, spool=True, retry_max_duration=0.0)
        lines = submit_all(engine, 20)
        assert engine.flush(10.0)
        assert ids_of(lines) == transport.sent_ids()[-20:]
        assert 6 == len(transport.calls)
        assert {} == stats.dropped_by_reason


class TestRefusals:
    def test_a_4xx_batch_is_dead_lettered_and_never_retried(
        self, make_engine: MakeEngine, tmp_path: Path
    ) -> None:
        """400: one attempt, every event in the dead-letter file, counted both ways."""
        engine, transport, stats = make_engine(FatalError("HTTP 400", status=400, body="bad"))
        lines = submit_all(engine, 5)
        assert engine.flush(10.0)
        assert 1 == len(transport.calls)
        letters = dead_letters(tmp_path)
        assert ids_of(lines) == [json.loads(r["line"])["event_id"] for r in letters]
        assert {400} == {r["status"] for r in letters}
        assert {"bad"} == {r["response"] for r in letters}
        assert (5, {"rejected_4xx": 5}) == (stats.dead_lettered, stats.dropped_by_reason)

    def test_413_splits_the_batch_and_sends_the_halves(self, make_engine: MakeEngine) -> None:
        """413 on 8 lines: halves of 4 go out next, in order; nothing is lost."""
        engine, transport, stats = make_engine(FatalError("HTTP 413", status=413))
        lines = submit_all(engine, 8)
        assert engine.flush(10.0)
        assert [8, 4, 4] == transport.batch_sizes()
        assert ids_of(lines) == transport.sent_ids()[8:]
        assert 8 == stats.delivered

    def test_a_single_event_too_large_is_dead_lettered(
        self, make_engine: MakeEngine, tmp_path: Path
    ) -> None:
        """413 down to one event: that event goes to the dead-letter file as too_large."""
        too_large = FatalError("HTTP 413", status=413)
        engine, transport, stats = make_engine(too_large, too_large)
        lines = submit_all(engine, 2)
        assert engine.flush(10.0)
        assert [2, 1, 1] == transport.batch_sizes()
        assert [ids_of(lines)[0]] == [
            json.loads(r["line"])["event_id"] for r in dead_letters(tmp_path)
        ]
        assert (1, 1) == (stats.delivered, stats.dropped_by_reason["too_large"])

    def test_without_a_dead_letter_path_refusals_are_counted_and_reported(
        self, make_engine: MakeEngine, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """No dead-letter file: counted as dropped rejected_4xx, one line on stderr."""
        engine, _, stats = make_engine(FatalError("HTTP 422", status=422), dead_letter=False)
        submit_all(engine, 3)
        assert not engine.flush(10.0)
        assert ({"rejected_4xx": 3}, 0) == (stats.dropped_by_reason, stats.dead_lettered)
        assert "3 events refused (rejected_4xx, status 422)" in capsys.readouterr().err

    def test_a_bug_while_sending_dead_letters_instead_of_losing(
        self, make_engine: MakeEngine, tmp_path: Path
    ) -> None:
        """An unexpected exception from the transport: the batch is kept in the dead letters."""
        engine, _, stats = make_engine(ZeroDivisionError("boom"))
        lines = submit_all(engine, 2)
        assert engine.flush(10.0)
        records = dead_letters(tmp_path)
        assert ids_of(lines) == [json.loads(r["line"])["event_id"] for r in records]
        assert {"internal_error": 2} == stats.dropped_by_reason
        assert stats.last_error is not None and "ZeroDivisionError" in stats.last_error

    def test_item_failures_retry_some_and_dead_letter_others(
        self, make_engine: MakeEngine, tmp_path: Path
    ) -> None:
        """A 2xx reply naming failed items: rejected ones dead-lettered, retried ones resent."""
        engine, transport, stats = make_engine(
            PartlyDelivered(retry=(1, 3), reject=(2,), status=200, detail="mapping error")
        )
        lines = submit_all(engine, 5)
        assert engine.flush(10.0)
        assert [5, 2] == transport.batch_sizes()
        assert [ids_of(lines)[1], ids_of(lines)[3]] == transport.sent_ids()[5:]
        letters = dead_letters(tmp_path)
        assert [(ids_of(lines)[2], "mapping error")] == [
            (json.loads(r["line"])["event_id"], r["response"]) for r in letters
        ]
        assert (4, 1, 2) == (stats.delivered, stats.dead_lettered, stats.retried)


class TestSpoolDelivery:
    def test_413_with_a_spool_splits_and_acknowledges_every_record(
        self, make_engine: MakeEngine
    ) -> None:
        """Split halves keep their spool records: once delivered, the spool is empty."""
        engine, transport, stats = make_engine(FatalError("HTTP 413", status=413), spool=True)
        lines = submit_all(engine, 6)
        assert engine.flush(10.0)
        assert [6, 3, 3] == transport.batch_sizes()
        assert ids_of(lines) == transport.sent_ids()[6:]
        assert (0, 6) == (engine.queue_depth(), stats.delivered)

    def test_with_a_spool_retries_last_until_event_ttl(self, make_engine: MakeEngine) -> None:
        """A collector that never answers: the spool drops the events at event_ttl, counted."""
        failures = [RetryableError("down") for _ in range(100_000)]
        engine, transport, stats = make_engine(*failures, spool=True, event_ttl=0.3)
        submit_all(engine, 5)
        assert not engine.flush(30.0)  # settled, but lost: flush says so
        assert len(transport.calls) > 1
        assert {"ttl_expired": 5} == stats.dropped_by_reason
        assert 0 == engine.queue_depth()


class TestFlushAndClose:
    def test_flush_times_out_while_the_collector_fails(self, make_engine: MakeEngine) -> None:
        """flush returns False at its deadline when nothing can be delivered."""
        engine, _, _ = make_engine(*[RetryableError("down") for _ in range(10_000)])
        submit_all(engine, 3)
        assert not engine.flush(0.2)

    def test_close_without_a_spool_counts_leftovers_as_shutdown(
        self, make_engine: MakeEngine, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """What close cannot deliver in time is dropped "shutdown", with one stderr line."""
        engine, _, stats = make_engine(
            *[RetryableError("down") for _ in range(10_000)], retry_max_backoff=10.0
        )
        submit_all(engine, 4)
        assert not engine.close(0.2)
        assert 4 == stats.dropped_by_reason["shutdown"]
        err = capsys.readouterr().err
        assert 1 == err.count("not delivered at shutdown")

    def test_close_with_a_spool_leaves_leftovers_on_disk(
        self, make_engine: MakeEngine, tmp_path: Path
    ) -> None:
        """With a spool, close keeps what it could not send; a new spool finds it."""
        engine, _, stats = make_engine(
            *[RetryableError("down") for _ in range(10_000)], spool=True, retry_max_backoff=10.0
        )
        submit_all(engine, 4)
        assert not engine.close(0.2)
        assert "shutdown" not in stats.dropped_by_reason
        again = Spool(
            tmp_path / "spool",
            max_bytes=1 << 24,
            fsync="never",
            event_ttl=3600.0,
            stats=SinkStats(),
        )
        try:
            assert 4 == again.pending_events()
        finally:
            again.close()

    def test_close_is_idempotent_and_refuses_later_lines(self, make_engine: MakeEngine) -> None:
        """A second close returns the first result; submit after close is refused, counted."""
        engine, transport, stats = make_engine()
        submit_all(engine, 3)
        assert engine.close(5.0)
        assert engine.close(5.0)
        assert transport.closed
        assert not engine.submit(event_line())
        assert {"closed": 1} == stats.dropped_by_reason

    def test_close_stops_the_worker_thread(self, make_engine: MakeEngine) -> None:
        """No bridge thread survives close()."""
        engine, _, _ = make_engine()
        submit_all(engine, 3)
        engine.close(5.0)
        assert not any(t.name == f"bridge-http-{engine.name}" for t in threading.enumerate())

    def test_flush_with_nothing_submitted_is_immediate(self, make_engine: MakeEngine) -> None:
        """Nothing accepted: flush(0) is already True."""
        engine, _, _ = make_engine()
        assert engine.flush(0.0)


class TestFork:
    def test_a_forked_child_starts_empty_and_delivers_its_own_lines(
        self, make_engine: MakeEngine
    ) -> None:
        """After fork the child has a fresh queue and thread; the parent's lines stay its own."""
        engine, transport, _ = make_engine(
            *[RetryableError("down") for _ in range(10_000)], retry_max_backoff=10.0
        )
        parent_lines = submit_all(engine, 3)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report over the pipe, never return into pytest
            code = 1
            try:
                before = engine.queue_depth()
                transport.clear_script()  # the child's collector is up
                engine.submit(event_line())
                ok = engine.flush(10.0)
                sent = len(transport.calls)
                message = json.dumps([before, ok, transport.forked, sent]).encode()
                os.write(write_end, message)
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            report = json.loads(pipe.read())
        _, status = os.waitpid(pid, 0)
        assert 0 == os.waitstatus_to_exitcode(status)
        before, ok, forked, sent_in_child = report
        assert (0, True, 1) == (before, ok, forked)
        assert sent_in_child >= 1
        assert 3 == engine.queue_depth() == len(parent_lines)


class TestUnnamedRejections:
    def test_lines_refused_without_names_are_counted_not_retried(
        self, make_engine: MakeEngine
    ) -> None:
        """A 2xx that refuses some lines without naming them (OTLP partialSuccess): counted
        `rejected_by_collector`, the rest delivered, nothing resent or dead-lettered."""
        engine, transport, stats = make_engine(Delivered(rejected=2, detail="2 bad records"))
        submit_all(engine, 5)
        assert not engine.flush(10.0)  # two accepted lines were lost: flush says so
        assert [5] == transport.batch_sizes()
        assert (3, {"rejected_by_collector": 2}, 0) == (
            stats.delivered,
            stats.dropped_by_reason,
            stats.dead_lettered,
        )
        assert stats.last_error is not None and "2 bad records" in stats.last_error

    def test_a_collector_claiming_more_refusals_than_lines_counts_only_the_batch(
        self, make_engine: MakeEngine
    ) -> None:
        """A reply saying 9 of a 3-line batch were refused: 3 counted, never a negative."""
        engine, _, stats = make_engine(Delivered(rejected=9, detail="odd"))
        submit_all(engine, 3)
        assert not engine.flush(10.0)
        assert (0, {"rejected_by_collector": 3}) == (stats.delivered, stats.dropped_by_reason)

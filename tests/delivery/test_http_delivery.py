"""The http sink against a real collector on 127.0.0.1: failures of every kind, a collector
that is down, a process killed with SIGKILL, and what `submit` costs the request thread."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bridge.sinks.http import HttpSink
from tests.collector import Collector, Reply
from tests.conftest import MakeSink
from tests.delivery.helpers import event_line, ids_of

REPO = Path(__file__).resolve().parents[2]
_names = itertools.count()


def submit_all(sink: HttpSink, count: int, **fields: Any) -> list[str]:
    lines = [event_line(**fields) for _ in range(count)]
    accepted = [line for line in lines if sink.submit(line)]
    assert len(lines) == len(accepted)
    return ids_of(lines)


class TestDeliveryThroughFailures:
    @pytest.mark.parametrize(
        ("fmt", "use_gzip"), [("ndjson", True), ("json_array", False)], ids=["ndjson-gzip", "json"]
    )
    def test_every_event_arrives_through_every_kind_of_failure(
        self, collector: Collector, make_sink: MakeSink, fmt: str, use_gzip: bool
    ) -> None:
        """500, 502, 503 and 429 with Retry-After, 413, a reset and a stalled reply: all arrive."""
        collector.plan(
            Reply(500),
            Reply(503, headers={"Retry-After": "0"}),
            Reply(429, headers={"Retry-After": "0"}),
            Reply(413),
            Reply(reset=True),
            Reply(stall=30.0, record=False),
            Reply(502),
        )
        sink = make_sink(
            collector.url, batch_max_events=200, timeout_read=0.5, format=fmt, gzip=use_gzip
        )
        ids = submit_all(sink, 2000)
        assert sink.flush(30.0)
        received = collector.event_ids()
        assert sorted(ids) == sorted(received)  # every event, none twice
        statuses = [r.reply.status for r in collector.requests() if not r.reply.reset]
        assert {500, 503, 429, 413, 502} <= set(statuses)
        stats = sink.stats()
        assert (2000, 0) == (stats["delivered"], stats["dropped"])
        assert stats["retried"] >= 5 * 100

    def test_a_refused_batch_is_dead_lettered_and_never_retried(
        self, collector: Collector, make_sink: MakeSink, tmp_path: Path
    ) -> None:
        """A 400 batch goes to the dead-letter file; the collector never sees it twice."""
        collector.plan(Reply(200), Reply(400, body=b"schema error"))
        dead = tmp_path / "dead.jsonl"
        sink = make_sink(
            collector.url, batch_max_events=5, batch_timeout=60.0, dead_letter_path=dead
        )
        ids = submit_all(sink, 15)
        assert sink.flush(30.0)
        seen = Counter(e["event_id"] for r in collector.requests() for e in r.events)
        assert {1} == set(seen.values())  # nothing sent twice, refused batch included
        refused = [e["event_id"] for e in collector.requests()[1].events]
        lettered = [line for line in dead.read_text().splitlines()]
        assert 5 == len(refused) == len(lettered)
        assert sorted(set(ids) - set(refused)) == sorted(collector.event_ids())
        assert (10, 5) == (sink.stats()["delivered"], sink.stats()["dead_lettered"])


class TestCollectorDown:
    def test_memory_stays_bounded_then_everything_accepted_arrives(
        self, make_sink: MakeSink
    ) -> None:
        """Down: the queue never exceeds its bounds, overflow is counted; up: the rest arrives."""
        with Collector(start_down=True) as collector:
            sink = make_sink(collector.url, queue_max_events=300, batch_max_events=100)
            depths = []
            accepted: list[bytes] = []
            for _ in range(5000):
                line = event_line()
                if sink.submit(line):
                    accepted.append(line)
                depths.append(sink.stats()["queue_depth"])
            stats = sink.stats()
            assert max(depths) <= 300 + 100
            assert 5000 - len(accepted) == stats["dropped_by_reason"]["queue_overflow"]
            collector.up()
            assert sink.flush(30.0)
            assert sorted(ids_of(accepted)) == sorted(collector.event_ids())

    def test_with_a_spool_nothing_is_dropped_while_down(
        self, make_sink: MakeSink, tmp_path: Path
    ) -> None:
        """A spool holds every event while the collector is down and delivers it when up."""
        with Collector(start_down=True) as collector:
            sink = make_sink(collector.url, spool_dir=tmp_path / "spool", batch_max_events=250)
            ids = submit_all(sink, 3000)
            assert not sink.flush(0.2)
            assert 3000 == sink.stats()["queue_depth"]
            collector.up()
            assert sink.flush(30.0)
            assert sorted(ids) == sorted(set(collector.event_ids()))
            assert 0 == sink.stats()["spool_bytes"]


class TestRequestThreadCost:
    """The request thread's own work per submit, never wall time: it must not depend on the
    collector being up or down, and must never reach the network."""

    @pytest.fixture(params=["memory", "spool"])
    def mode(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    def sink_for(self, make_sink: MakeSink, url: str, mode: str, tmp_path: Path) -> HttpSink:
        spool = tmp_path / f"spool-{next(_names)}" if mode == "spool" else None
        return make_sink(url, spool_dir=spool, batch_max_events=100, spool_fsync="never")

    def test_submit_never_connects_from_the_calling_thread(
        self, make_sink: MakeSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
    ) -> None:
        """Collector down: connect() is called by the worker, never by the submitting thread."""
        callers: list[int] = []
        real_connect = socket.socket.connect

        def connect(sock: socket.socket, address: Any) -> None:
            callers.append(threading.get_ident())
            real_connect(sock, address)

        monkeypatch.setattr(socket.socket, "connect", connect)
        with Collector(start_down=True) as collector:
            sink = self.sink_for(make_sink, collector.url, mode, tmp_path)
            for _ in range(2000):
                sink.submit(event_line())
            assert not sink.flush(0.3)  # the worker tried, and failed, meanwhile
        assert callers, "the worker should have tried to connect"
        assert threading.get_ident() not in callers

    def test_submit_does_the_same_work_with_the_collector_up_or_down(
        self, make_sink: MakeSink, tmp_path: Path, mode: str
    ) -> None:
        """Python-level calls per submit (a profile of this thread only) match up and down."""

        def calls_per_submit(url: str) -> list[int]:
            sink = self.sink_for(make_sink, url, mode, tmp_path)
            sink.submit(event_line())  # the first one starts the worker
            lines = [event_line() for _ in range(3000)]
            counts = []
            counter = [0]

            def profile(frame: Any, event: str, arg: Any) -> None:
                if event in ("call", "c_call"):
                    counter[0] += 1

            for line in lines:
                counter[0] = 0
                sys.setprofile(profile)
                sink.submit(line)
                sys.setprofile(None)
                counts.append(counter[0])
            return counts

        with Collector() as up:
            up_counts = calls_per_submit(up.url)
        with Collector(start_down=True) as down:
            down_counts = calls_per_submit(down.url)
        assert statistics.median(up_counts) == statistics.median(down_counts)
        assert max(down_counts) <= max(up_counts)


class TestCrashRecovery:
    def child(self, spool: Path, url: str, mode: str, count: int = 0) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        script = Path(__file__).with_name("http_crash_child.py")
        return subprocess.Popen(
            [sys.executable, str(script), str(spool), url, mode, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def kill(self, child: subprocess.Popen[bytes]) -> None:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        assert -signal.SIGKILL == child.returncode
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()

    def test_sigkill_mid_stream_loses_nothing(self, tmp_path: Path, make_sink: MakeSink) -> None:
        """Killed while emitting with the collector down; the next process delivers them all."""
        spool = tmp_path / "spool"
        with Collector(start_down=True) as collector:
            child = self.child(spool, collector.url, "stream")
            assert child.stdout is not None
            accepted = []
            for raw in child.stdout:
                accepted.append(f"crash-{int(raw)}")
                if len(accepted) == 3000:
                    break
            self.kill(child)
            collector.up()
            sink = make_sink(collector.url, spool_dir=spool, batch_max_events=100)
            assert sink.flush(30.0)
            received = collector.event_ids()
            assert set(accepted) <= set(received)
            duplicates = len(received) - len(set(received))
            assert duplicates < 100  # fewer than one batch
            assert 0 == sink.stats()["spool_bytes"]

    def test_sigkill_during_a_send_loses_nothing(self, tmp_path: Path, make_sink: MakeSink) -> None:
        """Killed with a request in flight: every event arrives; only sent ones come twice."""
        spool = tmp_path / "spool"
        with Collector() as collector:
            collector.plan(Reply(200), Reply(stall=60.0, record=True))
            child = self.child(spool, collector.url, "batch", 1000)
            assert child.stdout is not None
            assert b"done\n" == child.stdout.readline()
            assert collector.wait_for(lambda c: len(c.requests()) >= 2)
            self.kill(child)
            sent_before = set(collector.event_ids())
            sink = make_sink(collector.url, spool_dir=spool, batch_max_events=100)
            assert sink.flush(30.0)
            received = collector.event_ids()
            assert {f"crash-{i}" for i in range(1000)} == set(received)
            # Replayed are only events the dead process had sent (acks live in its memory).
            duplicates = {i for i, n in Counter(received).items() if n > 1}
            assert duplicates <= sent_before
            assert 0 == sink.stats()["spool_bytes"]

"""A process killed with SIGKILL while a batch is in flight: the next process on the same spool
delivers every event, and replays only that one batch (the spool saves acknowledgements)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bridge.sinks.http import HttpSink
from tests.collector import Collector, Reply
from tests.delivery.helpers import fast_settings

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("http_crash_child.py")
EVENTS = 2000  # per round; the child sends batches of 100
BATCH = 100
ROUNDS = 5


def start_child(spool: Path, url: str) -> subprocess.Popen[bytes]:
    """The dying process: submits EVENTS events, says "done", delivers until killed."""
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(spool), url, "batch", str(EVENTS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def kill(child: subprocess.Popen[bytes]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    for stream in (child.stdin, child.stdout):
        if stream is not None:
            stream.close()
    assert -signal.SIGKILL == child.returncode


def in_flight_round(tmp_path: Path, delivered_first: int, recorded: bool) -> tuple[int, set[str]]:
    """One round: the child's request number `delivered_first + 1` stalls (the collector
    keeps it, or not), the child is killed meanwhile, a new sink adopts the spool.
    Returns (duplicates, ids of the stalled request)."""
    spool = tmp_path / f"spool-{delivered_first}-{recorded}"
    with Collector() as collector:
        collector.plan(*[Reply(200)] * delivered_first, Reply(stall=60.0, record=recorded))
        child = start_child(spool, collector.url)
        try:
            assert child.stdout is not None
            assert b"done\n" == child.stdout.readline()
            assert collector.wait_for(lambda c: len(c.requests()) > delivered_first)
        finally:
            kill(child)
        stalled = {str(e["event_id"]) for e in collector.requests()[delivered_first].events}
        sink = HttpSink(fast_settings(collector.url, spool_dir=spool, batch_max_events=500))
        try:
            assert sink.flush(30.0)
            assert 0 == sink.stats()["spool_bytes"]
        finally:
            sink.close(5.0)
        received = collector.event_ids()
    assert {f"crash-{i}" for i in range(EVENTS)} == set(received)
    counts = Counter(received)
    twice = {event for event, n in counts.items() if n > 1}
    assert (stalled if recorded else set()) == twice
    assert all(2 == counts[event] for event in twice)  # nothing came three times
    return len(received) - len(counts), stalled


class TestKilledWithABatchInFlight:
    def test_every_event_arrives_and_only_the_batch_in_flight_comes_twice(
        self, tmp_path: Path
    ) -> None:
        """Killed while a request waits for its answer, at a different point each round: all
        events arrive; a batch the collector kept comes twice, nothing delivered before it."""
        rng = random.Random(3)
        for round_number in range(ROUNDS):
            delivered_first = rng.randint(2, EVENTS // BATCH - 2)
            recorded = round_number % 2 == 1
            duplicates, stalled = in_flight_round(tmp_path, delivered_first, recorded)
            assert len(stalled) <= BATCH
            assert (len(stalled) if recorded else 0) == duplicates
            assert duplicates <= BATCH  # never more than the one batch in flight

    def test_killed_at_any_moment_only_the_last_request_comes_twice(self, tmp_path: Path) -> None:
        """Killed wherever it happens to be (sending, acknowledging, reading): all events
        arrive, and only events of the last request the dead process made come twice."""
        rng = random.Random(5)
        for round_number in range(ROUNDS):
            spool = tmp_path / f"spool-{round_number}"
            with Collector() as collector:
                child = start_child(spool, collector.url)
                try:
                    assert child.stdout is not None
                    assert b"done\n" == child.stdout.readline()
                    sent = rng.randint(1, EVENTS // BATCH - 2)
                    assert collector.wait_for(lambda c, n=sent: len(c.requests()) >= n)
                finally:
                    kill(child)
                headers = {"X-Process": "adopter"}
                sink = HttpSink(fast_settings(collector.url, spool_dir=spool, headers=headers))
                try:
                    assert sink.flush(30.0)
                finally:
                    sink.close(5.0)
                received = collector.event_ids()
                dead = [r for r in collector.requests() if "x-process" not in r.headers]
                last = {str(e["event_id"]) for e in dead[-1].events}
            assert {f"crash-{i}" for i in range(EVENTS)} == set(received)
            counts = Counter(received)
            twice = {event for event, n in counts.items() if n > 1}
            assert twice <= last
            assert len(received) - len(counts) <= BATCH

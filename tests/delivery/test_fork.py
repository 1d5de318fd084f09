"""The delivery engine across fork() at awkward moments, against a real collector.

gunicorn forks workers from a master that may have emitted already. Whatever the parent was
doing at the fork (a send in flight, a request thread inside `submit` holding the feed's lock,
a flush waiting), a child must be able to submit, flush to the collector and close within a
deadline, and the parent's events must arrive exactly once, sent by the parent. Every child
is guarded: it reports over a pipe, and one that does not within `CHILD_DEADLINE` is killed.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bridge.sinks.http import HttpSink
from tests.collector import Collector, Reply
from tests.conftest import MakeSink
from tests.delivery.helpers import event_line, ids_of
from tests.forks import run_in_child

CHILD_DEADLINE = 30.0  # the child's whole life: submit, flush, close
HOLD = 1.5  # how long the collector holds the parent's request (the fork happens inside it)

pytestmark = pytest.mark.slow


def run_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """Fork; the child runs `work` and reports; None when it hung (and was killed)."""
    result: dict[str, Any] | None = run_in_child(work, deadline=CHILD_DEADLINE)
    return result


def child_delivers(sink: HttpSink, count: int) -> Callable[[], dict[str, Any]]:
    """What the child does: submit `count` lines of its own, flush them, close."""

    def work() -> dict[str, Any]:
        depth_at_start = sink.stats()["queue_depth"]
        lines = [event_line(origin="child") for _ in range(count)]
        accepted = sum(sink.submit(line) for line in lines)
        flushed = sink.flush(10.0)
        delivered = sink.stats()["delivered"]
        closed = sink.close(5.0)
        return {
            "depth_at_start": depth_at_start,
            "accepted": accepted,
            "flushed": flushed,
            "delivered": delivered,
            "closed": closed,
            "ids": ids_of(lines),
        }

    return work


@contextmanager
def feed_lock_held(sink: HttpSink) -> Iterator[None]:
    """Another thread inside `submit`, holding the feed's lock, for the duration."""
    feed = sink._engine._feed
    inside, leave = threading.Event(), threading.Event()

    def request_thread() -> None:
        with feed.lock:  # where `put` is while it queues or appends a line
            inside.set()
            leave.wait(CHILD_DEADLINE)

    thread = threading.Thread(target=request_thread)
    thread.start()
    try:
        assert inside.wait(10.0)
        yield
    finally:
        leave.set()
        thread.join(10.0)


def in_flight(collector: Collector) -> bool:
    """The collector is holding a request it has not answered yet."""
    return any(not r.done for r in collector.requests())


def flush_started(sink: HttpSink, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """An event set once a flush has registered its target (it waits for the worker next)."""
    feed = sink._engine._feed
    begin = feed.begin_flush
    started = threading.Event()

    def begin_flush() -> int:
        target = begin()
        started.set()
        return target

    monkeypatch.setattr(feed, "begin_flush", begin_flush)
    return started


@pytest.fixture(params=[False, True], ids=["memory", "spool"])
def sink(
    request: pytest.FixtureRequest, make_sink: MakeSink, collector: Collector, tmp_path: Path
) -> HttpSink:
    spool_dir = tmp_path / "spool" if request.param else None
    return make_sink(collector.url, timeout_read=10.0, spool_dir=spool_dir)


def assert_child_delivered(child: dict[str, Any], count: int) -> None:
    """The child started with an empty queue, took its `count` lines, flushed and closed."""
    assert (0, count, True, True) == (
        child["depth_at_start"],
        child["accepted"],
        child["flushed"],
        child["closed"],
    )


def assert_each_once(collector: Collector, parent_ids: list[str], child: dict[str, Any]) -> None:
    """The parent's and the child's events arrived, each exactly once; the child sent only its
    own (so the parent's came from the parent)."""
    counts = Counter(collector.event_ids())
    assert {i: 1 for i in parent_ids + child["ids"]} == dict(counts)
    assert len(child["ids"]) == child["delivered"]


class TestForkMidSend:
    def test_a_child_forked_while_the_worker_waits_for_a_reply_delivers_its_own(
        self, sink: HttpSink, collector: Collector
    ) -> None:
        """Forked while the collector holds the parent's request: the child starts empty,
        delivers its own lines and closes; the parent's batch arrives once, from the parent."""
        collector.plan(Reply(stall=HOLD))
        parent_ids = submit_parent_lines(sink, 5)  # sent after batch_timeout (50 ms)
        assert collector.wait_for(lambda c: len(c.received) >= 1)
        assert in_flight(collector)
        child = run_child(child_delivers(sink, 3))
        assert child is not None, "the child hung and was killed"
        assert_child_delivered(child, 3)
        assert sink.flush(20.0)
        assert_each_once(collector, parent_ids, child)


class TestForkInsideSubmit:
    def test_a_child_forked_while_a_request_thread_holds_the_feed_lock_can_submit(
        self, sink: HttpSink, collector: Collector
    ) -> None:
        """Forked while another thread is inside `submit` holding the feed's lock: the lock is
        the parent's; the child's feed has its own, so its submit, flush and close finish."""
        parent_ids = submit_parent_lines(sink, 4)
        with feed_lock_held(sink):
            child = run_child(child_delivers(sink, 3))
        assert child is not None, "the child hung (the parent's feed lock?) and was killed"
        assert_child_delivered(child, 3)
        assert sink.flush(20.0)
        assert_each_once(collector, parent_ids, child)


class TestForkDuringFlush:
    def test_a_child_forked_while_a_flush_waits_flushes_its_own_lines(
        self, sink: HttpSink, collector: Collector, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Forked while a parent thread waits in `flush` (and the collector holds the request):
        the child's flush waits for its own lines only; the parent's flush still returns True."""
        collector.plan(Reply(stall=HOLD))
        parent_ids = submit_parent_lines(sink, 4)
        started = flush_started(sink, monkeypatch)
        flushed: list[bool] = []
        flusher = threading.Thread(target=lambda: flushed.append(sink.flush(20.0)))
        flusher.start()
        try:
            assert collector.wait_for(lambda c: len(c.received) >= 1)
            assert started.wait(10.0)
            assert in_flight(collector)
            child = run_child(child_delivers(sink, 3))
        finally:
            flusher.join(30.0)
        assert child is not None, "the child hung and was killed"
        assert_child_delivered(child, 3)
        assert [True] == flushed
        assert_each_once(collector, parent_ids, child)


def submit_parent_lines(sink: HttpSink, count: int) -> list[str]:
    lines = [event_line(origin="parent") for _ in range(count)]
    assert all(sink.submit(line) for line in lines)
    return ids_of(lines)

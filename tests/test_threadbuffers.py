"""`batch_outside_requests`: events sent outside a request, written in batches per thread.

Real apps with a real file sink; scripts' sends run in an app context or in plain threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from bridge import ConfigError, SignalBridge, capture_events
from bridge.threadbuffers import buffer_of_this_thread
from tests.conftest import LOGIN_SIGNAL, BridgedApp, read_events
from tests.forks import run_in_child

MakeBridged = Callable[..., BridgedApp]


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def flusher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "bridge-buffers" and t.is_alive()]


def submits_of(bridged: BridgedApp) -> list[int]:
    """How many lines each `submit_many` call handed the app's first sink."""
    sink: Any = bridged.bridge.emitter().sinks[0]
    sizes: list[int] = []
    real = sink.submit_many

    def spy(lines: list[bytes]) -> int:
        sizes.append(len(lines))
        return int(real(lines))

    sink.submit_many = spy
    return sizes


class TestBatchOutsideRequests:
    def test_an_event_is_written_within_the_delay_without_flush(
        self, make_bridged: MakeBridged
    ) -> None:
        """The flusher writes a script's event by itself, shortly after it was sent."""
        bridged = make_bridged(signals=["user-login"], BRIDGE_BATCH_OUTSIDE_REQUESTS=0.02)
        LOGIN_SIGNAL.send(bridged.app, user_id=1)
        assert wait_for(lambda: len(read_events(bridged.path)) == 1)

    def test_flush_writes_what_is_buffered_at_once(self, make_bridged: MakeBridged) -> None:
        """`flush()` does not wait for the delay: every thread's buffer is written."""
        bridged = make_bridged(signals=["user-login"], BRIDGE_BATCH_OUTSIDE_REQUESTS=1.0)
        LOGIN_SIGNAL.send(bridged.app, user_id=1)
        other = threading.Thread(
            target=LOGIN_SIGNAL.send, args=(bridged.app,), kwargs={"user_id": 2}
        )
        other.start()
        other.join()
        assert bridged.bridge.flush(timeout=5.0)
        assert [1, 2] == sorted(event["user_id"] for event in read_events(bridged.path))

    def test_a_loop_of_sends_is_written_in_batches_in_order(
        self, make_bridged: MakeBridged
    ) -> None:
        """300 sends in a loop: a handful of batches, never more than 128 lines each, in
        order, every event once."""
        bridged = make_bridged(signals=["user-login"], BRIDGE_BATCH_OUTSIDE_REQUESTS=1.0)
        sizes = submits_of(bridged)
        for number in range(300):
            LOGIN_SIGNAL.send(bridged.app, number=number)
        assert bridged.bridge.flush(timeout=5.0)
        assert list(range(300)) == [event["number"] for event in read_events(bridged.path)]
        assert 300 == sum(sizes)
        assert max(sizes) <= 128
        assert len(sizes) <= 5

    def test_each_thread_keeps_its_own_order(self, make_bridged: MakeBridged) -> None:
        """Four threads sending at once: each thread's events are written in its order."""
        bridged = make_bridged(signals=["user-login"], BRIDGE_BATCH_OUTSIDE_REQUESTS=0.01)

        def send_many(worker: int) -> None:
            for number in range(200):
                LOGIN_SIGNAL.send(bridged.app, worker=worker, number=number)

        threads = [threading.Thread(target=send_many, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert bridged.bridge.flush(timeout=10.0)
        events = read_events(bridged.path)
        assert 800 == len(events)
        for worker in range(4):
            mine = [e["number"] for e in events if e["worker"] == worker]
            assert list(range(200)) == mine

    def test_close_leaves_no_flusher_thread(self, make_bridged: MakeBridged) -> None:
        """The flusher lives only while there is something to write: after close, it is gone."""
        bridged = make_bridged(signals=["user-login"], BRIDGE_BATCH_OUTSIDE_REQUESTS=1.0)
        LOGIN_SIGNAL.send(bridged.app, user_id=3)
        assert flusher_threads()
        assert bridged.bridge.close(timeout=5.0)
        assert [] == flusher_threads()
        assert [3] == [event["user_id"] for event in read_events(bridged.path)]

    def test_a_forked_child_never_writes_the_parent_s_buffer(
        self, make_bridged: MakeBridged
    ) -> None:
        """A child forked while the parent holds buffered events starts with none: the
        parent writes them, once."""
        bridged = make_bridged(signals=["user-login"], BRIDGE_BATCH_OUTSIDE_REQUESTS=1.0)
        LOGIN_SIGNAL.send(bridged.app, user_id=5)

        def in_child() -> int:
            assert bridged.bridge.flush(timeout=5.0)
            return len(read_events(bridged.path))

        # The parent's flusher must not write the event while the child looks: it waits on
        # the drain lock of this thread's buffer, held until the child is done.
        drain_lock = buffer_of_this_thread().drain_lock
        with drain_lock:
            assert 0 == run_in_child(in_child, deadline=20.0)
        assert bridged.bridge.flush(timeout=5.0)
        assert [5] == [event["user_id"] for event in read_events(bridged.path)]


class TestWrittenAtOnce:
    def test_by_default_a_script_s_event_is_in_the_file_when_send_returns(
        self, make_bridged: MakeBridged
    ) -> None:
        """Without the key, nothing waits: the line is written by the send itself."""
        bridged = make_bridged(signals=["user-login"])
        LOGIN_SIGNAL.send(bridged.app, user_id=6)
        assert [6] == [event["user_id"] for event in read_events(bridged.path)]

    def test_a_sync_sink_is_never_batched(self, make_bridged: MakeBridged, tmp_path: Any) -> None:
        """With a `sync` sink the caller waits for the disk: the key does not apply."""
        path = tmp_path / "audit.jsonl"
        bridged = make_bridged(
            signals=["user-login"],
            BRIDGE_BATCH_OUTSIDE_REQUESTS=1.0,
            BRIDGE_SINKS=[{"type": "file", "path": str(path), "sync": True}],
        )
        LOGIN_SIGNAL.send(bridged.app, user_id=7)
        assert [7] == [event["user_id"] for event in read_events(path)]

    def test_capture_events_sees_a_script_s_event_at_once(self, make_bridged: MakeBridged) -> None:
        """While `capture_events()` watches, events are not held back."""
        bridged = make_bridged(signals=["user-login"], BRIDGE_BATCH_OUTSIDE_REQUESTS=1.0)
        with capture_events(bridged.bridge) as captured:
            LOGIN_SIGNAL.send(bridged.app, user_id=8)
            assert [8] == [event["user_id"] for event in captured]


class TestConfiguration:
    def test_more_than_a_second_is_refused_with_key_value_and_expectation(self) -> None:
        """A delay is small and bounded: 2 seconds fails at start-up, naming the key."""
        app = Flask("too-long")
        app.config["BRIDGE_BATCH_OUTSIDE_REQUESTS"] = 2
        with pytest.raises(ConfigError) as raised:
            SignalBridge(app)
        message = str(raised.value)
        assert "batch_outside_requests" in message
        assert "2" in message
        assert "at most 1 seconds" in message

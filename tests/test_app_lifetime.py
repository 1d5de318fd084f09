"""A bridged app that is dropped is freed, and takes its receivers, files and threads along.

A user's test suite creates an app per test: each must be freed by reference counting alone
(no cycle through the bridge), and everything the bridge made for it released with it.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import flask.signals
import pytest

from bridge import SignalBridge
from bridge.extension import open_emitters
from bridge.logging import BridgeHandler
from tests.collector import Collector
from tests.conftest import LOGIN_SIGNAL, build_app, read_events

LOGGER = "shop.lifetime"
SIGNALS = [flask.signals.request_finished, flask.signals.got_request_exception, LOGIN_SIGNAL]


def open_fds_to(path: Path) -> list[str]:
    """This process's descriptors that point at `path`."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                found.append(fd)
        except OSError:  # closed between listdir and readlink (listdir's own descriptor)
            continue
    return found


def bridge_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("bridge-")}


def receiver_counts() -> list[int]:
    return [len(signal.receivers) for signal in SIGNALS]


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Only reference counting frees objects inside the test."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class TestDroppedApp:
    def test_freed_by_refcount_and_released(self, tmp_path: Path, no_gc: None) -> None:
        """The last reference dropped: app freed; file, thread, receivers and handler released."""
        path = tmp_path / "events.jsonl"
        receivers_before, threads_before = receiver_counts(), bridge_threads()
        with Collector() as collector:
            app = build_app(
                BRIDGE_SIGNALS=["default", "user-login"],
                BRIDGE_LOGGERS=[LOGGER],
                BRIDGE_SINKS=[
                    {"type": "file", "path": str(path)},
                    {"type": "http", "url": collector.url, "batch_timeout": 0.01},
                ],
            )
            bridge = SignalBridge(app)
            # No template rendered: Flask's own Jinja environment refers back to the app.
            app.test_client().get("/")
            LOGIN_SIGNAL.send(app, user_id=7)
            logging.getLogger(LOGGER).warning("logged")
            assert bridge.flush(timeout=10.0)
            assert 1 == len(open_fds_to(path))
            assert bridge_threads() - threads_before, "the http sink runs a thread"
            assert receiver_counts() != receivers_before
            assert 1 == len(open_emitters())
            freed = weakref.ref(app)

            del app

            assert freed() is None
            assert receivers_before == receiver_counts()  # at once, on the dropping thread
            assert [] == open_emitters()
            releasing = [t for t in threading.enumerate() if t.name.startswith("bridge-release")]
            assert 1 == len(releasing), "flush and close run on a thread of their own"
            releasing[0].join(timeout=30.0)
            assert not releasing[0].is_alive()
            assert [] == open_fds_to(path)
            assert set() == bridge_threads() - threads_before
            assert receivers_before == receiver_counts()
            assert [] == open_emitters()
            assert not any(isinstance(h, BridgeHandler) for h in logging.getLogger(LOGGER).handlers)
            sent = [e["event"] for e in collector.events()]
        assert ["request.finished", "user-login", "logged"] == sent
        assert sent == [e["event"] for e in read_events(path)]

    def test_close_then_drop(self, tmp_path: Path, no_gc: None) -> None:
        """An app closed by hand, then dropped, is freed too; close() is not undone twice."""
        app = build_app(BRIDGE_SINKS=[{"type": "file", "path": str(tmp_path / "e.jsonl")}])
        bridge = SignalBridge(app)
        assert bridge.close()
        freed = weakref.ref(app)
        del app
        assert freed() is None
        assert bridge.close()

    def test_one_bridge_many_apps(self, tmp_path: Path, no_gc: None) -> None:
        """One SignalBridge for several apps: dropping one leaves the others working."""
        bridge = SignalBridge()
        kept = build_app("kept", BRIDGE_SINKS=[{"type": "file", "path": str(tmp_path / "k")}])
        dropped = build_app("dropped", BRIDGE_SINKS=[{"type": "file", "path": str(tmp_path / "d")}])
        bridge.init_app(kept)
        bridge.init_app(dropped)
        try:
            freed = weakref.ref(dropped)
            del dropped
            assert freed() is None
            kept.test_client().get("/")
            assert bridge.flush()
            assert ["kept"] == [e["service.name"] for e in read_events(tmp_path / "k")]
            assert 0 == bridge.stats()["receiver_errors"]
        finally:
            bridge.close()

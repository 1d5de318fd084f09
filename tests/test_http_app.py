"""A Flask app shipping to a real collector on 127.0.0.1 that is up, or down all along."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

from bridge import SignalBridge
from tests.collector import Collector
from tests.conftest import build_app


def http_app(url: str, tmp_path: Path) -> tuple[Any, SignalBridge]:
    app = build_app(
        BRIDGE_SIGNALS=["default", "user-login"],
        BRIDGE_SINKS=[
            {
                "type": "http",
                "url": url,
                "batch_timeout": 0.05,
                "retry_initial_backoff": 0.01,
                "retry_max_backoff": 0.05,
                "timeout_connect": 0.5,
                "timeout_read": 0.5,
            }
        ],
    )
    return app, SignalBridge(app)


def calls_per_request(app: Any, requests: int = 200) -> list[int]:
    """Python-level calls made by the request thread itself for each request (a profile)."""
    client = app.test_client(use_cookies=False)  # every request the same: no growing session
    client.post("/login")  # the first event starts the sink's worker
    counts = []
    counter = [0]

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            counter[0] += 1

    for _ in range(requests):
        counter[0] = 0
        sys.setprofile(profile)
        client.post("/login")
        sys.setprofile(None)
        counts.append(counter[0])
    return counts


class TestCollectorDown:
    def test_request_thread_does_the_same_work_up_or_down(self, tmp_path: Path) -> None:
        """With the collector down all along, a request does no more work than with it up."""
        with Collector() as collector:
            app, bridge = http_app(collector.url, tmp_path)
            try:
                up = calls_per_request(app)
                assert bridge.flush(10.0)
                assert 3 * 201 == len(collector.event_ids())
            finally:
                bridge.close(1.0)
        with Collector(start_down=True) as collector:
            app, bridge = http_app(collector.url, tmp_path)
            try:
                down = calls_per_request(app)
                assert 200 == app.test_client().post("/login").status_code
                assert not bridge.flush(0.2), "nothing can be delivered while it is down"
            finally:
                bridge.close(0.2)
        # Timestamps add a call or two when a new millisecond or second starts: allow 1%.
        # Any network work on the request thread would cost hundreds of calls.
        assert statistics.median(down) <= statistics.median(up) * 1.01
        assert max(down) <= max(up) * 1.01

    def test_events_sent_while_down_arrive_once_it_is_up(self, tmp_path: Path) -> None:
        """Requests served during an outage are delivered when the collector comes back."""
        with Collector(start_down=True) as collector:
            app, bridge = http_app(collector.url, tmp_path)
            try:
                client = app.test_client()
                for _ in range(20):
                    assert 200 == client.post("/login").status_code
                collector.up()
                assert bridge.flush(20.0)
                events = collector.events()
                assert 60 == len(events)
                assert 60 == len({e["event_id"] for e in events})
                assert 20 == sum(e["event"] == "user-login" for e in events)
            finally:
                bridge.close(1.0)

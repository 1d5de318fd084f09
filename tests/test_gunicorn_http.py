"""Four real gunicorn workers ship events to a real HTTP collector that is down, then up.

Each worker has its own delivery thread (docs/architecture.md), started lazily in the process
that emits (with `--preload` too, where the app and its sinks are built in the master before
the fork). Traffic runs while the collector refuses connections, then after it comes back;
then SIGTERM to the master: every worker flushes on exit, and every request's event must have
reached the collector (duplicates are allowed with a spool: delivery is at least once).
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from examples.server import GunicornServer
from tests.collector import Collector

pytestmark = pytest.mark.slow

APP = "examples.login_log.app:app"  # POST /login sends the custom `user-login` signal
WORKERS = 4
PER_PHASE = 120
CLIENTS = 4


def send_logins(url: str, first: int, count: int) -> list[str]:
    """`count` failed logins (unknown users: cheap), each with its own X-Request-ID."""
    numbers = iter(range(first, first + count))
    lock = threading.Lock()
    errors: list[str] = []

    def client() -> None:
        with requests.Session() as http:
            while True:
                with lock:
                    number = next(numbers, None)
                if number is None:
                    return
                response = http.post(
                    url + "/login",
                    data={"username": f"user-{number}", "password": "x"},
                    headers={"X-Request-ID": f"req-{number:04d}"},
                    timeout=30.0,
                )
                if response.status_code != 401:
                    errors.append(f"req-{number:04d}: HTTP {response.status_code}")

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60.0)
    assert not any(thread.is_alive() for thread in threads), "a client thread hung"
    assert [] == errors
    return [f"req-{n:04d}" for n in range(first, first + count)]


def server_for(tmp_path: Path, sink: dict[str, Any], extra_args: list[str]) -> GunicornServer:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["BRIDGE_SINKS"] = json.dumps([sink])
    env["BRIDGE_SIGNALS"] = json.dumps(["user-login"])
    return GunicornServer(APP, cwd=tmp_path, workers=WORKERS, extra_args=extra_args, env=env)


@pytest.mark.parametrize(
    ("extra_args", "spool"),
    [
        pytest.param([], True, id="fork-then-import-spool"),
        pytest.param(["--preload"], True, id="preload-spool"),
        pytest.param([], False, id="fork-then-import-memory"),
        pytest.param(["--preload"], False, id="preload-memory"),
    ],
)
def test_every_event_arrives_after_an_outage_and_sigterm(
    tmp_path: Path, extra_args: list[str], spool: bool
) -> None:
    """Down, then up, then SIGTERM: every request's `user-login` event reached the collector."""
    with Collector(start_down=True) as collector:
        sink: dict[str, Any] = {
            "type": "http",
            "url": collector.url,
            "batch_timeout": 0.05,
            "retry_initial_backoff": 0.01,
            "retry_max_backoff": 0.1,
        }
        if spool:
            sink["spool_dir"] = str(tmp_path / "spool")
        server = server_for(tmp_path, sink, extra_args)
        try:
            server.start()
            expected = send_logins(server.url, 0, PER_PHASE)
            assert [] == collector.requests()  # nothing got through while it was down
            collector.up()
            expected += send_logins(server.url, PER_PHASE, PER_PHASE)
            assert 0 == server.stop()
        finally:
            server.kill()
        logins = [e for e in collector.events() if e["event"] == "user-login"]
    received = Counter(e["request_id"] for e in logins)
    assert sorted(expected) == sorted(received)
    if not spool:  # best effort without a spool, but nothing was lost or sent twice here
        assert {1} == set(received.values())
    pids = {e["process.pid"] for e in logins}
    assert len(pids) > 1, "the traffic should have reached several workers"
    lines = server.stderr_text().splitlines()
    complaints = [
        line
        for line in lines
        if line.startswith("flask-signal-bridge[") and "will retry" not in line
    ]
    assert [] == complaints
    if spool:
        leftovers = [p.name for p in (tmp_path / "spool").iterdir() if p.suffix == ".seg"]
        assert [] == leftovers

"""Two real gunicorn workers: `flask bridge stats` and `/metrics` show both, summed.

The operator's view of a running deployment: requests spread over the workers, then
`flask bridge stats` (another process, same configuration) lists each worker with its counts
and their total, and a Prometheus scrape of any worker shows the sum of all of them
(multiprocess mode). A clean stop leaves no stats file behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from examples.server import ROOT, GunicornServer

pytestmark = pytest.mark.slow

APP = "tests.workers_app:app"
CLIENTS = 4
DEADLINE = 60.0


def spread_requests(url: str) -> Counter[int]:
    """Requests from several threads until both workers served some: responses by pid."""
    served: Counter[int] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + DEADLINE

    def client() -> None:
        with requests.Session() as http:
            while time.monotonic() < deadline:
                with lock:
                    if len(served) >= 2 and sum(served.values()) >= 40:
                        return
                pid = int(http.get(url + "/", timeout=10).text)
                with lock:
                    served[pid] += 1

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE + 15)
    return served


def bridge_stats(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", APP, "bridge", "stats", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 0 == done.returncode, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def delivered(stats: dict[str, Any]) -> int:
    return int(stats["sinks"].get("file-0", {}).get("delivered", 0))


def scraped_delivered(url: str) -> float:
    text = requests.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "bridge_events_delivered_total":
                return sample.value
    return 0.0


class TestGunicornWorkers:
    def test_stats_and_metrics_of_both_workers(self, tmp_path: Path) -> None:
        """`flask bridge stats` shows both workers, whose delivered counts sum to the events
        written, and per worker at least the requests it answered; /metrics shows the sum."""
        (tmp_path / "prom").mkdir()
        events = tmp_path / "events.jsonl"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "FLASK_"))}
        env |= {
            "PYTHONPATH": str(ROOT),
            "WORKERS_EVENTS": str(events),
            "BRIDGE_STATS_DIR": str(tmp_path / "stats"),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        }
        with GunicornServer(APP, cwd=tmp_path, workers=2, env=env) as server:
            served = spread_requests(server.url)
            assert 2 == len(served), served
            expected = sum(served.values()) + server.ready_probes
            deadline = time.monotonic() + DEADLINE
            while True:  # workers publish at most once a second: wait for the last counts
                shown = bridge_stats(env)
                if delivered(shown["total"]) == expected or time.monotonic() > deadline:
                    break
            workers = {w["pid"]: w for w in shown["workers"]}
            assert set(served) == set(workers)
            assert all(w["alive"] for w in workers.values())
            assert expected == delivered(shown["total"])
            assert expected == len(events.read_text().splitlines())
            for pid, answered in served.items():
                assert answered <= delivered(workers[pid]["stats"])
            # A scrape reaches one worker; it shows the sum over both (plus scrapes so far).
            while scraped_delivered(server.url) < expected and time.monotonic() < deadline:
                pass
            assert expected <= scraped_delivered(server.url)
        assert [] == list((tmp_path / "stats").rglob("*.json"))

"""Prometheus metrics of the sinks' counters: increases pushed once, summed across processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge import metrics
from bridge.metrics import SinkMetrics
from bridge.workerstats import publisher_of
from tests.conftest import BridgedApp

ROOT = Path(__file__).resolve().parent.parent


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and labels, read with prometheus_client's parser."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def sink(name: str = "file-0", **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"service": "shop", "sink": name, **extra}.items()))


def stats(**counters: object) -> dict[str, object]:
    return {"sinks": {"file-0": counters}, "receiver_errors": counters.pop("errors", 0)}


class TestSinkMetrics:
    def test_increases_pushed_once(self) -> None:
        """Two updates push the counters' increases, so the metric equals the counter."""
        registry = CollectorRegistry()
        metrics = SinkMetrics(registry)
        metrics.update("shop", stats(enqueued=3, delivered=2, queue_depth=1))
        metrics.update("shop", stats(enqueued=5, delivered=5, queue_depth=0, errors=2))
        found = samples(generate_latest(registry).decode())
        assert 5.0 == found[("bridge_events_enqueued_total", sink())]
        assert 5.0 == found[("bridge_events_delivered_total", sink())]
        assert 0.0 == found[("bridge_queue_depth", sink())]
        assert 2.0 == found[("bridge_receiver_errors_total", (("service", "shop"),))]

    def test_dropped_by_reason(self) -> None:
        """Drops are counted per reason label."""
        registry = CollectorRegistry()
        metrics = SinkMetrics(registry)
        metrics.update("shop", stats(dropped_by_reason={"queue_full": 2}))
        metrics.update("shop", stats(dropped_by_reason={"queue_full": 3, "closed": 1}))
        found = samples(generate_latest(registry).decode())
        assert 3.0 == found[("bridge_events_dropped_total", sink(reason="queue_full"))]
        assert 1.0 == found[("bridge_events_dropped_total", sink(reason="closed"))]

    def test_counter_that_started_over(self) -> None:
        """A counter lower than last time started over: its whole value is an increase."""
        registry = CollectorRegistry()
        metrics = SinkMetrics(registry)
        metrics.update("shop", stats(delivered=4))
        metrics.update("shop", stats(delivered=1))
        found = samples(generate_latest(registry).decode())
        assert 5.0 == found[("bridge_events_delivered_total", sink())]


class TestMount:
    def test_scrape_shows_this_process_counts(
        self, make_bridged: Callable[..., BridgedApp], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Mounted on the app, /metrics shows the sink's counters (one process, no multiprocess
        directory), brought up to date by the scrape itself."""
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        bridged = make_bridged(name="mounted")
        metrics.mount(bridged.app)
        publisher = publisher_of(bridged.bridge.emitter(bridged.app))
        assert publisher is not None
        try:
            bridged.client.get("/")
            bridged.client.get("/")
            assert bridged.bridge.flush(timeout=10.0)
            response = bridged.client.get("/metrics")
        finally:
            publisher.stop()
        assert 200 == response.status_code
        assert response.content_type.startswith("text/plain")
        found = samples(response.get_data(as_text=True))
        labels = tuple(sorted({"service": "mounted", "sink": "file-0"}.items()))
        assert 2.0 == found[("bridge_events_delivered_total", labels)]

    def test_missing_prometheus_client_is_explained(
        self, make_bridged: Callable[..., BridgedApp], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without prometheus_client, a clear ImportError names the extra to install."""
        monkeypatch.setitem(sys.modules, "prometheus_client", None)
        with pytest.raises(ImportError, match=r"flask-signal-bridge\[prometheus\]"):
            metrics.mount(make_bridged(name="bare").app)


@pytest.mark.slow
class TestMultiprocess:
    def test_two_workers_summed(self, tmp_path: Path) -> None:
        """Two forked workers' counts are summed in one scrape (PROMETHEUS_MULTIPROC_DIR)."""
        (tmp_path / "prom").mkdir()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
            "WORKERS_EVENTS": str(tmp_path / "events.jsonl"),
            "BRIDGE_STATS_DIR": str(tmp_path / "stats"),
        }
        done = subprocess.run(
            [sys.executable, "-m", "tests.metrics_forks", "3", "4"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert 0 == done.returncode, done.stderr
        found = samples(done.stdout)
        labels = tuple(sorted({"service": "tests.workers_app", "sink": "file-0"}.items()))
        assert 7.0 == found[("bridge_events_delivered_total", labels)]
        assert 7.0 == found[("bridge_events_enqueued_total", labels)]
        lines = (tmp_path / "events.jsonl").read_text().splitlines()
        assert 7 == len([line for line in lines if "/metrics" not in line])  # the scrape's own

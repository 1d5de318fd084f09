"""Prometheus metrics of every sink's counters, correct under gunicorn's several workers.

Optional: `pip install flask-signal-bridge[prometheus]`; `prometheus_client` is imported only
when metrics are asked for. Under gunicorn each worker is its own process, and a scrape reaches
one of them, so reading `stats()` at scrape time would show one worker's counts. Instead every
worker pushes its counters' increases into prometheus_client's own metrics on the tick that
publishes its stats (`bridge.workerstats`, once a second, its thread) and again when it serves
a scrape; in multiprocess mode (`PROMETHEUS_MULTIPROC_DIR` set before the app starts) those
live in per-process files that `MultiProcessCollector` sums.

    from bridge import metrics
    metrics.mount(app)                  # GET /metrics on the app
    metrics.serve(9200)                 # or a port of its own (gunicorn: in `when_ready`)
    child_exit = metrics.child_exit     # gunicorn.conf.py: a dead worker's gauges go
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from flask import Flask, Response

from bridge import forking
from bridge.workerstats import publish

__all__ = ["COUNTERS", "SinkMetrics", "child_exit", "enable", "mount", "registry", "serve"]

# stats() counter -> help text; each becomes `bridge_events_<name>_total{service,sink}`.
COUNTERS = {
    "enqueued": "Events a sink accepted.",
    "delivered": "Events written, or acknowledged by the collector.",
    "retried": "Events sent again after a failure (each attempt).",
    "spooled": "Events appended to the spool.",
    "dead_lettered": "Events written to the dead-letter file.",
}
GAUGES = {"queue_depth": "Events waiting in the queue.", "spool_bytes": "Spool bytes not sent."}


def _prometheus() -> ModuleType:
    try:
        import prometheus_client
    except ImportError:
        raise ImportError(
            "bridge.metrics needs prometheus_client: pip install 'flask-signal-bridge[prometheus]'"
        ) from None
    return prometheus_client


class SinkMetrics:
    """The metric families, and the last counts this process pushed into them."""

    def __init__(self, registry: Any) -> None:
        pc = _prometheus()
        sink = ("service", "sink")
        self.counters = {
            key: pc.Counter(f"bridge_events_{key}", text, sink, registry=registry)
            for key, text in COUNTERS.items()
        }
        self.dropped = pc.Counter(
            "bridge_events_dropped",
            "Events dropped, by reason.",
            (*sink, "reason"),
            registry=registry,
        )
        self.receiver_errors = pc.Counter(
            "bridge_receiver_errors",
            "Signal receivers that failed.",
            ("service",),
            registry=registry,
        )
        # livesum: the sum over live workers (a dead worker's queue is gone with it).
        self.gauges = {
            key: pc.Gauge(
                f"bridge_{key}", text, sink, registry=registry, multiprocess_mode="livesum"
            )
            for key, text in GAUGES.items()
        }
        self._start()
        forking.reset_in_child(self)

    def _start(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[tuple[str, ...], int] = {}

    def after_fork_in_child(self) -> None:
        """A worker's counters start at zero: so do the counts it has pushed."""
        self._start()

    def _increase(self, key: tuple[str, ...], value: Any) -> int:
        number = int(value or 0)
        last = self._last.get(key, 0)
        self._last[key] = number
        return number - last if number >= last else number  # lower: the counter started over

    def update(self, service: str, stats: Mapping[str, Any]) -> None:
        """Push the increases since the last update (a `workerstats` listener)."""
        with self._lock:
            for name, counters in stats.get("sinks", {}).items():
                for key, counter in self.counters.items():
                    if more := self._increase((service, name, key), counters.get(key)):
                        counter.labels(service, name).inc(more)
                for reason, count in counters.get("dropped_by_reason", {}).items():
                    if more := self._increase((service, name, "dropped", reason), count):
                        self.dropped.labels(service, name, reason).inc(more)
                for key, gauge in self.gauges.items():
                    gauge.labels(service, name).set(int(counters.get(key) or 0))
            errors = self._increase((service, "receiver_errors"), stats.get("receiver_errors"))
            if errors:
                self.receiver_errors.labels(service).inc(errors)


_metrics: dict[int, SinkMetrics] = {}
_made = threading.Lock()


def _metrics_for(target: Any) -> SinkMetrics:
    with _made:  # a family registered twice in one registry is an error
        made = _metrics.get(id(target))
        if made is None:
            made = _metrics[id(target)] = SinkMetrics(target)
        return made


def enable(app: Flask, registry: Any = None) -> SinkMetrics:
    """Export `app`'s sink counters (into `registry`, default prometheus_client's)."""
    bridge = app.extensions.get("bridge")
    if bridge is None:
        raise RuntimeError("bridge.metrics: initialize SignalBridge on this app first")
    metrics = _metrics_for(_prometheus().REGISTRY if registry is None else registry)
    publisher = publish(app, bridge.emitter(app))
    if metrics.update not in publisher.listeners:
        publisher.listeners.append(metrics.update)
    return metrics


def registry() -> Any:
    """What to expose: every worker's metrics summed when `PROMETHEUS_MULTIPROC_DIR` is set
    (multiprocess mode), else this process's default registry."""
    pc = _prometheus()
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return pc.REGISTRY
    from prometheus_client import multiprocess

    collected = pc.CollectorRegistry()
    multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
    return collected


def mount(app: Flask, path: str = "/metrics") -> None:
    """Serve the metrics at `path` on the app (endpoint `bridge_metrics`)."""
    enable(app)
    bridge = app.extensions["bridge"]

    def bridge_metrics() -> Response:
        publisher = publish(app, bridge.emitter(app))
        publisher.ensure_running()
        publisher.tick()  # this worker's latest counts; the others' are at most a tick old
        pc = _prometheus()
        return Response(pc.generate_latest(registry()), content_type=pc.CONTENT_TYPE_LATEST)

    app.add_url_rule(path, "bridge_metrics", bridge_metrics)


def serve(port: int, addr: str = "127.0.0.1") -> Any:
    """Serve the metrics on a port of their own, from a thread; under gunicorn call it in the
    master (`when_ready`), since workers cannot share a port. Returns (server, thread)."""
    return _prometheus().start_http_server(port, addr, registry=registry())


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn's `child_exit` hook: drop the dead worker's live gauges (multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]

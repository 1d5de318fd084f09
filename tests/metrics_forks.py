"""Run as a script with PROMETHEUS_MULTIPROC_DIR set: two forked workers of `tests.workers_app`
serve requests and push their counters; then the parent, as gunicorn's `child_exit` hook does,
marks them dead and prints its own `/metrics` scrape on stdout.

`python -m tests.metrics_forks N1 N2`: the first child serves N1 requests, the second N2.
A script, not a test, because prometheus_client picks multiprocess mode when it is imported.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

from bridge import metrics
from bridge.workerstats import publisher_of
from tests.workers_app import app, bridge


def serve(requests: int) -> None:
    """A forked worker: serve, deliver, push the counts (its tick), exit without cleanup."""
    code = 1
    try:
        client = app.test_client()
        for _ in range(requests):
            client.get("/")
        bridge.flush(10.0)
        publisher = publisher_of(bridge.emitter(app))
        assert publisher is not None
        publisher.tick()
        code = 0
    finally:
        os._exit(code)


def main() -> None:
    children = []
    for requests in map(int, sys.argv[1:]):
        pid = os.fork()
        if pid == 0:
            serve(requests)
        children.append(pid)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise SystemExit(f"worker {pid} failed: status {status}")
        metrics.child_exit(None, SimpleNamespace(pid=pid))
    sys.stdout.write(app.test_client().get("/metrics").get_data(as_text=True))


if __name__ == "__main__":
    main()

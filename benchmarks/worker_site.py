"""One request-benchmark contender as it lives in its worker process, and how it times a batch.

`Site` holds the contender's app, connected for good, and how to count the events it wrote.
`Site.batch` times requests through the Flask test client (wall and thread CPU each), then
lets pending events land (`settle`, untimed) and reports how many arrived meanwhile, so a
contender that loses events shows it in its events per request. The builders live in
`request_sites` (the bridge's rows) and `request_peers` (the plain receivers it is compared
with).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from flask import Flask
from flask.testing import FlaskClient

__all__ = ["Batch", "Site"]


class Batch(NamedTuple):
    """One batch's per-request µs (wall, thread CPU), requests sent and events written."""

    wall: list[float]
    cpu: list[float]
    requests: int
    events: int


def _nothing() -> None:
    return None


def _no_events() -> int:
    return 0


@dataclass
class Site:
    """One contender's app, connected for good; `settle` and `events` run outside the timing."""

    label: str
    app: Flask
    events: Callable[[], int] = _no_events  # events written (or delivered) so far
    settle: Callable[[], None] = _nothing  # after a batch: let pending events land
    shutdown: Callable[[], None] = _nothing
    counted: int = field(default=0, init=False)
    client: FlaskClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = self.app.test_client(use_cookies=False)

    def batch(self, size: int, warmup: int) -> Batch:
        """`warmup` untimed requests, then `size` timed ones (µs of wall and thread CPU each)."""
        for _ in range(warmup):
            status = self.client.post("/login").status_code
            if status != 200:
                raise RuntimeError(f"{self.label}: POST /login answered {status}")
        post, wall, cpu = self.client.post, time.perf_counter_ns, time.thread_time_ns
        walls, cpus = [], []
        for _ in range(size):
            started, started_cpu = wall(), cpu()
            post("/login")
            ended_cpu, ended = cpu(), wall()
            walls.append((ended - started) / 1000.0)
            cpus.append((ended_cpu - started_cpu) / 1000.0)
        self.settle()
        written = self.events()
        new, self.counted = written - self.counted, written
        return Batch(walls, cpus, warmup + size, new)

    def close(self) -> None:
        self.shutdown()

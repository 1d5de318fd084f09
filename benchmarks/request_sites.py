"""The request benchmark's contenders, as each one lives in its own worker process.

`open_site(label, ...)` is the worker's factory (see `benchmarks.runner`): it builds that
contender's app, connects its bridge or receivers once for the whole run, and warms it up.
`Site.batch` then times requests and reports them with the events written meanwhile.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import blinker
import flask.signals
import orjson
from flask import Flask, request
from flask.testing import FlaskClient
from pythonjsonlogger.json import JsonFormatter

from benchmarks.apps import BUILTIN_NAMES, LOGIN, LineCounter, build_app, naive_receiver
from bridge import SignalBridge

__all__ = [
    "BARE",
    "BUILTIN",
    "DEFAULT",
    "DEFAULT_LOGIN",
    "JSON_LOGGER",
    "MINIMAL",
    "NAIVE",
    "ONE",
    "REQUEST_ROWS",
    "STRING",
    "Batch",
    "Site",
    "open_site",
]

BARE = "bare app (no bridge)"
ONE = "bridge: user-login only (1 event), file sink"
DEFAULT = "bridge: default signals, file sink"
DEFAULT_LOGIN = "bridge: default + user-login, file sink"
BUILTIN = "bridge: all ten built-ins, file sink"
JSON_LOGGER = "python-json-logger: 3 receivers, FileHandler"
NAIVE = "naive receiver on all ten built-ins"
MINIMAL = "floor: 3 plain receivers doing orjson.dumps + os.write"
STRING = "reference: bare app with render_template_string (compiles every request)"
REQUEST_ROWS = (BARE, ONE, DEFAULT, DEFAULT_LOGIN, BUILTIN, MINIMAL, JSON_LOGGER, NAIVE, STRING)


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
    events: Callable[[], int] = _no_events  # events written so far
    settle: Callable[[], None] = _nothing  # after a batch: let pending events reach the file
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


def open_site(label: str, work: Path, warmup: int) -> Site:
    """The worker's factory: build and connect `label`'s contender, then warm it up."""
    site = BUILDERS[label](work)
    site.batch(0, warmup)  # its events are counted here and left out of every batch
    return site


def bridge_site(label: str, name: str, work: Path, signals: list[str]) -> Site:
    path = work / f"{name}.jsonl"
    app = build_app(
        name, work, BRIDGE_SIGNALS=signals, BRIDGE_SINKS=[{"type": "file", "path": str(path)}]
    )
    bridge = SignalBridge(app)

    def settle() -> None:
        if not bridge.flush(timeout=10.0, app=app):
            raise RuntimeError(f"{label}: the bridge did not flush within 10 s")

    def shutdown() -> None:
        if not bridge.close(timeout=10.0, app=app):
            raise RuntimeError(f"{label}: the bridge did not close within 10 s")

    return Site(label, app, LineCounter(path), settle, shutdown)


def json_logger_site(work: Path) -> Site:
    """The same three events through python-json-logger and a `logging.FileHandler`."""
    app = build_app("jsonlogger", work)
    path = work / "jsonlogger.jsonl"
    logger = logging.getLogger("benchmarks.jsonlogger")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)

    def request_extra() -> dict[str, Any]:
        return {
            "http.request.method": request.method,
            "url.path": request.path,
            "client.address": request.remote_addr,
            "user_agent.original": request.user_agent.string,
        }

    def on_finished(sender: Any, /, response: Any, **extra: Any) -> None:
        fields = {**request_extra(), "http.response.status_code": response.status_code}
        logger.info("request.finished", extra=fields)

    def on_flashed(sender: Any, /, message: str, category: str, **extra: Any) -> None:
        fields = {**request_extra(), "flash.message": message, "flash.category": category}
        logger.info("message.flashed", extra=fields)

    def on_login(sender: Any, /, **kwargs: Any) -> None:
        logger.info("user-login", extra={**request_extra(), **kwargs})

    wiring: list[tuple[blinker.Signal, Callable[..., None]]] = [
        (flask.signals.request_finished, on_finished),
        (flask.signals.message_flashed, on_flashed),
        (LOGIN, on_login),
    ]
    connect(app, wiring)

    def shutdown() -> None:
        logger.removeHandler(handler)
        handler.close()

    return Site(JSON_LOGGER, app, LineCounter(path), shutdown=shutdown)


def naive_site(work: Path) -> Site:
    app = build_app("naive", work)
    captured: list[dict[str, Any]] = []
    seen = [0]
    connect(app, [(getattr(flask.signals, n), naive_receiver(captured, n)) for n in BUILTIN_NAMES])

    def settle() -> None:  # counted and dropped, so the list does not grow over the run
        seen[0] += len(captured)
        captured.clear()

    return Site(NAIVE, app, lambda: seen[0], settle)


def minimal_site(work: Path) -> Site:
    """The least a receiver can do on the default set: encode what it got, one `write()`."""
    app = build_app("minimal", work)
    path = work / "minimal.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(fields: dict[str, Any]) -> None:
        os.write(fd, orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE))

    def on_finished(sender: Any, /, response: Any, **extra: Any) -> None:
        write({"event": "request.finished", "status": response.status_code})

    def on_flashed(sender: Any, /, message: str, category: str, **extra: Any) -> None:
        write({"event": "message.flashed", "message": message, "category": category})

    def on_login(sender: Any, /, **kwargs: Any) -> None:
        write({"event": "user-login", **kwargs})

    wiring: list[tuple[blinker.Signal, Callable[..., None]]] = [
        (flask.signals.request_finished, on_finished),
        (flask.signals.message_flashed, on_flashed),
        (LOGIN, on_login),
    ]
    connect(app, wiring)
    return Site(MINIMAL, app, LineCounter(path), shutdown=lambda: os.close(fd))


def connect(app: Flask, wiring: list[tuple[blinker.Signal, Callable[..., None]]]) -> None:
    """Connect each receiver to its signal for `app` only, strongly, for the whole run."""
    for signal, receiver in wiring:
        signal.connect(receiver, sender=app, weak=False)


BUILDERS: dict[str, Callable[[Path], Site]] = {
    BARE: lambda work: Site(BARE, build_app("bare", work)),
    ONE: lambda work: bridge_site(ONE, "one", work, ["user-login"]),
    DEFAULT: lambda work: bridge_site(DEFAULT, "default", work, ["default"]),
    DEFAULT_LOGIN: lambda work: bridge_site(
        DEFAULT_LOGIN, "default-login", work, ["default", "user-login"]
    ),
    BUILTIN: lambda work: bridge_site(BUILTIN, "builtin", work, ["builtin"]),
    MINIMAL: minimal_site,
    JSON_LOGGER: json_logger_site,
    NAIVE: naive_site,
    STRING: lambda work: Site(STRING, build_app("string", work, from_string=True)),
}

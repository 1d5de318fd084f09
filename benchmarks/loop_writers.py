"""The loop section's contenders: ways of getting a custom signal's fields out, one `Writer` each.

`bench_sink` runs them interleaved; each is opened before and closed after its batch (untimed)
and says afterwards how many events landed (the lines of its file, or the collector's count
on its own path), so a writer cannot win by losing events. The bridge runs once per sink:
file; stdout (this process's fd 1 redirected to a file for the round, restored after); http
with a memory queue and with a disk spool, posting to the counting collector.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import structlog
from flask import Flask
from pythonjsonlogger.json import JsonFormatter

from benchmarks.apps import LOGIN
from benchmarks.collector import CountingCollector
from benchmarks.common import Contender
from bridge import SignalBridge

__all__ = [
    "BARE",
    "BATCHED",
    "BRIDGE",
    "BRIDGE_ROWS",
    "FIELDS",
    "FLOOR",
    "HTTP_MEMORY",
    "HTTP_ROWS",
    "HTTP_SPOOL",
    "JSON_LOGGER",
    "SINK_ROWS",
    "STDOUT",
    "STRUCTLOG",
    "Writer",
    "bare_receiver_writer",
    "batched_bridge_writer",
    "file_bridge_writer",
    "floor_writer",
    "http_bridge_writer",
    "json_logger_writer",
    "stdout_bridge_writer",
    "structlog_writer",
]

FIELDS: dict[str, Any] = {
    "user_id": 7,
    "username": "ada",
    "remember": True,
    "ip": "203.0.113.9",
    "cart_items": 3,
}
PREBUILT = {
    "timestamp": "2026-11-25T08:30:00.123456Z",
    "level": "info",
    "event": "user-login",
    **FIELDS,
}
NEWLINE = orjson.OPT_APPEND_NEWLINE

BRIDGE = "bridge, file sink (signal send + flush)"
BATCH_DELAY = 0.05
BATCHED = f"bridge, file sink, batch_outside_requests = {BATCH_DELAY:g}"
STDOUT = "bridge, stdout sink (fd 1 to a file)"
HTTP_MEMORY = "bridge, http sink, memory queue"
HTTP_SPOOL = "bridge, http sink, disk spool"
HTTP_ROWS = (HTTP_MEMORY, HTTP_SPOOL)
BRIDGE_ROWS = (BRIDGE, BATCHED, STDOUT, *HTTP_ROWS)
JSON_LOGGER = "python-json-logger + FileHandler"
STRUCTLOG = "structlog + orjson, BytesLogger"
FLOOR = "floor: orjson.dumps + buffered write"
BARE = "bare receiver: orjson.dumps(kwargs) + os.write"
SINK_ROWS = (*BRIDGE_ROWS, JSON_LOGGER, STRUCTLOG, FLOOR, BARE)


@dataclass
class Writer:
    """One way of getting `n` events out, with its wall and CPU time per batch.

    `landed()` (after `close()`) says how many events arrived since `open()`: the lines of
    the writer's file, or what the collector counted; it must be every event sent.
    """

    name: str
    open: Callable[[], None]
    write: Callable[[int], None]
    close: Callable[[], None]
    landed: Callable[[], int]
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    thread_cpu: list[float] = field(default_factory=list)

    def contender(self, events: int, warmup: int) -> Contender:
        def batch() -> list[float]:
            self.write(warmup)
            wall, cpu, thread = time.perf_counter(), time.process_time(), time.thread_time()
            self.write(events)
            self.thread_cpu.append((time.thread_time() - thread) / events)
            self.cpu.append((time.process_time() - cpu) / events)
            self.wall.append((time.perf_counter() - wall) / events)
            return []

        def stop() -> None:
            self.close()
            landed = self.landed()
            if landed != warmup + events:
                raise RuntimeError(f"{self.name}: {landed} landed of {warmup + events} events")

        return Contender(self.name, batch, self.open, stop)


def lines_in(path: Path) -> Callable[[], int]:
    """The lines written to `path`, which is then removed for the next round."""

    def count() -> int:
        lines = path.read_bytes().count(b"\n")
        path.unlink()
        return lines

    return count


def bridge_writer(
    name: str,
    work: Path,
    sink: Callable[[], dict[str, Any]],
    landed: Callable[[], int],
    **config: Any,
) -> Writer:
    """The bridge on `user-login` with one sink (`sink()` builds its config for each round)
    and `config` (app.config keys); a batch ends when `flush()` returned: written, or
    acknowledged by the collector."""
    app = Flask("sink")
    bridge = SignalBridge()

    def open_() -> None:
        app.config.update(BRIDGE_SIGNALS=["user-login"], BRIDGE_SINKS=[sink()], **config)
        bridge.init_app(app)

    def write(n: int) -> None:
        send = LOGIN.send
        for _ in range(n):
            send(**FIELDS)
        if not bridge.flush(timeout=30.0):
            raise RuntimeError(f"{name}: the bridge did not flush within 30 s")

    def close() -> None:
        if not bridge.close(timeout=10.0, app=app):
            raise RuntimeError(f"{name}: the bridge did not close within 10 s")

    return Writer(name, open_, write, close, landed)


def file_bridge_writer(work: Path) -> Writer:
    path = work / "bridge.jsonl"
    sink = {"type": "file", "path": str(path)}
    return bridge_writer(BRIDGE, work, lambda: sink, lines_in(path))


def batched_bridge_writer(work: Path) -> Writer:
    """The file sink with `batch_outside_requests`: the loop's events written 128 at a time."""
    path = work / "batched.jsonl"
    sink = {"type": "file", "path": str(path)}
    return bridge_writer(
        BATCHED, work, lambda: sink, lines_in(path), BRIDGE_BATCH_OUTSIDE_REQUESTS=BATCH_DELAY
    )


def stdout_bridge_writer(work: Path) -> Writer:
    """The stdout sink, with this process's fd 1 redirected to a file for the round (and
    restored after), so that its lines can be counted."""
    path = work / "stdout.jsonl"
    writer = bridge_writer(STDOUT, work, lambda: {"type": "stdout"}, lines_in(path))
    saved: list[int] = []
    open_bridge, close_bridge = writer.open, writer.close

    def open_() -> None:
        sys.stdout.flush()
        saved.append(os.dup(1))
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        os.dup2(fd, 1)
        os.close(fd)
        open_bridge()

    def close() -> None:
        try:
            close_bridge()
        finally:
            sys.stdout.flush()
            os.dup2(saved[0], 1)
            os.close(saved.pop())

    writer.open, writer.close = open_, close
    return writer


def http_bridge_writer(name: str, work: Path, collector: CountingCollector, spool: bool) -> Writer:
    """The http sink (defaults: NDJSON, gzip, 10,000-event queue) posting to the collector on
    a path of its own; `flush()` returns once the collector acknowledged every event."""
    url = collector.url_for(name.replace(" ", "-").replace(",", ""))
    rounds = iter(range(1 << 30))
    before: list[int] = []

    def sink() -> dict[str, Any]:
        before[:] = [collector.count(url)]
        config: dict[str, Any] = {"type": "http", "url": url}
        if spool:
            config["spool_dir"] = str(work / f"spool-{next(rounds)}")
        return config

    return bridge_writer(name, work, sink, lambda: collector.count(url) - before[0])


def json_logger_writer(work: Path) -> Writer:
    path = work / "jsonlogger.jsonl"
    logger = logging.getLogger("benchmarks.sink.jsonlogger")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handlers: list[logging.Handler] = []

    def open_() -> None:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger.addHandler(handler)
        handlers.append(handler)

    def write(n: int) -> None:
        for _ in range(n):
            logger.info("user-login", extra=FIELDS)
        for handler in handlers:
            handler.flush()

    def close() -> None:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        handlers.clear()

    return Writer(JSON_LOGGER, open_, write, close, lines_in(path))


def structlog_writer(work: Path) -> Writer:
    """structlog's fast path: filtering bound logger, orjson renderer, BytesLogger (no stdlib)."""
    path = work / "structlog.jsonl"
    state: dict[str, Any] = {}

    def open_() -> None:
        file = state["file"] = path.open("wb")
        state["log"] = structlog.wrap_logger(
            structlog.BytesLogger(file),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(serializer=orjson.dumps),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        ).bind()

    def write(n: int) -> None:
        info = state["log"].info
        for _ in range(n):
            info("user-login", **FIELDS)

    return Writer(STRUCTLOG, open_, write, lambda: state["file"].close(), lines_in(path))


def floor_writer(work: Path) -> Writer:
    path = work / "floor.jsonl"
    files: list[BinaryIO] = []

    def write(n: int) -> None:
        out = files[0].write
        for _ in range(n):
            out(orjson.dumps(PREBUILT, option=NEWLINE))
        files[0].flush()

    def close() -> None:
        files.pop().close()

    return Writer(FLOOR, lambda: files.append(path.open("ab")), write, close, lines_in(path))


def bare_receiver_writer(work: Path) -> Writer:
    """A receiver with nothing but the unavoidable: encode the kwargs, one `write()`."""
    path = work / "bare.jsonl"
    fds: list[int] = []

    def receiver(sender: Any, /, **kwargs: Any) -> None:
        os.write(fds[0], orjson.dumps(kwargs, option=NEWLINE))

    def open_() -> None:
        fds.append(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640))
        LOGIN.connect(receiver, weak=False)

    def write(n: int) -> None:
        send = LOGIN.send
        for _ in range(n):
            send(**FIELDS)

    def close() -> None:
        LOGIN.disconnect(receiver)
        os.close(fds.pop())

    return Writer(BARE, open_, write, close, lines_in(path))

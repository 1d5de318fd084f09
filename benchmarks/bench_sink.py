"""Events per second into a file, CPU per event, and where one captured event's time goes.

Throughput runs outside any request, as a job worker would: the bridge gets a custom signal
sent in a loop, then `flush()`; the others get the same fields through their own API. Each
contender writes its own file, opened before and closed after its batch (untimed), and the
line count is checked so that a contender cannot win by losing events.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, BinaryIO

import orjson
import structlog
from flask import Flask
from pythonjsonlogger.json import JsonFormatter

from benchmarks.apps import LOGIN
from benchmarks.common import Contender, interleave, markdown_table, median, target_line
from bridge import SignalBridge

__all__ = ["SINK_ROWS", "run"]

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

BRIDGE = "bridge (signal send + flush)"
JSON_LOGGER = "python-json-logger + FileHandler"
STRUCTLOG = "structlog + orjson, BytesLogger"
FLOOR = "floor: orjson.dumps + buffered write"
BARE = "bare receiver: orjson.dumps(kwargs) + os.write"
SINK_ROWS = (BRIDGE, JSON_LOGGER, STRUCTLOG, FLOOR, BARE)


@dataclass
class Writer:
    """One way of getting `n` events into `path`, with its wall and CPU time per batch."""

    name: str
    path: Path
    open: Callable[[], None]
    write: Callable[[int], None]
    close: Callable[[], None]
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def contender(self, events: int, warmup: int) -> Contender:
        def batch() -> list[float]:
            self.write(warmup)
            wall, cpu = time.perf_counter(), time.process_time()
            self.write(events)
            self.wall.append((time.perf_counter() - wall) / events)
            self.cpu.append((time.process_time() - cpu) / events)
            return []

        def stop() -> None:
            self.close()
            lines = self.path.read_bytes().count(b"\n")
            self.path.unlink()
            if lines != warmup + events:
                raise RuntimeError(f"{self.name}: {lines} lines for {warmup + events} events")

        return Contender(self.name, batch, self.open, stop)


def bridge_writer(work: Path) -> Writer:
    path = work / "bridge.jsonl"
    app = Flask("sink")
    app.config.update(
        BRIDGE_SIGNALS=["user-login"], BRIDGE_SINKS=[{"type": "file", "path": str(path)}]
    )
    bridge = SignalBridge()

    def write(n: int) -> None:
        send = LOGIN.send
        for _ in range(n):
            send(**FIELDS)
        if not bridge.flush(timeout=30.0):
            raise RuntimeError("the bridge did not flush within 30 s")

    def close() -> None:
        bridge.close(timeout=10.0, app=app)

    return Writer(BRIDGE, path, lambda: bridge.init_app(app), write, close)


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

    return Writer(JSON_LOGGER, path, open_, write, close)


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

    return Writer(STRUCTLOG, path, open_, write, lambda: state["file"].close())


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

    return Writer(FLOOR, path, lambda: files.append(path.open("ab")), write, close)


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

    return Writer(BARE, path, open_, write, close)


def measure_sinks(work: Path, *, rounds: int, events: int) -> list[Writer]:
    writers = [
        bridge_writer(work),
        json_logger_writer(work),
        structlog_writer(work),
        floor_writer(work),
        bare_receiver_writer(work),
    ]
    interleave([w.contender(events, warmup=50) for w in writers], rounds, seed=2)
    return writers


def sink_section(writers: list[Writer], *, rounds: int, events: int) -> str:
    by_name = {w.name: w for w in writers}
    rate = {w.name: 1.0 / median(w.wall) for w in writers}
    cpu = {w.name: median(w.cpu) * 1e6 for w in writers}
    rows = [
        (
            w.name,
            f"{rate[w.name]:,.0f}",
            f"{median(w.wall) * 1e6:,.2f}",
            f"{cpu[w.name]:,.2f}",
            f"{rate[w.name] / rate[JSON_LOGGER]:.2f}x",
        )
        for w in by_name.values()
    ]
    table = markdown_table(
        ("writer", "events/s", "wall µs / event", "CPU µs / event", "vs python-json-logger"),
        rows,
    )
    return "\n\n".join(
        [
            "## Sink throughput and CPU per event (outside any request)",
            f"{events} events per batch (fields: {', '.join(FIELDS)}), {rounds} interleaved "
            "rounds; medians of per-batch figures. The bridge's batch ends with `flush()`; "
            "CPU is `time.process_time()` (every thread of the process). Every file's line "
            "count was checked against the events sent.",
            table,
            "\n".join(
                [
                    target_line(
                        "bridge throughput vs python-json-logger",
                        rate[BRIDGE] / rate[JSON_LOGGER],
                        8.0,
                        unit="x",
                        at_most=False,
                    ),
                    target_line(
                        "bridge CPU per event vs the bare receiver",
                        cpu[BRIDGE] / cpu[BARE],
                        3.0,
                        unit="x",
                        at_most=True,
                    ),
                ]
            ),
        ]
    )


def run(
    quick: bool = False,
    *,
    rounds: int | None = None,
    events: int | None = None,
    work: Path | None = None,
) -> str:
    """The sink section as Markdown; `quick` (or explicit counts) for a smoke run."""
    rounds = rounds or (2 if quick else 9)
    events = events or (300 if quick else 4000)
    with TemporaryDirectory(prefix="bench-sink-") as tmp:
        writers = measure_sinks(work or Path(tmp), rounds=rounds, events=events)
    return sink_section(writers, rounds=rounds, events=events) + "\n"

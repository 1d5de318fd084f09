"""Events per second into a local HTTP collector, and what `submit` costs the calling thread.

The collector (`benchmarks.collector`) is a separate process on 127.0.0.1 (so it does not share
our GIL) that only counts events: NDJSON lines, JSON-array items, or one per request otherwise.
Contenders, run interleaved in this process, each sending the same pre-encoded event lines (or,
for the logging handlers, the same fields as a log record):

- our `HttpSink` (ndjson, gzip off and on; and with a disk spool), timed from the first
  `submit` to the end of `flush()`, which returns once the collector acknowledged everything;
- the floor: one thread posting 500-line NDJSON batches on a keep-alive `requests.Session`;
- stdlib `logging.handlers.HTTPHandler` (one POST per record);
- python-logstash-async's `AsynchronousLogstashHandler` with its `HttpTransport`.

Every contender's batch ends only when the collector has counted all its events, so nobody
wins by losing events. The slow peers get fewer events per batch: compare rates, not totals.
Submit cost is the calling thread's own CPU time per `submit` (`time.thread_time()`), with
the collector up (the worker sends meanwhile) and down (the worker backs off meanwhile).
"""

from __future__ import annotations

import logging
import logging.handlers
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import orjson
import requests

from benchmarks.collector import CountingCollector, requests_on
from benchmarks.common import Contender, interleave, markdown_table, median, target_line
from bridge.config import HttpSinkSettings
from bridge.sinks.http import HttpSink

__all__ = ["requests_on", "run"]

EVENT: dict[str, Any] = {
    "timestamp": "2026-11-25T08:30:00.123456Z",
    "level": "info",
    "event": "request.finished",
    "signal": "request-finished",
    "service.name": "shop",
    "host.name": "web-1",
    "process.pid": 4242,
    "request_id": "5f0c6b6e-8d4c-4a8e-9a47-0b3f1c2d9e10",
    "http.request.method": "GET",
    "url.path": "/items/42",
    "http.route": "/items/<int:item_id>",
    "client.address": "203.0.113.9",
    "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64) bench",
    "http.response.status_code": 200,
    "duration_ms": 1.734,
    "http.response.body.size": 512,
}
FIELDS = {k.replace(".", "_"): v for k, v in EVENT.items() if k not in ("timestamp", "level")}

OURS = "HttpSink, ndjson, gzip off"
OURS_GZIP = "HttpSink, ndjson, gzip on"
OURS_SPOOL = "HttpSink, ndjson, gzip off, disk spool"
FLOOR = "floor: bare 500-line batching loop, Session.post"
FLOOR_PREPARED = "floor, with prepared requests (as our transport)"
HTTP_HANDLER = "logging.handlers.HTTPHandler"
LOGSTASH = "python-logstash-async, HttpTransport"
THROUGHPUT_ROWS = (OURS, OURS_GZIP, OURS_SPOOL, FLOOR, FLOOR_PREPARED, HTTP_HANDLER, LOGSTASH)


def encoded_lines(count: int) -> list[bytes]:
    """`count` distinct event lines (~500 bytes each), as the encoder would hand them over."""
    return [
        orjson.dumps({**EVENT, "event_id": f"0190b0c2-7f00-7000-8000-{i:012d}"}) + b"\n"
        for i in range(count)
    ]


def closed_port_url() -> tuple[str, socket.socket]:
    """A URL whose port refuses connections (bound, not listening); close the socket after."""
    placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    placeholder.bind(("127.0.0.1", 0))
    return f"http://127.0.0.1:{placeholder.getsockname()[1]}/ingest", placeholder


# -- contenders -------------------------------------------------------------------------------


def sink_settings(url: str, **overrides: Any) -> HttpSinkSettings:
    """Defaults, except gzip off and a queue that holds a whole batch of the benchmark (a
    tight loop outruns any sender; the default 10,000-event queue would drop the rest)."""
    values: dict[str, Any] = {
        "type": "http",
        "name": "bench",
        "url": url,
        "gzip": False,
        "queue_max_events": 1 << 20,
        "queue_max_bytes": 1 << 30,
    }
    values.update(overrides)
    return HttpSinkSettings(**values)


def sink_contender(
    name: str,
    collector: CountingCollector,
    lines: list[bytes],
    work: Path,
    *,
    spool: bool = False,
    **overrides: Any,
) -> Contender:
    """Our sink: submit every line, then flush (the collector has acknowledged them all)."""
    sinks: list[HttpSink] = []
    runs = iter(range(1 << 30))

    def start() -> None:
        spool_dir = work / f"{name}-{next(runs)}" if spool else None
        sinks.append(HttpSink(sink_settings(collector.url, spool_dir=spool_dir, **overrides)))

    def batch() -> list[float]:
        sink = sinks[0]
        before = collector.count()
        submit = sink.submit
        started = time.perf_counter()
        if sum(map(submit, lines)) != len(lines):
            raise RuntimeError(f"{name}: the sink refused events")
        if not sink.flush(120.0):
            raise RuntimeError(f"{name}: flush timed out")
        elapsed = time.perf_counter() - started
        if collector.count() - before != len(lines):
            raise RuntimeError(f"{name}: the collector did not get every event")
        return [len(lines) / elapsed]

    def stop() -> None:
        sinks.pop().close(10.0)

    return Contender(name, batch, start, stop)


def floor_contender(
    name: str, collector: CountingCollector, lines: list[bytes], *, prepared: bool
) -> Contender:
    """One thread batching lines 500 at a time and posting each batch on a keep-alive session.

    `prepared`: send prepared requests with the proxies looked up once, as our transport does,
    instead of `Session.post` (which scans the environment for proxies on every request).
    """
    sessions: list[requests.Session] = []
    headers = {"Content-Type": "application/x-ndjson"}

    def batch() -> list[float]:
        session = sessions[0]
        proxies = requests.utils.get_environ_proxies(collector.url)
        merged = {**session.headers, **headers}

        def post(body: bytes) -> None:
            if prepared:
                request = requests.PreparedRequest()
                request.prepare(method="POST", url=collector.url, headers=merged, data=body)
                response = session.send(request, proxies=proxies)
            else:
                response = session.post(collector.url, data=body, headers=headers)
            response.raise_for_status()

        before = collector.count()
        started = time.perf_counter()
        pending: list[bytes] = []
        for line in lines:
            pending.append(line)
            if len(pending) == 500:
                post(b"".join(pending))
                pending = []
        if pending:
            post(b"".join(pending))
        elapsed = time.perf_counter() - started
        if collector.count() - before != len(lines):
            raise RuntimeError(f"{name}: the collector did not get every event")
        return [len(lines) / elapsed]

    return Contender(
        name, batch, lambda: sessions.append(requests.Session()), lambda: sessions.pop().close()
    )


def logging_contender(
    name: str,
    collector: CountingCollector,
    events: int,
    make_handler: Callable[[], logging.Handler],
) -> Contender:
    logger = logging.getLogger(f"benchmarks.http.{name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handlers: list[logging.Handler] = []

    def start() -> None:
        handlers.append(make_handler())
        logger.addHandler(handlers[0])

    def batch() -> list[float]:
        before = collector.count()
        started = time.perf_counter()
        for _ in range(events):
            logger.info("request.finished", extra=FIELDS)
        collector.wait_for(before + events)
        return [events / (time.perf_counter() - started)]

    def stop() -> None:
        handler = handlers.pop()
        logger.removeHandler(handler)
        handler.close()

    return Contender(name, batch, start, stop)


def http_handler(collector: CountingCollector) -> logging.Handler:
    return logging.handlers.HTTPHandler(f"127.0.0.1:{collector.port}", "/ingest", method="POST")


def logstash_handler(collector: CountingCollector) -> logging.Handler:
    from logstash_async.handler import AsynchronousLogstashHandler
    from logstash_async.transport import HttpTransport

    transport = HttpTransport("127.0.0.1", collector.port, ssl_enable=False, timeout=5.0)
    handler: logging.Handler = AsynchronousLogstashHandler(
        "127.0.0.1", collector.port, database_path=None, transport=transport
    )
    return handler


def submit_contender(
    name: str, url: str, lines: list[bytes], work: Path, *, spool: bool, up: bool
) -> Contender:
    """Calling-thread CPU µs per submit into a fresh sink (its queue never fills)."""
    sinks: list[HttpSink] = []
    runs = iter(range(1 << 30))

    def start() -> None:
        spool_dir = work / f"submit-{name}-{next(runs)}" if spool else None
        sinks.append(HttpSink(sink_settings(url, spool_dir=spool_dir)))

    def batch() -> list[float]:
        submit = sinks[0].submit
        cpu = time.thread_time()
        for line in lines:
            submit(line)
        return [(time.thread_time() - cpu) / len(lines) * 1e6]

    def stop() -> None:
        sinks.pop().close(10.0 if up else 0.05)

    return Contender(name, batch, start, stop)


def measure(work: Path, *, quick: bool) -> dict[str, list[float]]:
    rounds = 2 if quick else 7
    fast, slow_handler, slow_logstash = (10_000, 100, 300) if quick else (60_000, 600, 1_500)
    submits = 2_000 if quick else 20_000
    lines = encoded_lines(fast)
    collector = CountingCollector()
    down_url, placeholder = closed_port_url()
    try:
        contenders = [
            sink_contender(OURS, collector, lines, work),
            sink_contender(OURS_GZIP, collector, lines, work, gzip=True),
            sink_contender(OURS_SPOOL, collector, lines, work, spool=True),
            floor_contender(FLOOR, collector, lines, prepared=False),
            floor_contender(FLOOR_PREPARED, collector, lines, prepared=True),
            logging_contender(
                HTTP_HANDLER, collector, slow_handler, lambda: http_handler(collector)
            ),
            logging_contender(
                LOGSTASH, collector, slow_logstash, lambda: logstash_handler(collector)
            ),
        ]
        few = lines[:submits]
        costs = [
            submit_contender("memory, up", collector.url, few, work, spool=False, up=True),
            submit_contender("memory, down", down_url, few, work, spool=False, up=False),
            submit_contender("spool, up", collector.url, few, work, spool=True, up=True),
            submit_contender("spool, down", down_url, few, work, spool=True, up=False),
        ]
        interleave(contenders + costs, rounds, seed=3)
    finally:
        placeholder.close()
        collector.close()
    return {c.name: c.samples for c in contenders + costs}


def ratio(samples: dict[str, list[float]], name: str, base: str) -> float:
    """The median of per-round ratios: both ran in the same round, so drift cancels out."""
    return median(a / b for a, b in zip(samples[name], samples[base], strict=True))


def section(samples: dict[str, list[float]], *, quick: bool) -> str:
    rate = {name: median(samples[name]) for name in THROUGHPUT_ROWS}
    rows = [
        (name, f"{rate[name]:,.0f}", f"{ratio(samples, name, FLOOR):.2f}x")
        for name in THROUGHPUT_ROWS
    ]
    throughput = markdown_table(("sender", "events/s (median)", "vs floor (median ratio)"), rows)
    cost = {
        name: median(samples[name])
        for name in ("memory, up", "memory, down", "spool, up", "spool, down")
    }
    down_vs_up = {
        kind: ratio(samples, f"{kind}, down", f"{kind}, up") for kind in ("memory", "spool")
    }
    cost_rows = [
        (
            kind,
            f"{cost[f'{kind}, up']:.2f}",
            f"{cost[f'{kind}, down']:.2f}",
            f"{down_vs_up[kind]:.2f}x",
        )
        for kind in ("memory", "spool")
    ]
    cost_table = markdown_table(
        ("sink", "collector up: µs / submit", "collector down: µs / submit", "down / up"),
        cost_rows,
    )
    targets = [
        target_line(
            "HttpSink (gzip off) vs floor",
            ratio(samples, OURS, FLOOR),
            0.8,
            unit="x",
            at_most=False,
        ),
        target_line(
            "HttpSink (gzip off) vs the prepared-request floor",
            ratio(samples, OURS, FLOOR_PREPARED),
            0.8,
            unit="x",
            at_most=False,
        ),
        target_line(
            "submit cost, collector down vs up (memory)",
            down_vs_up["memory"],
            1.2,
            unit="x",
            at_most=True,
        ),
        target_line(
            "submit cost, collector down vs up (spool)",
            down_vs_up["spool"],
            1.2,
            unit="x",
            at_most=True,
        ),
        target_line(
            "spool-on vs spool-off throughput",
            ratio(samples, OURS_SPOOL, OURS),
            0.5,
            unit="x",
            at_most=False,
        ),
    ]
    note = " (quick run: numbers are not meaningful)" if quick else ""
    return "\n\n".join(
        [
            "## HTTP sink: throughput into a local collector, and submit cost" + note,
            "A counting collector in its own process on 127.0.0.1; contenders interleaved in one "
            "process, medians over rounds. Each batch ends when the collector has every event "
            "(ours: `flush()` returned; checked against the collector's count). ~500-byte "
            "event lines; the logging handlers get the same fields as a record. The slow peers "
            "send fewer events per batch: compare rates.",
            throughput,
            "Submit cost: the calling thread's own CPU time (`time.thread_time()`) per "
            "`submit` into a fresh sink, while its worker sends (up) or backs off against a "
            "refused port (down).",
            cost_table,
            "\n".join(targets),
        ]
    )


def run(quick: bool = False) -> str:
    """The HTTP section as Markdown; `quick` for a smoke run with small counts."""
    with TemporaryDirectory(prefix="bench-http-") as tmp:
        samples = measure(Path(tmp), quick=quick)
    return section(samples, quick=quick) + "\n"


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))

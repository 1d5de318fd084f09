"""What the bridge costs a Flask request, against a bare app and plain receivers.

Every contender has its own copy of the same small app (flash, custom `user-login` signal, a
template with a list) and is connected only while its own batch runs: `init_app` / `close`
for the bridge, `connect` / `disconnect` for the plain receivers. So the bare app's batches
run with no receiver on any signal, exactly as an app without the bridge would.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import blinker
import flask.signals
import orjson
from flask import Flask, request
from pythonjsonlogger.json import JsonFormatter

from benchmarks.apps import BUILTIN_NAMES, LOGIN, PAGE, build_app, count_lines, naive_receiver
from benchmarks.common import Contender, interleave, markdown_table, median, target_line
from bridge import SignalBridge

__all__ = ["REQUEST_ROWS", "run"]

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


def _nothing() -> None:
    return None


@dataclass
class Site:
    """One contender's app, how it is switched on and off, and how many events it wrote."""

    label: str
    app: Flask
    connect: Callable[[], None] = _nothing
    disconnect: Callable[[], None] = _nothing
    events: Callable[[], int] = lambda: 0
    requests: int = 0
    written: int = 0
    samples: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def contender(self, batch: int, warmup: int) -> Contender:
        client = self.app.test_client(use_cookies=False)

        def run_batch() -> list[float]:
            for _ in range(warmup):
                status = client.post("/login").status_code
                if status != 200:
                    raise RuntimeError(f"{self.label}: POST /login answered {status}")
            samples = []
            wall, cpu = time.perf_counter_ns, time.thread_time_ns
            for _ in range(batch):
                started, started_cpu = wall(), cpu()
                client.post("/login")
                ended_cpu, ended = cpu(), wall()
                samples.append((ended - started) / 1000.0)
                self.cpu.append((ended_cpu - started_cpu) / 1000.0)
            self.requests += warmup + batch
            return samples

        return Contender(self.label, run_batch, self.connect, self.disconnect, self.samples)


def bridge_site(label: str, name: str, work: Path, signals: list[str]) -> Site:
    path = work / f"{name}.jsonl"
    app = build_app(
        name, work, BRIDGE_SIGNALS=signals, BRIDGE_SINKS=[{"type": "file", "path": str(path)}]
    )
    bridge = SignalBridge()

    def disconnect() -> None:
        if not bridge.close(timeout=10.0, app=app):
            raise RuntimeError(f"{label}: the bridge did not flush within 10 s")

    return Site(label, app, lambda: bridge.init_app(app), disconnect, lambda: count_lines(path))


def json_logger_site(work: Path) -> Site:
    """The same three events through python-json-logger and a `logging.FileHandler`."""
    app = build_app("jsonlogger", work)
    path = work / "jsonlogger.jsonl"
    logger = logging.getLogger("benchmarks.jsonlogger")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handlers: list[logging.Handler] = []

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

    def connect() -> None:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger.addHandler(handler)
        handlers.append(handler)
        for signal, receiver in wiring:
            signal.connect(receiver, sender=app, weak=False)

    def disconnect() -> None:
        for signal, receiver in wiring:
            signal.disconnect(receiver)
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        handlers.clear()

    return Site(JSON_LOGGER, app, connect, disconnect, lambda: count_lines(path))


def naive_site(work: Path) -> Site:
    app = build_app("naive", work)
    captured: list[dict[str, Any]] = []
    seen = [0]
    wiring = [
        (getattr(flask.signals, name), naive_receiver(captured, name)) for name in BUILTIN_NAMES
    ]

    def connect() -> None:
        for signal, receiver in wiring:
            signal.connect(receiver, sender=app, weak=False)

    def disconnect() -> None:
        for signal, receiver in wiring:
            signal.disconnect(receiver)
        seen[0] += len(captured)
        captured.clear()

    return Site(NAIVE, app, connect, disconnect, lambda: seen[0])


def minimal_site(work: Path) -> Site:
    """The least a receiver can do on the default set: encode what it got, one `write()`."""
    app = build_app("minimal", work)
    path = work / "minimal.jsonl"
    fds: list[int] = []

    def write(fields: dict[str, Any]) -> None:
        os.write(fds[0], orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE))

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

    def connect() -> None:
        fds.append(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640))
        for signal, receiver in wiring:
            signal.connect(receiver, sender=app, weak=False)

    def disconnect() -> None:
        for signal, receiver in wiring:
            signal.disconnect(receiver)
        os.close(fds.pop())

    return Site(MINIMAL, app, connect, disconnect, lambda: count_lines(path))


def measure_requests(work: Path, *, rounds: int, batch: int, warmup: int) -> list[Site]:
    (work / "page.html").write_text(PAGE)
    sites = [
        Site(BARE, build_app("bare", work)),
        bridge_site(ONE, "one", work, ["user-login"]),
        bridge_site(DEFAULT, "default", work, ["default"]),
        bridge_site(DEFAULT_LOGIN, "default-login", work, ["default", "user-login"]),
        bridge_site(BUILTIN, "builtin", work, ["builtin"]),
        minimal_site(work),
        json_logger_site(work),
        naive_site(work),
        Site(STRING, build_app("string", work, from_string=True)),
    ]
    contenders = [site.contender(batch, warmup) for site in sites]
    interleave(contenders, rounds)
    for site in sites:
        site.written = site.events()
    return sites


def request_section(sites: list[Site], *, rounds: int, batch: int) -> str:
    wall = {site.label: median(site.samples) for site in sites}
    cpu = {site.label: median(site.cpu) for site in sites}
    rows = []
    for site in sites:
        events = site.written / site.requests if site.requests else 0.0
        rows.append(
            (
                site.label,
                f"{events:.1f}",
                f"{wall[site.label]:,.1f}",
                f"{wall[site.label] - wall[BARE]:+,.1f}",
                f"{(wall[site.label] / wall[BARE] - 1) * 100:+.1f}%",
                f"{cpu[site.label]:,.1f}",
                f"{cpu[site.label] - cpu[BARE]:+,.1f}",
                f"{(cpu[site.label] / cpu[BARE] - 1) * 100:+.1f}%",
            )
        )
    headers = (
        "variant",
        "events / request",
        "median µs",
        "overhead µs",
        "overhead %",
        "median CPU µs",
        "CPU overhead µs",
        "CPU overhead %",
    )
    wall_pct = {label: (value / wall[BARE] - 1) * 100 for label, value in wall.items()}
    cpu_pct = {label: (value / cpu[BARE] - 1) * 100 for label, value in cpu.items()}

    def against_string(label: str) -> str:
        return f"{(wall[label] - wall[BARE]) / wall[STRING] * 100:+.1f}%"

    return "\n\n".join(
        [
            "## Request overhead (Flask test client)",
            "`POST /login`: flashes a message, sends the custom `user-login` signal, renders a "
            "small template (a file, compiled once and cached) with a list. Each variant is its "
            f"own app; they run interleaved: {rounds} rounds of {batch} timed requests each, in "
            "a shuffled order, and only the variant being timed is connected. Medians of "
            "per-request wall time and of per-request CPU time (thread time: what the request "
            "itself burns, immune to neighbours taking the CPU away). An event costs more here "
            "than in the tight loops of the next sections: a request runs the capture path "
            "once or a few times with cold caches. The floor row is what any receiver pays.",
            markdown_table(headers, rows),
            "\n".join(
                [
                    target_line(
                        "default set, wall", wall_pct[DEFAULT], 5.0, unit="%", at_most=True
                    ),
                    target_line("default set, CPU", cpu_pct[DEFAULT], 5.0, unit="%", at_most=True),
                    target_line(
                        "all ten built-ins, wall",
                        wall_pct[BUILTIN],
                        15.0,
                        unit="%",
                        at_most=True,
                    ),
                    target_line(
                        "all ten built-ins, CPU", cpu_pct[BUILTIN], 15.0, unit="%", at_most=True
                    ),
                    f"- reference: the floor on the default set adds {wall_pct[MINIMAL]:+.1f}% "
                    f"wall, {cpu_pct[MINIMAL]:+.1f}% CPU.",
                    f"- reference: the naive receiver on all ten adds {wall_pct[NAIVE]:+.1f}% "
                    f"wall, {cpu_pct[NAIVE]:+.1f}% CPU (the issue expected about +26%).",
                    "- reference: the same µs overheads measured against the "
                    "render_template_string request instead: default "
                    f"{against_string(DEFAULT)}, all ten {against_string(BUILTIN)}, naive "
                    f"{against_string(NAIVE)}.",
                ]
            ),
        ]
    )


def run(
    quick: bool = False,
    *,
    rounds: int | None = None,
    batch: int | None = None,
    work: Path | None = None,
) -> str:
    """The section as Markdown; `quick` (or explicit counts) for a smoke run."""
    rounds = rounds or (3 if quick else 50)
    batch = batch or (10 if quick else 40)
    with TemporaryDirectory(prefix="bench-request-") as tmp:
        sites = measure_requests(work or Path(tmp), rounds=rounds, batch=batch, warmup=3)
    return request_section(sites, rounds=rounds, batch=batch) + "\n"

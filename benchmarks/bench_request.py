"""What the bridge costs a Flask request, and what one captured event costs the request thread.

Every contender has its own copy of the same small app (flash, custom `user-login` signal, a
template with a list) and is connected only while its own batch runs: `init_app` / `close`
for the bridge, `connect` / `disconnect` for the plain receivers. So the bare app's batches
run with no receiver on any signal, exactly as an app without the bridge would.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import blinker
import flask.signals
from flask import Flask, current_app, flash, has_request_context, render_template, request
from pythonjsonlogger.json import JsonFormatter

from benchmarks.common import Contender, interleave, markdown_table, median, target_line
from bridge import SignalBridge

__all__ = ["CAPTURE_ROWS", "REQUEST_ROWS", "run"]

LOGIN = blinker.signal("user-login")  # defined before any init_app, as an app would
BUILTIN_NAMES = (
    "request_started",
    "request_finished",
    "got_request_exception",
    "request_tearing_down",
    "appcontext_pushed",
    "appcontext_popped",
    "appcontext_tearing_down",
    "before_render_template",
    "template_rendered",
    "message_flashed",
)
PAGE = (
    "<h1>Welcome</h1>{% for message in get_flashed_messages() %}<p>{{ message }}</p>{% endfor %}"
    "<ul>{% for item in items %}<li>{{ item }}</li>{% endfor %}</ul>"
)
ITEMS = ["tea", "coffee", "cocoa", "juice", "water"]

BARE = "bare app (no bridge)"
DEFAULT = "bridge: default + user-login, file sink"
BUILTIN = "bridge: all ten built-ins + user-login, file sink"
JSON_LOGGER = "python-json-logger: 3 receivers, FileHandler"
NAIVE = "naive receiver on all ten built-ins"
REQUEST_ROWS = (BARE, DEFAULT, BUILTIN, JSON_LOGGER, NAIVE)
NO_RECEIVER = "no receiver"
CAPTURE_BRIDGE = "bridge, file sink"
CAPTURE_NAIVE = "naive dict-into-a-list receiver"
CAPTURE_ROWS = (NO_RECEIVER, CAPTURE_BRIDGE, CAPTURE_NAIVE)


def build_app(name: str, templates: Path, **config: Any) -> Flask:
    """The measured app: one route that flashes, sends `user-login` and renders a template."""
    app = Flask(name, template_folder=str(templates))
    app.secret_key = "benchmark"
    app.config.update(config)

    @app.post("/login")
    def login() -> str:
        LOGIN.send(current_app._get_current_object(), user_id=7, username="ada", remember=True)
        flash("welcome back, ada", "info")
        return render_template("page.html", items=ITEMS)

    return app


def naive_receiver(captured: list[dict[str, Any]], signal_name: str) -> Callable[..., None]:
    """What a first attempt looks like: copy the request into a dict, append it to a list."""

    def receive(sender: Any, /, **kwargs: Any) -> None:
        entry: dict[str, Any] = {
            "signal": signal_name,
            "time": datetime.now(UTC).isoformat(),
            "id": str(uuid.uuid4()),
        }
        if has_request_context():
            entry.update(
                method=request.method,
                path=request.path,
                url=request.url,
                headers=dict(request.headers),
                remote_addr=request.remote_addr,
                args=request.args.to_dict(),
            )
        captured.append(entry)

    return receive


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


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
    samples: list[float] = field(default_factory=list)

    def contender(self, batch: int, warmup: int) -> Contender:
        client = self.app.test_client(use_cookies=False)

        def run_batch() -> list[float]:
            for _ in range(warmup):
                status = client.post("/login").status_code
                if status != 200:
                    raise RuntimeError(f"{self.label}: POST /login answered {status}")
            samples = []
            for _ in range(batch):
                started = time.perf_counter_ns()
                client.post("/login")
                samples.append((time.perf_counter_ns() - started) / 1000.0)
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


def measure_requests(work: Path, *, rounds: int, batch: int, warmup: int) -> list[Site]:
    (work / "page.html").write_text(PAGE)
    sites = [
        Site(BARE, build_app("bare", work)),
        bridge_site(DEFAULT, "default", work, ["default", "user-login"]),
        bridge_site(BUILTIN, "builtin", work, ["builtin", "user-login"]),
        json_logger_site(work),
        naive_site(work),
    ]
    contenders = [site.contender(batch, warmup) for site in sites]
    interleave(contenders, rounds)
    return sites


def request_section(sites: list[Site], *, rounds: int, batch: int) -> str:
    medians = {site.label: median(site.samples) for site in sites}
    bare = medians[BARE]
    rows = []
    for site in sites:
        value = medians[site.label]
        events = site.events() / site.requests if site.requests else 0.0
        rows.append(
            (
                site.label,
                f"{events:.1f}",
                f"{value:,.1f}",
                f"{value - bare:+,.1f}",
                f"{(value / bare - 1) * 100:+.1f}%",
            )
        )
    table = markdown_table(
        ("variant", "events / request", "median µs", "overhead µs", "overhead %"), rows
    )
    pct = {label: (value / bare - 1) * 100 for label, value in medians.items()}
    return "\n\n".join(
        [
            "## Request overhead (Flask test client)",
            "`POST /login`: flashes a message, sends the custom `user-login` signal, renders a "
            "small cached template with a list. Each variant is its own app; the variants "
            f"run interleaved: {rounds} rounds of {batch} timed requests each, in a shuffled "
            "order, and only the variant being timed is connected. Median of per-request times.",
            table,
            "\n".join(
                [
                    target_line(
                        "default set + user-login", pct[DEFAULT], 5.0, unit="%", at_most=True
                    ),
                    target_line("all ten + user-login", pct[BUILTIN], 15.0, unit="%", at_most=True),
                    f"- reference: the naive receiver on all ten adds {pct[NAIVE]:+.1f}% "
                    "(the issue expected about +26%).",
                ]
            ),
        ]
    )


def measure_capture(work: Path, *, rounds: int, sends: int) -> dict[str, list[float]]:
    """µs per `LOGIN.send(app, ...)` inside a request context, for each receiver."""
    path = work / "capture.jsonl"
    app = build_app(
        "capture",
        work,
        BRIDGE_SIGNALS=["user-login"],
        BRIDGE_SINKS=[{"type": "file", "path": str(path)}],
    )
    bridge = SignalBridge()
    captured: list[dict[str, Any]] = []
    naive = naive_receiver(captured, "user-login")

    def timed() -> list[float]:
        with app.test_request_context("/login", method="POST", headers={"User-Agent": "bench"}):
            for _ in range(10):
                LOGIN.send(app, user_id=7, username="ada", remember=True)
            started = time.perf_counter()
            for _ in range(sends):
                LOGIN.send(app, user_id=7, username="ada", remember=True)
            return [(time.perf_counter() - started) / sends * 1e6]

    def close_bridge() -> None:
        if not bridge.close(timeout=10.0, app=app):
            raise RuntimeError("the capture bridge did not flush within 10 s")
        path.unlink(missing_ok=True)

    def disconnect_naive() -> None:
        LOGIN.disconnect(naive)
        captured.clear()

    contenders = [
        Contender(NO_RECEIVER, timed),
        Contender(CAPTURE_BRIDGE, timed, lambda: bridge.init_app(app), close_bridge),
        Contender(
            CAPTURE_NAIVE,
            timed,
            lambda: LOGIN.connect(naive, sender=app, weak=False),
            disconnect_naive,
        ),
    ]
    interleave(contenders, rounds, seed=3)
    return {contender.name: contender.samples for contender in contenders}


def capture_section(samples: dict[str, list[float]], *, rounds: int, sends: int) -> str:
    base = median(samples[NO_RECEIVER])
    rows = [
        (name, f"{median(values):,.2f}", f"{median(values) - base:,.2f}")
        for name, values in samples.items()
    ]
    ours = median(samples[CAPTURE_BRIDGE]) - base
    naive = median(samples[CAPTURE_NAIVE]) - base
    return "\n\n".join(
        [
            "## Cost of one captured event on the request thread",
            f"`user-login` sent {sends} times inside one request context (so the event carries "
            f"the request fields), {rounds} interleaved rounds; cost = median µs per send minus "
            "the same send with no receiver.",
            markdown_table(("receiver", "µs per send", "µs per captured event"), rows),
            target_line(
                "bridge, µs per captured event (naive receiver: "
                f"{naive:,.2f} µs; the issue expected ~20 µs)",
                ours,
                naive,
                unit=" µs",
                at_most=True,
            ),
        ]
    )


def run(
    quick: bool = False,
    *,
    rounds: int | None = None,
    batch: int | None = None,
    sends: int | None = None,
    work: Path | None = None,
) -> str:
    """Both sections as Markdown; `quick` (or explicit counts) for a smoke run."""
    request_rounds = rounds or (3 if quick else 60)
    request_batch = batch or (10 if quick else 40)
    capture_rounds = rounds or (3 if quick else 21)
    capture_sends = sends or (200 if quick else 2000)
    with TemporaryDirectory(prefix="bench-request-") as tmp:
        base = work or Path(tmp)
        sites = measure_requests(
            base, rounds=request_rounds, batch=request_batch, warmup=2 if quick else 3
        )
        first = request_section(sites, rounds=request_rounds, batch=request_batch)
        samples = measure_capture(base, rounds=capture_rounds, sends=capture_sends)
        second = capture_section(samples, rounds=capture_rounds, sends=capture_sends)
    return f"{first}\n\n{second}\n"

"""What one event costs a request, on the two paths it can take, against a naive receiver.

The custom `user-login` signal is sent in a loop, with each receiver connected only during its
own batches, on both paths an event can take:

- captured inside a real request: the sends happen in a view reached through the app's WSGI
  callable (`bridge.streaming.RequestClock`), so each send only notes the event in the
  request's list, and the events are built, encoded and written in rounds of
  `bridge.pending.MAX_EVENTS` (one `write()` per round) at the latest when the request ends.
  The whole request is timed (captures and writes), so nothing of the event is left out.
- written at once: the sends happen inside a request context pushed by hand (no WSGI wrapper
  saw the request, as in a test or a script), so each event is built, spliced and written
  when it is sent, one `write()` per event.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from flask import Flask, request
from werkzeug.test import EnvironBuilder

from benchmarks.apps import LOGIN, build_app, naive_receiver
from benchmarks.common import Contender, interleave, markdown_table, median, target_line
from bridge import SignalBridge
from bridge.pending import MAX_EVENTS

__all__ = ["CAPTURE_ROWS", "PUSHED_ROWS", "REQUEST_ROWS", "run"]

NO_RECEIVER = "no receiver, real request"
CAPTURE_BRIDGE = "bridge, file sink: captured in a real request, written at its end"
CAPTURE_NAIVE = "naive dict-into-a-list receiver, real request"
NO_RECEIVER_PUSHED = "no receiver, request context pushed by hand"
IMMEDIATE_BRIDGE = "bridge, file sink: written at once (request context pushed by hand)"
IMMEDIATE_NAIVE = "naive dict-into-a-list receiver, request context pushed by hand"
REQUEST_ROWS = (NO_RECEIVER, CAPTURE_BRIDGE, CAPTURE_NAIVE)
PUSHED_ROWS = (NO_RECEIVER_PUSHED, IMMEDIATE_BRIDGE, IMMEDIATE_NAIVE)
CAPTURE_ROWS = REQUEST_ROWS + PUSHED_ROWS
BASELINE = {name: NO_RECEIVER for name in REQUEST_ROWS} | {
    name: NO_RECEIVER_PUSHED for name in PUSHED_ROWS
}

WARM_SENDS = 10  # untimed sends before each timed batch: the same on both paths
HEADERS = {"User-Agent": "Mozilla/5.0 (benchmark)"}

Samples = dict[str, list[float]]


def _started(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    if not status.startswith("200"):
        raise RuntimeError(f"the capture request answered {status}")


def request_caller(app: Flask, sends: int) -> Callable[[int], None]:
    """`call(n)`: one POST through the app's WSGI callable whose view sends `user-login` n
    times (n is `sends` or `WARM_SENDS`); the body is read and closed, as a server would."""

    @app.post("/logins")
    def logins() -> str:
        for _ in range(int(request.args["n"])):
            LOGIN.send(app, user_id=7, username="ada", remember=True)
        return "ok"

    environs = {
        n: EnvironBuilder(
            path="/logins", method="POST", headers=HEADERS, query_string={"n": str(n)}
        ).get_environ()
        for n in (sends, WARM_SENDS)
    }

    def call(n: int) -> None:
        body = app(dict(environs[n]), _started)
        try:
            for _ in body:
                pass
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    return call


def measure_capture(work: Path, *, rounds: int, sends: int) -> tuple[Samples, Samples]:
    """Wall and CPU µs per `LOGIN.send(app, ...)`, per row (receiver and path)."""
    path = work / "capture.jsonl"
    app = build_app(
        "capture",
        work,
        BRIDGE_SIGNALS=["user-login"],
        BRIDGE_SINKS=[{"type": "file", "path": str(path)}],
    )
    call = request_caller(app, sends)
    bridge = SignalBridge()
    # The WSGI wrapper stays on the app once installed: install it before any row runs, so
    # every real request (with or without a receiver) goes through it alike.
    bridge.init_app(app)
    bridge.close(timeout=10.0, app=app)
    captured: list[dict[str, Any]] = []
    naive = naive_receiver(captured, "user-login")
    cpu: Samples = {name: [] for name in CAPTURE_ROWS}

    def in_request(name: str) -> Callable[[], list[float]]:
        def batch() -> list[float]:
            call(WARM_SENDS)
            started, started_cpu = time.perf_counter_ns(), time.thread_time_ns()
            call(sends)
            cpu[name].append((time.thread_time_ns() - started_cpu) / sends / 1000.0)
            return [(time.perf_counter_ns() - started) / sends / 1000.0]

        return batch

    def pushed(name: str) -> Callable[[], list[float]]:
        def batch() -> list[float]:
            with app.test_request_context("/login", method="POST", headers=HEADERS):
                for _ in range(WARM_SENDS):
                    LOGIN.send(app, user_id=7, username="ada", remember=True)
                started, started_cpu = time.perf_counter_ns(), time.thread_time_ns()
                for _ in range(sends):
                    LOGIN.send(app, user_id=7, username="ada", remember=True)
                cpu[name].append((time.thread_time_ns() - started_cpu) / sends / 1000.0)
                return [(time.perf_counter_ns() - started) / sends / 1000.0]

        return batch

    def close_bridge() -> None:
        if not bridge.close(timeout=10.0, app=app):
            raise RuntimeError("the capture bridge did not flush within 10 s")
        lines = path.read_bytes().count(b"\n") if path.exists() else 0
        if lines != WARM_SENDS + sends:
            raise RuntimeError(f"the capture bridge wrote {lines} of {WARM_SENDS + sends} events")
        path.unlink()

    def connect_naive() -> None:
        LOGIN.connect(naive, sender=app, weak=False)

    def disconnect_naive() -> None:
        LOGIN.disconnect(naive)
        if len(captured) != WARM_SENDS + sends:
            raise RuntimeError(f"the naive receiver kept {len(captured)} events")
        captured.clear()

    def init_bridge() -> None:
        bridge.init_app(app)

    contenders = [
        Contender(NO_RECEIVER, in_request(NO_RECEIVER)),
        Contender(CAPTURE_BRIDGE, in_request(CAPTURE_BRIDGE), init_bridge, close_bridge),
        Contender(CAPTURE_NAIVE, in_request(CAPTURE_NAIVE), connect_naive, disconnect_naive),
        Contender(NO_RECEIVER_PUSHED, pushed(NO_RECEIVER_PUSHED)),
        Contender(IMMEDIATE_BRIDGE, pushed(IMMEDIATE_BRIDGE), init_bridge, close_bridge),
        Contender(IMMEDIATE_NAIVE, pushed(IMMEDIATE_NAIVE), connect_naive, disconnect_naive),
    ]
    interleave(contenders, rounds, seed=3)
    return {contender.name: contender.samples for contender in contenders}, cpu


def _targets(
    bridge: str, naive: str, cost: dict[str, float], cost_cpu: dict[str, float]
) -> list[str]:
    what = "captured in a real request" if bridge == CAPTURE_BRIDGE else "written at once"
    return [
        target_line(
            f"bridge µs per event, {what}, {clock}, vs the naive receiver's {costs[naive]:,.2f} µs",
            costs[bridge],
            costs[naive],
            unit=" µs",
            at_most=True,
        )
        for clock, costs in (("wall", cost), ("CPU", cost_cpu))
    ]


def capture_section(wall: Samples, cpu: Samples, *, rounds: int, sends: int) -> str:
    cost = {name: median(wall[name]) - median(wall[BASELINE[name]]) for name in CAPTURE_ROWS}
    cost_cpu = {name: median(cpu[name]) - median(cpu[BASELINE[name]]) for name in CAPTURE_ROWS}
    rows = [
        (
            name,
            f"{median(wall[name]):,.2f}",
            f"{cost[name]:,.2f}",
            f"{median(cpu[name]):,.2f}",
            f"{cost_cpu[name]:,.2f}",
        )
        for name in CAPTURE_ROWS
    ]
    headers = (
        "receiver and path",
        "µs per send",
        "µs per event",
        "CPU µs per send",
        "CPU µs per event",
    )
    rounds_of = -(-sends // MAX_EVENTS)
    return "\n\n".join(
        [
            "## Cost of one captured event on the request thread",
            f"`user-login` sent {sends} times per batch, {rounds} interleaved rounds, on the "
            "two paths an event can take. **Real request** rows: the sends happen in a view "
            "reached through the app's WSGI callable (a POST, body read and closed), so the "
            "bridge only captures each event when it is sent and builds, encodes and writes "
            f"them in rounds of {MAX_EVENTS} (here {rounds_of} `write()` calls), the last when "
            "the app has returned; the whole request is timed and divided by the sends. "
            "**Pushed by hand** rows: the sends happen in `app.test_request_context()`, which "
            "no WSGI wrapper saw, so the bridge builds, splices and writes each event when it "
            "is sent (one `write()` each), as outside a request. Cost per event = median per "
            "send minus the no-receiver row of the same path (the request, or the send, with "
            "nothing connected; the bridge's WSGI wrapper stays on the app for every real-"
            "request row); wall time and thread CPU time. The captured path costs less "
            "because the request's events share their request fields, warm code and one "
            "system call per round; each batch's file was checked to hold every event.",
            markdown_table(headers, rows),
            "\n".join(
                [
                    *_targets(CAPTURE_BRIDGE, CAPTURE_NAIVE, cost, cost_cpu),
                    *_targets(IMMEDIATE_BRIDGE, IMMEDIATE_NAIVE, cost, cost_cpu),
                    "- reference: the issue expected the naive receiver at ~20 µs.",
                ]
            ),
        ]
    )


def run(
    quick: bool = False,
    *,
    rounds: int | None = None,
    sends: int | None = None,
    work: Path | None = None,
) -> str:
    """The section as Markdown; `quick` (or explicit counts) for a smoke run."""
    rounds = rounds or (3 if quick else 21)
    sends = sends or (200 if quick else 2000)
    with TemporaryDirectory(prefix="bench-capture-") as tmp:
        wall, cpu = measure_capture(work or Path(tmp), rounds=rounds, sends=sends)
    return capture_section(wall, cpu, rounds=rounds, sends=sends) + "\n"

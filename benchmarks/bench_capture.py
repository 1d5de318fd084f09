"""What one captured event costs the request thread, against a naive receiver.

The custom `user-login` signal is sent in a loop inside one request context, so the event
carries the request fields, with each receiver connected only during its own batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from benchmarks.apps import LOGIN, build_app, naive_receiver
from benchmarks.common import Contender, interleave, markdown_table, median, target_line
from bridge import SignalBridge

__all__ = ["CAPTURE_ROWS", "run"]

NO_RECEIVER = "no receiver"
CAPTURE_BRIDGE = "bridge, file sink"
CAPTURE_NAIVE = "naive dict-into-a-list receiver"
CAPTURE_ROWS = (NO_RECEIVER, CAPTURE_BRIDGE, CAPTURE_NAIVE)

Samples = dict[str, list[float]]


def measure_capture(work: Path, *, rounds: int, sends: int) -> tuple[Samples, Samples]:
    """Wall and CPU µs per `LOGIN.send(app, ...)` inside a request context, per receiver."""
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
    cpu: Samples = {name: [] for name in CAPTURE_ROWS}

    def timed(name: str) -> Callable[[], list[float]]:
        def batch() -> list[float]:
            headers = {"User-Agent": "Mozilla/5.0 (benchmark)"}
            with app.test_request_context("/login", method="POST", headers=headers):
                for _ in range(10):
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
        path.unlink(missing_ok=True)

    def connect_naive() -> None:
        LOGIN.connect(naive, sender=app, weak=False)

    def disconnect_naive() -> None:
        LOGIN.disconnect(naive)
        captured.clear()

    contenders = [
        Contender(NO_RECEIVER, timed(NO_RECEIVER)),
        Contender(
            CAPTURE_BRIDGE, timed(CAPTURE_BRIDGE), lambda: bridge.init_app(app), close_bridge
        ),
        Contender(
            CAPTURE_NAIVE,
            timed(CAPTURE_NAIVE),
            connect_naive,
            disconnect_naive,
        ),
    ]
    interleave(contenders, rounds, seed=3)
    return {contender.name: contender.samples for contender in contenders}, cpu


def capture_section(wall: Samples, cpu: Samples, *, rounds: int, sends: int) -> str:
    base, base_cpu = median(wall[NO_RECEIVER]), median(cpu[NO_RECEIVER])
    cost = {name: median(wall[name]) - base for name in CAPTURE_ROWS}
    cost_cpu = {name: median(cpu[name]) - base_cpu for name in CAPTURE_ROWS}
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
    headers = ("receiver", "µs per send", "µs per event", "CPU µs per send", "CPU µs per event")
    return "\n\n".join(
        [
            "## Cost of one captured event on the request thread",
            f"`user-login` sent {sends} times inside one request context (so the event carries "
            f"the request fields), {rounds} interleaved rounds. Cost per event = median per "
            "send minus the same send with no receiver; wall time and thread CPU time.",
            markdown_table(headers, rows),
            "\n".join(
                [
                    target_line(
                        "bridge µs per event, wall, vs the naive receiver's "
                        f"{cost[CAPTURE_NAIVE]:,.2f} µs",
                        cost[CAPTURE_BRIDGE],
                        cost[CAPTURE_NAIVE],
                        unit=" µs",
                        at_most=True,
                    ),
                    target_line(
                        "bridge µs per event, CPU, vs the naive receiver's "
                        f"{cost_cpu[CAPTURE_NAIVE]:,.2f} µs",
                        cost_cpu[CAPTURE_BRIDGE],
                        cost_cpu[CAPTURE_NAIVE],
                        unit=" µs",
                        at_most=True,
                    ),
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

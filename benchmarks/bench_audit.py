"""What an audit trail costs a login: the audit sink with each fsync policy beside the plain
file sink, per login request; and the pieces (sealing a record, verifying a file).

Each row is the same Flask app (a `POST /login` whose view sends `user-login` once, as an app's
login view does) called through its WSGI callable, in one process, rows interleaved. The
files are on the machine's ordinary temporary directory, not a memory file system: an fsync
must reach a disk for its cost to mean anything. The overhead of a row is its median time per
request minus the unbridged app's.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blinker
from flask import Flask
from werkzeug.test import EnvironBuilder

from benchmarks.common import Contender, interleave, markdown_table, median, time_calls
from bridge import SignalBridge
from bridge.audit.chain import AuditKey, new_chain

__all__ = ["run"]

LOGIN = blinker.signal("user-login")
KEY = "benchmark-audit-key-0123456789abcdef"

BARE = "no bridge"
PLAIN = "file sink (plain)"
AUDIT_NEVER = "audit sink, fsync = false"
AUDIT_INTERVAL = "audit sink, fsync = 0.05 s"
AUDIT_EVERY = "audit sink, fsync = true"
ROWS = (BARE, PLAIN, AUDIT_NEVER, AUDIT_INTERVAL, AUDIT_EVERY)


def _started(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    if not status.startswith("200"):
        raise RuntimeError(f"the login request answered {status}")


def login_app(name: str, sink: dict[str, Any] | None) -> tuple[Flask, SignalBridge | None]:
    app = Flask(name)

    @app.post("/login")
    def login() -> str:
        LOGIN.send(app, user_id=7, username="ada", method="password")
        return "ok"

    if sink is None:
        return app, None
    app.config["BRIDGE_SIGNALS"] = ["user-login"]
    app.config["BRIDGE_SINKS"] = [sink]
    return app, SignalBridge(app)


def caller(app: Flask) -> Callable[[], None]:
    environ = EnvironBuilder(
        path="/login", method="POST", headers={"User-Agent": "Mozilla/5.0 (benchmark)"}
    ).get_environ()

    def call() -> None:
        body = app(dict(environ), _started)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()

    return call


def contender(name: str, call: Callable[[], None], requests: int) -> Contender:
    def batch() -> list[float]:
        for _ in range(5):  # warm
            call()
        started = time.perf_counter_ns()
        for _ in itertools.repeat(None, requests):
            call()
        return [(time.perf_counter_ns() - started) / requests / 1000.0]

    return Contender(name, batch)


def measure(work: Path, *, rounds: int, requests: int) -> dict[str, list[float]]:
    audit = {"type": "file", "audit": True, "audit_key": KEY, "events": ["user-login"]}
    sinks: dict[str, dict[str, Any] | None] = {
        BARE: None,
        PLAIN: {"type": "file", "path": str(work / "plain.jsonl")},
        AUDIT_NEVER: {**audit, "path": str(work / "never.jsonl"), "fsync": False},
        AUDIT_INTERVAL: {**audit, "path": str(work / "interval.jsonl"), "fsync": 0.05},
        AUDIT_EVERY: {**audit, "path": str(work / "every.jsonl"), "fsync": True},
    }
    apps = {
        name: login_app(f"audit-bench-{i}", sink) for i, (name, sink) in enumerate(sinks.items())
    }
    contenders = [contender(name, caller(app), requests) for name, (app, _) in apps.items()]
    try:
        interleave(contenders, rounds, seed=11)
    finally:
        for _, bridge in apps.values():
            if bridge is not None:
                bridge.close(timeout=10.0)
    for name in (PLAIN, AUDIT_NEVER, AUDIT_EVERY):
        path = Path(sinks[name]["path"])  # type: ignore[index]
        lines = path.read_bytes().count(b"\n")
        expected = rounds * (requests + 5) + (name != PLAIN)  # + the shutdown checkpoint
        if lines != expected:
            raise RuntimeError(f"{name}: {lines} lines written, expected {expected}")
    return {c.name: c.samples for c in contenders}


def pieces(work: Path, *, calls: int) -> dict[str, float]:
    """CPU µs: sealing one login record; verifying one record of a written file."""
    key = AuditKey.of(KEY)
    chain = new_chain(key, "bench-host")
    record = {
        "timestamp": "2026-12-07T05:00:00.000000Z",
        "level": "info",
        "event": "user.logged_in",
        "signal": "user-logged-in",
        "event_id": "019af0e4-8a7b-7c3d-9e2f-0123456789ab",
        "service.name": "shop",
        "host.name": "bench-host",
        "process.pid": os.getpid(),
        "request_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "client.address": "hmac:9d1b9ade:187b346f3670bf1ab76a94a4b0fbe8ef",
        "user_agent.original": "Mozilla/5.0 (benchmark)",
        "event.category": "authentication",
        "event.outcome": "success",
        "user.id": "7",
    }
    timings = time_calls({"seal": lambda: chain.seal(dict(record))}, calls=calls, repeats=5)
    try:
        from bridge.audit.verify import verify
    except ImportError:  # the verifier is not there: sealing alone
        return timings
    path = work / "verify.jsonl"
    chain = new_chain(key, "bench-host")
    with path.open("wb") as out:
        for _ in range(calls):
            out.write(chain.seal(dict(record)))
        out.write(
            chain.seal(
                {
                    **record,
                    "event": "audit.checkpoint",
                    "audit.reason": "shutdown",
                    "audit.records": calls,
                },
                own=True,
            )
        )
    started = time.process_time_ns()
    report = verify([path], [key])
    elapsed = time.process_time_ns() - started
    if not getattr(report, "ok", False):
        raise RuntimeError(f"the benchmark's own file did not verify: {report}")
    timings["verify"] = elapsed / (calls + 1) / 1000.0
    return timings


def section(
    samples: dict[str, list[float]], timings: dict[str, float], *, rounds: int, requests: int
) -> str:
    base = median(samples[BARE])
    plain = median(samples[PLAIN]) - base
    rows = []
    for name in ROWS:
        value = median(samples[name])
        overhead = value - base
        rows.append(
            [
                name,
                f"{value:,.1f}",
                "-" if name == BARE else f"+{overhead:,.1f}",
                "-" if name in (BARE, PLAIN) else f"{overhead / plain:.2f}x",
            ]
        )
    table = markdown_table(
        [
            "row",
            "µs per login request (median)",
            "overhead µs per login event",
            "vs plain file sink",
        ],
        rows,
    )
    piece_lines = [
        f"- sealing one login record (its canonical JSON, HMAC-SHA256, the signed line): "
        f"{timings['seal']:.1f} µs CPU"
    ]
    if "verify" in timings:
        piece_lines.append(
            f"- `flask bridge verify`: {timings['verify']:.1f} µs CPU per record "
            f"({1e6 / timings['verify']:,.0f} records/s)"
        )
    return "\n\n".join(
        [
            "## Audit trail: the cost of a login record",
            __doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
            f"{rounds} interleaved rounds of {requests} requests per row; one `user-login` "
            "event per request. fsync = true waits for the disk on every login; 0.05 s lets "
            "a thread sync at most 50 ms later; false leaves it to the kernel.",
            table,
            "\n".join(piece_lines),
        ]
    )


def file_system(path: Path) -> str:
    """The type and device of the file system holding `path` (from /proc/mounts)."""
    best = ("", "unknown", "?")
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    for line in mounts:
        device, point, kind = line.split()[:3]
        if str(path).startswith(point) and len(point) >= len(best[0]):
            best = (point, kind, device)
    return f"{best[1]} on {best[2]}"


def run(quick: bool = False) -> str:
    rounds, requests, calls = (2, 20, 200) if quick else (25, 200, 20_000)
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        work = Path(tmp)
        samples = measure(work, rounds=rounds, requests=requests)
        timings = pieces(work, calls=calls)
        where = file_system(work)
    text = section(samples, timings, rounds=rounds, requests=requests)
    return text + f"\n\nFiles on {where}.\n"

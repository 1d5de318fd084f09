"""Where the time of one captured event goes: each piece of the pipeline timed on its own.

Runs inside a request context of a bridged app (custom `user-login` signal, file sink), the
situation of a receiver on the request thread. Each row is the median of several loops of
calls to one piece with the inputs a real event gives it. `profile_capture` gives the same
answer from cProfile, for `python -m benchmarks --profile`.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import blinker
from flask import Flask, request

from benchmarks.apps import LOGIN
from benchmarks.common import markdown_table, time_calls
from bridge import SignalBridge
from bridge.customroute import CustomRoute
from bridge.emitter import Emitter
from bridge.events import request_fields, timestamp_and_id

__all__ = ["BREAKDOWN_ROWS", "profile_capture", "run"]

FIELDS: dict[str, Any] = {"user_id": 7, "username": "ada", "remember": True}
_CACHE_KEY = "bridge.request_fields"  # where events.request_fields caches its answer

CALL = "empty function call (loop floor)"
SEND_NONE = "blinker send, no receiver"
SEND_FUNCTION = "blinker send to one no-op function"
SEND_OBJECT = "blinker send to one no-op callable object"
SELECT = "CustomRoute._select (routing)"
GUARD = "guard: `with emitter.guard: pass`"
STAMP = "timestamp_and_id (timestamp and event id, one clock read)"
FIELDS_CACHED = "request_fields, cached (2nd+ event of a request)"
FIELDS_FIRST = "request_fields, first event of a request"
SAFE = "MakeJsonSafe on the whole event (17 keys)"
SAFE_ARGS = "MakeJsonSafe on the signal's arguments only (3 keys)"
ENCODE = "LineEncoder (orjson.dumps)"
SUBMIT = "LineWriter.submit via FileSink (one write)"
WRITE = "os.write of the same line (floor of submit)"
EMIT = "Emitter.emit, whole pipeline"
SEND_BRIDGE = "LOGIN.send(app, ...) with the bridge: one captured event"
REST = "emit minus its timed pieces (building the dict, context look-up)"
AROUND = "send minus emit (blinker dispatch, routing, guard)"
BREAKDOWN_ROWS = (
    CALL,
    SEND_NONE,
    SEND_FUNCTION,
    SEND_OBJECT,
    SELECT,
    GUARD,
    STAMP,
    FIELDS_CACHED,
    FIELDS_FIRST,
    SAFE,
    SAFE_ARGS,
    ENCODE,
    SUBMIT,
    WRITE,
    EMIT,
    SEND_BRIDGE,
    REST,
    AROUND,
)


def inside_emit(emitter: Emitter) -> tuple[str, ...]:
    """The timed pieces `emit` runs: the safe walk covers only the arguments when the emitter
    keeps its `make_safe` apart (no user processors), else the whole event."""
    walk = SAFE_ARGS if getattr(emitter, "make_safe", None) is not None else SAFE
    return (STAMP, FIELDS_CACHED, walk, ENCODE, SUBMIT)


class _NoOp:
    def __call__(self, sender: Any, /, **kwargs: Any) -> None:
        return None


def _no_op(sender: Any = None, /, **kwargs: Any) -> None:
    return None


@contextmanager
def bridged_request(work: Path) -> Iterator[tuple[Flask, Emitter, Path]]:
    """A bridged app (user-login, file sink) with a request context pushed."""
    path = work / "breakdown.jsonl"
    app = Flask("breakdown")
    app.config.update(
        BRIDGE_SIGNALS=["user-login"], BRIDGE_SINKS=[{"type": "file", "path": str(path)}]
    )
    bridge = SignalBridge(app)
    try:
        headers = {"User-Agent": "Mozilla/5.0 (benchmark)"}
        with app.test_request_context("/login", method="POST", headers=headers):
            yield app, bridge.emitter(app), path
    finally:
        bridge.close(timeout=10.0)


def pieces(app: Flask, emitter: Emitter, floor_fd: int) -> dict[str, Callable[[], object]]:
    """Each piece of one captured event, bound to the inputs a real event gives it."""
    tap: list[dict[str, Any]] = []
    emitter.taps.append(tap)
    LOGIN.send(app, **FIELDS)
    emitter.taps.remove(tap)
    event = tap[-1]
    line = emitter.encode(event)
    make_safe: Any = getattr(emitter, "make_safe", None) or emitter.processors[-1]
    sink = emitter.sinks[0]
    environ = request.environ
    route = CustomRoute.routes[id(LOGIN)]
    guard = emitter.guard
    is_sensitive = emitter.is_sensitive
    quiet, to_function, to_object = blinker.Signal(), blinker.Signal(), blinker.Signal()
    to_function.connect(_no_op, weak=False)
    to_object.connect(_NoOp(), weak=False)

    def guarded() -> None:
        with guard:
            pass

    def first_fields() -> object:
        environ.pop(_CACHE_KEY, None)
        return request_fields(environ, "/login", is_sensitive)

    return {
        CALL: _no_op,
        SEND_NONE: lambda: quiet.send(app, **FIELDS),
        SEND_FUNCTION: lambda: to_function.send(app, **FIELDS),
        SEND_OBJECT: lambda: to_object.send(app, **FIELDS),
        SELECT: lambda: route._select(app),
        GUARD: guarded,
        STAMP: timestamp_and_id,
        FIELDS_CACHED: lambda: request_fields(environ, "/login", is_sensitive),
        FIELDS_FIRST: first_fields,
        SAFE: lambda: make_safe(None, "info", event),
        SAFE_ARGS: lambda: make_safe.convert_mapping(FIELDS),
        ENCODE: lambda: emitter.encode(event),
        SUBMIT: lambda: sink.submit(line),
        WRITE: lambda: os.write(floor_fd, line),
        EMIT: lambda: emitter.emit("user-login", "user-login", "info", arguments=FIELDS),
        SEND_BRIDGE: lambda: LOGIN.send(app, **FIELDS),
    }


def measure(work: Path, *, calls: int, repeats: int) -> tuple[dict[str, float], tuple[str, ...]]:
    """CPU µs per call of each piece, and the pieces `emit` is made of.

    The files are emptied between loops so that they stay small."""
    floor_path = work / "floor.jsonl"
    floor_fd = os.open(floor_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        with bridged_request(work) as (app, emitter, path):

            def empty_files() -> None:
                if not emitter.flush(10.0):
                    raise RuntimeError("the breakdown bridge did not flush within 10 s")
                os.truncate(path, 0)  # O_APPEND: the sink goes on appending from offset 0
                os.truncate(floor_path, 0)

            fns = pieces(app, emitter, floor_fd)
            timings = time_calls(fns, calls=calls, repeats=repeats, between=empty_files)
            return timings, inside_emit(emitter)
    finally:
        os.close(floor_fd)


def breakdown_section(
    timings: dict[str, float], inside_names: tuple[str, ...], *, calls: int, repeats: int
) -> str:
    total = timings[SEND_BRIDGE]
    rows = [(name, f"{us:,.2f}", f"{us / total * 100:.0f}%") for name, us in timings.items()]
    inside = sum(timings[name] for name in inside_names)
    rest = timings[EMIT] - inside
    around = total - timings[EMIT]
    rows.append((REST, f"{rest:,.2f}", f"{rest / total * 100:.0f}%"))
    rows.append((AROUND, f"{around:,.2f}", f"{around / total * 100:.0f}%"))
    return "\n\n".join(
        [
            "## Where one captured event's time goes",
            f"Inside a request context; CPU µs per call (thread time), median of {repeats} "
            f"loops of {calls} calls per piece, the pieces interleaved. Each includes the loop "
            "and call floor of the first row. Share: of one whole captured event (the `LOGIN."
            f"send` row). The last two rows are differences; `emit` was taken to run: "
            f"{', '.join(inside_names)}. Interleaving many pieces keeps the caches cooler than "
            "the capture section's tight loop, so the last rows run a little higher than it.",
            markdown_table(("piece", "µs per call", "share"), rows),
        ]
    )


def profile_capture(sends: int = 20_000, top: int = 25) -> str:
    """cProfile of `sends` captured events inside a request, top functions by own time."""
    with TemporaryDirectory(prefix="bench-profile-") as tmp, bridged_request(Path(tmp)) as ctx:
        app = ctx[0]
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(sends):
            LOGIN.send(app, **FIELDS)
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def run(
    quick: bool = False,
    *,
    calls: int | None = None,
    repeats: int | None = None,
    work: Path | None = None,
) -> str:
    """The breakdown section as Markdown; `quick` (or explicit counts) for a smoke run."""
    calls = calls or (300 if quick else 5000)
    repeats = repeats or (3 if quick else 7)
    with TemporaryDirectory(prefix="bench-breakdown-") as tmp:
        timings, inside_names = measure(work or Path(tmp), calls=calls, repeats=repeats)
    return breakdown_section(timings, inside_names, calls=calls, repeats=repeats) + "\n"

"""Where the time of one captured event goes: each piece of the pipeline timed on its own.

A bridged app (default signals and the custom `user-login`, file sink) serves one real
request through its WSGI callable (the view sends `user-login` and flashes a message), and the
three events it captured (`user-login`, `message.flashed`, `request.finished`) are kept: each
piece is then called with the inputs those events give it. The pieces follow an event's path:
on the request thread it is only captured (`Emitter.emit` appends it to the request's
`Pending` list); when the request ends `Emitter.write_captured` builds, splices and writes the
request's events, one `submit_many` per sink. Each row is the median of several loops of calls
to one piece. `profile_capture` gives the same answer from cProfile, for
`python -m benchmarks --profile`.
"""

from __future__ import annotations

import cProfile
import io
import itertools
import os
import pstats
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import blinker
from flask import Flask, flash

from benchmarks.apps import LOGIN
from benchmarks.bench_capture import HEADERS, request_caller
from benchmarks.common import markdown_table, median, scratch_dir, time_calls
from bridge import SignalBridge
from bridge.customroute import CustomRoute
from bridge.emitter import Emitter
from bridge.events import REQUEST_CACHE_KEY, FinishedResponse, request_fields, timestamp_and_id
from bridge.pending import MAX_EVENTS, Captured, close_request, open_request

__all__ = ["BREAKDOWN_ROWS", "profile_capture", "run"]

FIELDS: dict[str, Any] = {"user_id": 7, "username": "ada", "remember": True}
_CACHE_KEY = REQUEST_CACHE_KEY  # where events.request_fields caches its answer

CALL = "empty function call (loop floor)"
SEND_NONE = "blinker send, no receiver"
SEND_FUNCTION = "blinker send to one no-op function"
SEND_OBJECT = "blinker send to one no-op callable object"
RECEIVE = "CustomRoute receiver called directly (routing, then capture)"
CAPTURE = "Emitter.emit in a request: capture (append to its Pending list)"
SEND_CAPTURE = "LOGIN.send(app, ...) in a request: one event captured"
STAMP = "timestamp_and_id(now_ns) (timestamp and event id of a captured time)"
FIELDS_FIRST = "request_fields, first event of a request (once per request)"
FIELDS_CACHED = "request_fields, cached (written-at-once path; a later round)"
PLAIN = "MakeJsonSafe.plain on the signal's arguments (3 keys, kept as they are)"
CONVERT = "MakeJsonSafe.convert_mapping on the same arguments (the walk plain skips)"
LINE = "EventLines.line: user-login's line from its parts (timestamp_and_id included)"
SPLICE = "EventLines.splice of user-login (renaming, plain, then line)"
CONTEXT = "EventLines.context_fragment: the request's fields encoded (once per request)"
SETTLE = "FinishedResponse.settle (request.finished's level and fields)"
WRITE_CAPTURED = "Emitter.write_captured: the request's 3 events to the file sink"
SUBMIT_MANY = "LineWriter.submit_many of the 3 lines via FileSink (one write)"
SUBMITS = "LineWriter.submit of the same 3 lines, one by one (three writes)"
WRITE = "os.write of the 3 lines in one buffer (floor of submit_many)"
WHOLE = "one captured event, whole: its send + a third of the request's write"
AROUND = "send minus emit (blinker dispatch, routing, try)"
REST = "write_captured minus its timed pieces (its loop, the other events' differences)"
BREAKDOWN_ROWS = (
    CALL,
    SEND_NONE,
    SEND_FUNCTION,
    SEND_OBJECT,
    RECEIVE,
    CAPTURE,
    SEND_CAPTURE,
    STAMP,
    FIELDS_FIRST,
    FIELDS_CACHED,
    PLAIN,
    CONVERT,
    LINE,
    SPLICE,
    CONTEXT,
    SETTLE,
    WRITE_CAPTURED,
    SUBMIT_MANY,
    SUBMITS,
    WRITE,
    WHOLE,
    AROUND,
    REST,
)
# How many of the request's events one call serves (the rest: one).
PER_REQUEST = {
    FIELDS_FIRST: 3,
    CONTEXT: 3,
    WRITE_CAPTURED: 3,
    SUBMIT_MANY: 3,
    SUBMITS: 3,
    WRITE: 3,
    REST: 3,
}
# Pieces that capture: timed in chunks that fit one Pending list, closed (written) untimed.
CAPTURING = (RECEIVE, CAPTURE, SEND_CAPTURE)


class _NoOp:
    def __call__(self, sender: Any, /, **kwargs: Any) -> None:
        return None


def _no_op(sender: Any = None, /, **kwargs: Any) -> None:
    return None


@contextmanager
def bridged_app(work: Path) -> Iterator[tuple[Flask, Emitter, Path]]:
    """A bridged app (default signals and user-login, file sink) whose POST /login sends
    `user-login` and flashes a message: three events per request."""
    path = work / "breakdown.jsonl"
    app = Flask("breakdown")
    app.secret_key = "benchmark"
    app.config.update(
        BRIDGE_SIGNALS=["default", "user-login"],
        BRIDGE_SINKS=[{"type": "file", "path": str(path)}],
    )

    @app.post("/login")
    def login() -> str:
        LOGIN.send(app, **FIELDS)
        flash("welcome back, ada", "info")
        return "ok"

    bridge = SignalBridge(app)
    try:
        yield app, bridge.emitter(app), path
    finally:
        bridge.close(timeout=10.0)


def captured_request(app: Flask, emitter: Emitter) -> list[Captured]:
    """The events one real request captured, as `write_captured` receives them (kept here
    instead of written: the method is shadowed on the instance while the request runs)."""
    kept: list[Captured] = []
    emitter.write_captured = kept.extend  # type: ignore[method-assign]
    try:
        response = app.test_client().post("/login", headers=HEADERS)
    finally:
        del emitter.write_captured
    signals = [item[2] for item in kept]
    if response.status_code != 200 or signals != [
        "user-login",
        "message-flashed",
        "request-finished",
    ]:
        raise RuntimeError(f"the breakdown request captured {signals}")
    return kept


def time_captures(fn: Callable[[], object], calls: int) -> float:
    """CPU µs per call of a piece that captures: called in chunks that fit one request's list
    (never reaching `MAX_EVENTS`, which would write inside the timed part); each list is
    closed, and its events written, between chunks, untimed."""
    clock = time.thread_time_ns
    chunk = MAX_EVENTS - 1
    spent = done = 0
    while done < calls:
        count = min(chunk, calls - done)
        pending, token = open_request()
        started = clock()
        for _ in itertools.repeat(None, count):
            fn()
        spent += clock() - started
        if len(pending.events) != count:
            raise RuntimeError(f"{count} calls captured {len(pending.events)} events")
        close_request(pending, token)
        done += count
    return spent / calls / 1000.0


def pieces(
    app: Flask, emitter: Emitter, captured: list[Captured], lines: list[bytes], floor_fd: int
) -> tuple[dict[str, Callable[[], object]], dict[str, Callable[[], object]]]:
    """(pieces timed in plain loops, pieces that capture), each bound to the inputs the
    request's real events give it."""
    login, _flashed, finished = captured
    now_ns, arguments, request = login[1], login[6], login[7]
    finished_response: FinishedResponse = finished[5]
    environ = request.environ
    view_args = request.view_args
    is_sensitive = emitter.is_sensitive
    make_safe = emitter.make_safe
    context = request_fields(environ, "/login", is_sensitive, view_args)
    fragment = emitter.lines.context_fragment(context)
    sink = emitter.sinks[0]
    joined = b"".join(lines)
    receiver = CustomRoute.routes[id(LOGIN)].receiver()
    assert receiver is not None
    quiet, to_function, to_object = blinker.Signal(), blinker.Signal(), blinker.Signal()
    to_function.connect(_no_op, weak=False)
    to_object.connect(_NoOp(), weak=False)

    def first_fields() -> object:
        environ.pop(_CACHE_KEY, None)
        return request_fields(environ, "/login", is_sensitive, view_args)

    def write_request() -> None:
        environ.pop(_CACHE_KEY, None)  # a real request's write reads its fields first
        emitter.write_captured(captured)

    def submits() -> None:
        for line in lines:
            sink.submit(line)

    plain = {
        CALL: _no_op,
        SEND_NONE: lambda: quiet.send(app, **FIELDS),
        SEND_FUNCTION: lambda: to_function.send(app, **FIELDS),
        SEND_OBJECT: lambda: to_object.send(app, **FIELDS),
        STAMP: lambda: timestamp_and_id(now_ns),
        FIELDS_FIRST: first_fields,
        FIELDS_CACHED: lambda: request_fields(environ, "/login", is_sensitive, view_args),
        PLAIN: lambda: make_safe.plain(arguments),
        CONVERT: lambda: make_safe.convert_mapping(arguments),
        LINE: lambda: emitter.lines.line(
            now_ns, "user-login", "user-login", "info", arguments, fragment
        ),
        SPLICE: lambda: emitter.lines.splice(
            now_ns, "user-login", "user-login", "info", None, arguments, fragment
        ),
        CONTEXT: lambda: emitter.lines.context_fragment(context),
        SETTLE: finished_response.settle,
        WRITE_CAPTURED: write_request,
        SUBMIT_MANY: lambda: sink.submit_many(lines),
        SUBMITS: submits,
        WRITE: lambda: os.write(floor_fd, joined),
    }
    capturing = {
        RECEIVE: lambda: receiver(app, **FIELDS),
        CAPTURE: lambda: emitter.emit("user-login", "user-login", "info", arguments=FIELDS),
        SEND_CAPTURE: lambda: LOGIN.send(app, **FIELDS),
    }
    return plain, capturing


def measure(work: Path, *, calls: int, repeats: int) -> dict[str, float]:
    """CPU µs per call of each piece: the median of `repeats` rounds, each running one loop
    of every piece. The files are emptied after every loop so that they stay small."""
    floor_path = work / "floor.jsonl"
    floor_fd = os.open(floor_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        with bridged_app(work) as (app, emitter, path):

            def empty_files() -> None:
                if not emitter.flush(10.0):
                    raise RuntimeError("the breakdown bridge did not flush within 10 s")
                os.truncate(path, 0)  # O_APPEND: the sink goes on appending from offset 0
                os.truncate(floor_path, 0)

            captured = captured_request(app, emitter)
            emitter.write_captured(captured)  # the request's own lines, as written
            request_lines = path.read_bytes().splitlines(keepends=True)
            if len(request_lines) != 3:
                raise RuntimeError(f"the breakdown request wrote {len(request_lines)} lines")
            empty_files()
            samples: dict[str, list[float]] = {name: [] for name in BREAKDOWN_ROWS}
            with app.test_request_context("/login", method="POST", headers=HEADERS):
                plain, capturing = pieces(app, emitter, captured, request_lines, floor_fd)
                for _ in range(repeats):
                    timings = time_calls(plain, calls=calls, repeats=1, between=empty_files)
                    for name, fn in capturing.items():
                        timings[name] = time_captures(fn, calls)
                        empty_files()
                    for name, us in timings.items():
                        samples[name].append(us)
            return {name: median(values) for name, values in samples.items() if values}
    finally:
        os.close(floor_fd)


def breakdown_section(timings: dict[str, float], *, calls: int, repeats: int) -> str:
    timings = dict(timings)
    timings[WHOLE] = timings[SEND_CAPTURE] + timings[WRITE_CAPTURED] / 3
    timings[AROUND] = timings[SEND_CAPTURE] - timings[CAPTURE]
    timings[REST] = (
        timings[WRITE_CAPTURED]
        - sum(timings[name] for name in (FIELDS_FIRST, CONTEXT, SETTLE, SUBMIT_MANY))
        - 3 * timings[SPLICE]
    )
    total = timings[WHOLE]
    rows = []
    for name in BREAKDOWN_ROWS:
        us = timings[name]
        events = PER_REQUEST.get(name, 1)
        per_event = us / events
        rows.append(
            (
                name,
                f"{us:,.2f}",
                str(events),
                f"{per_event:,.2f}",
                f"{per_event / total * 100:.0f}%",
            )
        )
    return "\n\n".join(
        [
            "## Where one captured event's time goes",
            "A real request through the app's WSGI callable (default signals and `user-login`, "
            "file sink) captured three events: `user-login`, `message.flashed` and "
            "`request.finished`. Each piece below is called with the inputs those events give "
            "it, inside a request context: first what runs on the request thread when a signal "
            "is sent (only a capture: the event is appended to the request's list), then what "
            "`write_captured` runs when the request ends (its fields, the splice, one "
            "`submit_many`). CPU µs per call (thread time), median of "
            f"{repeats} rounds of {calls} calls per piece, the pieces interleaved; each "
            "includes the loop and call floor of the first row. Capturing pieces run in chunks "
            f"of {MAX_EVENTS - 1}, each list then closed and written untimed. Rows marked 3 "
            "serve the whole request (µs per event: a third). Share: of one whole captured "
            "event (the `whole` row: its send plus a third of the request's write). The last "
            "three rows are sums and differences; the `write_captured` rest counts `request_"
            "fields` first, `context_fragment`, `settle` and `submit_many` once and user-"
            "login's `splice` three times (the other two events' splices differ a little).",
            markdown_table(
                ("piece", "µs per call", "events per call", "µs per event", "share"), rows
            ),
        ]
    )


def profile_capture(sends: int = 20_000, top: int = 25, per_request: int = 100) -> str:
    """cProfile of `sends` events captured in real requests (through the WSGI callable, up
    to `per_request` sends each) and written at their ends; top functions by own time."""
    per_request = max(1, min(per_request, sends))
    with (
        TemporaryDirectory(prefix="bench-profile-", dir=scratch_dir()) as tmp,
        bridged_app(Path(tmp)) as (app, _emitter, _path),
    ):
        call = request_caller(app, per_request)
        call(per_request)  # warm: routing, the sink's file, the first request's fields
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(max(1, sends // per_request)):
            call(per_request)
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
    with TemporaryDirectory(prefix="bench-breakdown-", dir=scratch_dir()) as tmp:
        timings = measure(work or Path(tmp), calls=calls, repeats=repeats)
    return breakdown_section(timings, calls=calls, repeats=repeats) + "\n"

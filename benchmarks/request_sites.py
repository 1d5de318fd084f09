"""The request benchmark's rows, as each one lives in its own worker process.

`open_site(label, ...)` is the worker's factory (see `benchmarks.runner`): it builds that row's
app and connects its bridge or receivers once for the whole run. `Site.batch`
(benchmarks.worker_site) then times requests and reports them with the events that landed
meanwhile: lines in the row's file, lines on its stdout (fd 1, redirected to a file in the
worker's directory), or events the counting collector (benchmarks.collector) received on the
row's own path. The plain receivers the bridge is compared with are in `request_peers`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.apps import BUILTIN_NAMES, LineCounter, build_app
from benchmarks.collector import count_at
from benchmarks.request_peers import floor_site, json_logger_site, naive_site
from benchmarks.worker_site import Site
from bridge import SignalBridge

__all__ = [
    "BARE",
    "BUILTIN",
    "DEFAULT",
    "DEFAULT_LOGIN",
    "FLOORS",
    "FLOOR_BUILTIN",
    "FLOOR_DEFAULT",
    "HTTP_MEMORY",
    "HTTP_SPOOL",
    "JSON_LOGGER",
    "MINIMAL",
    "NAIVE",
    "ONE",
    "REQUEST_ROWS",
    "STDOUT",
    "STRING",
    "open_site",
]

BARE = "bare app (no bridge)"
ONE = "bridge: user-login only (1 event), file sink"
DEFAULT = "bridge: default signals, file sink"
DEFAULT_LOGIN = "bridge: default + user-login, file sink"
BUILTIN = "bridge: all ten built-ins, file sink"
STDOUT = "bridge: default signals, stdout sink (fd 1 to a file)"
HTTP_MEMORY = "bridge: default signals, http sink, memory queue"
HTTP_SPOOL = "bridge: default signals, http sink, disk spool"
FLOOR_DEFAULT = "floor: 2 plain receivers (default signals)"
MINIMAL = "floor: 3 plain receivers (default + user-login)"
FLOOR_BUILTIN = "floor: 10 plain receivers (all ten built-ins)"
JSON_LOGGER = "python-json-logger: 3 receivers, FileHandler"
NAIVE = "naive receiver on all ten built-ins"
STRING = "reference: bare app with render_template_string (compiles every request)"
REQUEST_ROWS = (
    BARE,
    ONE,
    DEFAULT,
    DEFAULT_LOGIN,
    BUILTIN,
    STDOUT,
    HTTP_MEMORY,
    HTTP_SPOOL,
    FLOOR_DEFAULT,
    MINIMAL,
    FLOOR_BUILTIN,
    JSON_LOGGER,
    NAIVE,
    STRING,
)
# Each row compared with a floor, and that floor: the same events, written by plain receivers.
FLOORS = {
    DEFAULT: FLOOR_DEFAULT,
    DEFAULT_LOGIN: MINIMAL,
    BUILTIN: FLOOR_BUILTIN,
    STDOUT: FLOOR_DEFAULT,
    HTTP_MEMORY: FLOOR_DEFAULT,
    HTTP_SPOOL: FLOOR_DEFAULT,
    JSON_LOGGER: MINIMAL,
    NAIVE: FLOOR_BUILTIN,
}
SETTLE_TIMEOUT = 30.0


def open_site(label: str, work: Path, collector: str) -> Site:
    """The worker's factory: build and connect `label`'s row (the parent warms it up, one
    worker at a time). `collector` is the counting collector's base URL (http rows only)."""
    return BUILDERS[label](work, collector)


def bridge_site(
    label: str,
    app_name: str,
    work: Path,
    signals: list[str],
    sink: dict[str, Any],
    events: Callable[[], int],
    landed: Callable[[SignalBridge], bool] | None = None,
) -> Site:
    """A bridge with one sink; `landed(bridge)` (after `flush()`) says every accepted event
    has arrived where `events` counts it, or is counted as lost by the bridge itself."""
    app = build_app(app_name, work, BRIDGE_SIGNALS=signals, BRIDGE_SINKS=[sink])
    bridge = SignalBridge(app)

    def settle() -> None:
        if not bridge.flush(timeout=SETTLE_TIMEOUT, app=app):
            raise RuntimeError(f"{label}: the bridge did not flush within {SETTLE_TIMEOUT} s")
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while landed is not None and not landed(bridge):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: events still on their way after {SETTLE_TIMEOUT} s")
            time.sleep(0.001)

    def shutdown() -> None:
        if not bridge.close(timeout=10.0, app=app):
            raise RuntimeError(f"{label}: the bridge did not close within 10 s")

    return Site(label, app, events, settle, shutdown)


def file_site(label: str, name: str, work: Path, signals: list[str]) -> Site:
    path = work / f"{name}.jsonl"
    sink = {"type": "file", "path": str(path)}
    return bridge_site(label, name, work, signals, sink, LineCounter(path))


def stdout_site(label: str, work: Path) -> Site:
    """The stdout sink on this worker's fd 1, redirected to a file so its lines can be counted
    (the worker talks to its parent over pipes of its own; nothing else writes to fd 1)."""
    path = work / "stdout.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    os.dup2(fd, 1)
    os.close(fd)
    sys.stdout = sys.stderr  # a stray print() must not add lines to the count
    return bridge_site(label, "stdout", work, ["default"], {"type": "stdout"}, LineCounter(path))


def http_site(label: str, work: Path, collector: str, *, spool: bool) -> Site:
    """The http sink (defaults otherwise) posting to the collector on a path of this worker's
    own; settled once the collector counted every event the sink accepted and did not drop."""
    url = f"{collector}/{work.name}"
    sink: dict[str, Any] = {"type": "http", "url": url}
    if spool:
        sink["spool_dir"] = str(work / "spool")

    def landed(bridge: SignalBridge) -> bool:
        stats = bridge.stats()["sinks"].values()
        lost = sum(s["dropped"] + s["dead_lettered"] for s in stats)
        return count_at(url) + lost >= sum(s["enqueued"] for s in stats)

    name = "http-spool" if spool else "http"
    return bridge_site(label, name, work, ["default"], sink, lambda: count_at(url), landed)


BUILDERS: dict[str, Callable[[Path, str], Site]] = {
    BARE: lambda work, _: Site(BARE, build_app("bare", work)),
    ONE: lambda work, _: file_site(ONE, "one", work, ["user-login"]),
    DEFAULT: lambda work, _: file_site(DEFAULT, "default", work, ["default"]),
    DEFAULT_LOGIN: lambda work, _: file_site(
        DEFAULT_LOGIN, "default-login", work, ["default", "user-login"]
    ),
    BUILTIN: lambda work, _: file_site(BUILTIN, "builtin", work, ["builtin"]),
    STDOUT: lambda work, _: stdout_site(STDOUT, work),
    HTTP_MEMORY: lambda work, url: http_site(HTTP_MEMORY, work, url, spool=False),
    HTTP_SPOOL: lambda work, url: http_site(HTTP_SPOOL, work, url, spool=True),
    FLOOR_DEFAULT: lambda work, _: floor_site(
        FLOOR_DEFAULT, "floor-default", work, ("request_finished", "message_flashed")
    ),
    MINIMAL: lambda work, _: floor_site(
        MINIMAL, "floor-login", work, ("request_finished", "message_flashed", "user-login")
    ),
    FLOOR_BUILTIN: lambda work, _: floor_site(FLOOR_BUILTIN, "floor-builtin", work, BUILTIN_NAMES),
    JSON_LOGGER: lambda work, _: json_logger_site(JSON_LOGGER, work),
    NAIVE: lambda work, _: naive_site(NAIVE, work),
    STRING: lambda work, _: Site(STRING, build_app("string", work, from_string=True)),
}

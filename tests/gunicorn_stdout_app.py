"""The app `tests/test_gunicorn_stdout.py` serves: events on stdout, stack traces of many KiB.

`GET /fail/<depth>` raises from `depth` frames down, so its `request.exception` line carries a
stack trace several times PIPE_BUF long; `GET /ok` makes one small `request.finished` line.
At exit each process closes its bridge, then saves its sink counters to
`bridge-stats-<pid>.json` in the directory `STATS_DIR` names, so the test can see what was
dropped.
"""

from __future__ import annotations

import atexit
import json
import os
from pathlib import Path

from flask import Flask

from bridge import SignalBridge

app = Flask(__name__)
app.config["BRIDGE_SINKS"] = [{"type": "stdout"}]
app.config["BRIDGE_SIGNALS"] = ["default"]


class DeepFailure(RuntimeError):
    """Raised at the bottom of a deep call chain."""


def down_the_first_of_two_alternating_frames(depth: int) -> None:
    if depth <= 0:
        raise DeepFailure("failed at the bottom, " + "after a long way down; " * 40)
    down_the_second_of_two_alternating_frames(depth - 1)


def down_the_second_of_two_alternating_frames(depth: int) -> None:
    # Two functions in turn: Python folds a run of identical frames, not alternating ones.
    down_the_first_of_two_alternating_frames(depth - 1)


@app.route("/fail/<int:depth>")
def fail(depth: int) -> str:
    down_the_first_of_two_alternating_frames(depth)
    return "unreachable"


@app.route("/ok")
def ok() -> str:
    return "ok"


bridge = SignalBridge(app)
_emitter = bridge.emitter(app)


@atexit.register  # runs before the bridge's own close at exit: atexit calls run last first
def _save_stats() -> None:
    bridge.close(timeout=20.0)
    directory = os.environ.get("STATS_DIR")
    if directory:
        stats = _emitter.stats()["sinks"]
        Path(directory, f"bridge-stats-{os.getpid()}.json").write_text(json.dumps(stats))

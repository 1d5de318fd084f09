"""A pytest plugin that runs Flask's own test suite with a bridge on every Flask app.

Loaded by tests/test_flask_suite.py as `-p bridge_everywhere` (this directory on PYTHONPATH)
in a pytest run inside Flask's extracted sdist. With `SIGNAL_BRIDGE_SUITE_ATTACH=1`, every
`Flask(...)` gets `SignalBridge(app)` at the end of its `__init__`, configured by the `BRIDGE_*`
variables the test sets (a file sink, every built-in signal, a custom signal and a logger);
without it the suite runs as published, for the baseline. Either way, at the end, it writes the
outcome of every test and how many apps were created, bridged and freed to the JSON file named
by `SIGNAL_BRIDGE_SUITE_REPORT`.
"""

from __future__ import annotations

import gc
import json
import os
import weakref
from pathlib import Path
from typing import Any

import _pytest.monkeypatch
import blinker
import flask
import pytest

CUSTOM_SIGNAL = "flask-suite-signal"

# Flask's tests import `_pytest.monkeypatch.notset`, which newer pytest spells NOTSET: an alias
# lets the published suite run unchanged on the pytest this project uses.
if not hasattr(_pytest.monkeypatch, "notset"):
    _pytest.monkeypatch.notset = _pytest.monkeypatch.NOTSET  # type: ignore[attr-defined]


class Tally:
    """What the run did, for the report."""

    def __init__(self) -> None:
        self.created = 0
        self.bridged = 0
        self.freed = 0
        self.outcomes: dict[str, str] = {}

    def note_freed(self) -> None:
        self.freed += 1


tally = Tally()


def _attach() -> None:
    from bridge import SignalBridge

    blinker.signal(CUSTOM_SIGNAL)  # defined before any init_app, as an app would
    original_init = flask.Flask.__init__

    def __init__(self: flask.Flask, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        tally.created += 1
        SignalBridge(self)
        tally.bridged += 1
        weakref.finalize(self, tally.note_freed)

    flask.Flask.__init__ = __init__  # type: ignore[method-assign]


if os.environ.get("SIGNAL_BRIDGE_SUITE_ATTACH") == "1":
    _attach()


_RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A test's outcome is the worst of its phases (a failed setup or teardown: "error")."""
    if report.failed:
        outcome = "failed" if report.when == "call" else "error"
    else:
        outcome = "skipped" if report.skipped else "passed"
    previous = tally.outcomes.get(report.nodeid)
    if previous is None or _RANK[outcome] > _RANK[previous]:
        tally.outcomes[report.nodeid] = outcome


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    gc.collect()
    from bridge.extension import open_emitters

    report = {
        "outcomes": tally.outcomes,
        "created": tally.created,
        "bridged": tally.bridged,
        "freed": tally.freed,
        "open_emitters": len(open_emitters()),
    }
    Path(os.environ["SIGNAL_BRIDGE_SUITE_REPORT"]).write_text(json.dumps(report))

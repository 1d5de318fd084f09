"""`capture_events()`: assert, in your own tests, which events your code emitted.

In the spirit of `structlog.testing.capture_logs`: inside the block every event the bridge
emits (after processing, redaction, JSON-safe conversion and pseudonymization: exactly what
the sinks are given, as dicts) is also appended to the list it yields. The sinks still receive them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask

from bridge.extension import SignalBridge, open_emitters
from bridge.pending import watched

__all__ = ["capture_events"]


@contextmanager
def capture_events(
    bridge: SignalBridge | None = None, *, app: Flask | None = None
) -> Iterator[list[dict[str, Any]]]:
    """Collect the events emitted inside the block.

    Opened inside a request (a view, a test's request context), the request's events sent in
    the block are written as they are sent, so the list has them before the block ends.

    With no arguments every bridged app in the process is watched; pass `bridge` (and `app`,
    when the bridge serves several apps) to watch one.

        with capture_events() as events:
            client.post("/login", data={"username": "ada", "password": "pw"})
        assert events[-1]["event"] == "user-login"
    """
    emitters = open_emitters() if bridge is None else [bridge.emitter(app)]
    captured: list[dict[str, Any]] = []
    for emitter in emitters:
        emitter.taps.append(captured)
    try:
        with watched():
            yield captured
    finally:
        for emitter in emitters:
            emitter.taps.remove(captured)

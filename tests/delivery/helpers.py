"""Shared pieces of the delivery tests: fast settings, event lines, a scriptable transport."""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from bridge.config import HttpSinkSettings
from bridge.outcome import DELIVERED, Outcome

__all__ = ["CountingCondition", "ScriptedTransport", "event_line", "fast_settings", "ids_of"]

_counter = iter(range(1 << 62))
_counter_lock = threading.Lock()


class CountingCondition(threading.Condition):
    """A Condition that counts notify() calls and remembers the timeouts of wait() calls."""

    def __init__(self, lock: Any) -> None:
        super().__init__(lock)
        self.notifies = 0
        self.wait_timeouts: list[float | None] = []
        self.waiting = threading.Event()

    def notify(self, n: int = 1) -> None:
        self.notifies += 1
        super().notify(n)

    def wait(self, timeout: float | None = None) -> bool:
        self.wait_timeouts.append(timeout)
        self.waiting.set()
        return super().wait(timeout)


def event_line(**fields: Any) -> bytes:
    """One encoded event with a unique `event_id`, ending in a newline."""
    with _counter_lock:
        number = next(_counter)
    event = {"event_id": f"ev-{number:08d}", "event": "test.event", **fields}
    return json.dumps(event).encode() + b"\n"


def ids_of(lines: Sequence[bytes]) -> list[str]:
    return [json.loads(line)["event_id"] for line in lines]


def fast_settings(url: str = "http://127.0.0.1:9/ingest", **overrides: Any) -> HttpSinkSettings:
    """http sink settings with backoffs and timeouts short enough for tests (no sleeps)."""
    values: dict[str, Any] = {
        "type": "http",
        "name": "http-test",
        "url": url,
        "batch_timeout": 0.05,
        "retry_initial_backoff": 0.001,
        "retry_max_backoff": 0.01,
        "timeout_connect": 2.0,
        "timeout_read": 2.0,
    }
    values.update(overrides)
    if values.get("spool_dir") is not None:
        values.setdefault("overflow", "spool")
    return HttpSinkSettings(**values)


class ScriptedTransport:
    """A transport that answers from a script (an Outcome, or an exception to raise) and
    records every batch it was given; answers DELIVERED once the script runs out."""

    def __init__(self, *script: Outcome | Exception) -> None:
        self._script: deque[Outcome | Exception] = deque(script)
        self._lock = threading.Lock()
        self._called = threading.Condition(self._lock)
        self.calls: list[list[bytes]] = []
        self.closed = False
        self.aborted = False
        self.forked = 0

    def then(self, *script: Outcome | Exception) -> None:
        with self._lock:
            self._script.extend(script)

    def clear_script(self) -> None:
        """From now on every batch is delivered."""
        with self._lock:
            self._script.clear()

    def wait_for_calls(self, count: int, timeout: float = 20.0) -> bool:
        """Wait until `count` batches were sent; False at timeout."""
        with self._called:
            return self._called.wait_for(lambda: len(self.calls) >= count, timeout)

    def send(self, lines: Sequence[bytes]) -> Outcome:
        with self._lock:
            self.calls.append(list(lines))
            self._called.notify_all()
            step = self._script.popleft() if self._script else DELIVERED
        if isinstance(step, Exception):
            raise step
        return step

    def sent_ids(self) -> list[str]:
        with self._lock:
            return [i for call in self.calls for i in ids_of(call)]

    def batch_sizes(self) -> list[int]:
        with self._lock:
            return [len(call) for call in self.calls]

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True

    def after_fork_in_child(self) -> None:
        self.forked += 1

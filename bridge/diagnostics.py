"""The bridge's own failure reports: to stderr, at most once a minute per cause.

The bridge never logs its failures through itself (that could loop); it writes one short line
to the process's stderr, and the counters in `stats()` carry the exact numbers.
"""

from __future__ import annotations

import os
import sys
import threading
import time

__all__ = ["report"]

REPORT_INTERVAL = 60.0

_last_reported: dict[str, float] = {}
_lock = threading.Lock()


def _reset_lock_after_fork() -> None:
    """A child forked while another thread held the lock would hang at its first report."""
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_after_fork)


def report(cause: str, message: str, *, interval: float = REPORT_INTERVAL) -> bool:
    """Write `message` to stderr unless `cause` was reported in the last `interval` seconds.

    Returns whether the line was written. Never raises: a closed or broken stderr is ignored.
    """
    now = time.monotonic()
    with _lock:
        last = _last_reported.get(cause)
        if last is not None and now - last < interval:
            return False
        _last_reported[cause] = now
    line = f"flask-signal-bridge[{os.getpid()}]: {message}\n"
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except Exception:  # stderr closed or broken: nothing left to tell
        return False
    return True

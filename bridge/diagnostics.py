"""The bridge's own failure reports: to stderr, at most once a minute per cause.

The bridge never logs its failures through itself (that could loop); it writes one short line
to the process's stderr, and the counters in `stats()` carry the exact numbers. Reports come
from request threads too (a sink that fails on every event), so a report never waits:

- one non-blocking write through an open of stderr of its own (`StreamOutput`), never under a
  lock the request path needs: the module lock only guards the rate-limit table;
- on a pipe, under the same cross-process lock as event lines, so that a report never lands
  inside another process's (or the `stdout` sink's, with `stream = "stderr"`) long line;
- a full pipe or a busy lock drops the report, counted in `dropped_reports()`;
- every line is scrubbed of known secrets (`redaction.scrub_known`) and kept to one atomic
  write: one line of at most PIPE_BUF bytes.

A `sys.stderr` replaced by the application (or by pytest) is written to instead of fd 2: it is
where the user asked for the process's errors to go.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from bridge import forking
from bridge.redaction import scrub_known
from bridge.streams import PIPE_BUF, StreamOutput

__all__ = ["dropped_reports", "report"]

REPORT_INTERVAL = 60.0

_last_reported: dict[str, float] = {}
_dropped = 0
_lock = threading.Lock()


@forking.at_fork_in_child
def _reset_after_fork() -> None:
    """A child forked while another thread held the lock would hang at its first report;
    and a worker's failures are its own to report, whatever its parent reported."""
    global _lock, _dropped
    _lock = threading.Lock()
    _last_reported.clear()
    _dropped = 0


def dropped_reports() -> int:
    """How many reports this process could not write (stderr full, busy or closed)."""
    return _dropped


def report(cause: str, message: str, *, interval: float = REPORT_INTERVAL) -> bool:
    """Write `message` to stderr unless `cause` was reported in the last `interval` seconds.

    Returns whether the line was written. Never raises and never blocks: a full, busy,
    closed or broken stderr drops the line (counted by `dropped_reports()`).
    """
    global _dropped
    now = time.monotonic()
    with _lock:
        last = _last_reported.get(cause)
        if last is not None and now - last < interval:
            return False
        _last_reported[cause] = now
    if _write(format_line(message)):
        return True
    with _lock:
        _dropped += 1
    return False


def format_line(message: str) -> bytes:
    """`flask-signal-bridge[pid]: message`, scrubbed, on one line of at most PIPE_BUF bytes."""
    text = " ".join(scrub_known(message).splitlines())
    line = f"flask-signal-bridge[{os.getpid()}]: {text}".encode(errors="replace")
    if len(line) >= PIPE_BUF:  # cut on a character boundary
        line = line[: PIPE_BUF - 4].decode(errors="ignore").encode() + b"..."
    return line + b"\n"


def _write(line: bytes) -> bool:
    stream = sys.stderr
    if stream is None:  # pythonw, or a daemon that closed it
        return False
    try:
        if stream is not sys.__stderr__:
            stream.write(line.decode())
            stream.flush()
            return True
        output = StreamOutput(2)
        try:  # a pipe that could not be opened anew is blocking: write only if it has room
            return output.writable_now() and output.write(line) == len(line)
        finally:
            output.close()
    except Exception:  # full, busy, closed or broken: nothing left to tell
        return False

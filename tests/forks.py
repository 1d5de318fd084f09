"""Running a piece of a test in a forked child, guarded: it reports over a pipe, or is killed.

Used by the tests that fork at awkward moments (a lock held by another thread, a send in
flight): a child that hangs on an inherited lock must fail the test, not hang the suite.
"""

from __future__ import annotations

import json
import os
import select
import signal
import threading
from collections.abc import Callable
from typing import Any


def run_in_child(
    work: Callable[[], Any], *, deadline: float, holding: threading.Lock | None = None
) -> Any:
    """Fork; the child runs `work` and reports its JSON-able result. With `holding`, the fork
    happens while this thread holds that lock (released in the parent right after). None when
    the child hung (it is killed with SIGKILL then) or died without reporting."""
    read_end, write_end = os.pipe()
    if holding is not None:
        holding.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child: report, never return into pytest
            code = 1
            try:
                os.close(read_end)
                os.write(write_end, json.dumps(work()).encode())
                code = 0
            finally:
                os._exit(code)
    finally:
        if holding is not None:
            holding.release()
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], deadline)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            return None
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        return json.loads(b"".join(chunks)) if chunks else None
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)

"""A process that emits events through an HttpSink with a spool, for test_http_delivery.py.

Usage: http_crash_child.py SPOOL_DIR URL MODE [COUNT]

MODE `stream`: submits events `{"event_id": "crash-<i>"}` forever and writes `<i>\\n` to stdout
after each accepted one (the parent SIGKILLs it mid-stream). MODE `batch`: submits COUNT events,
writes `done\\n`, and waits to be killed while its worker delivers. Short backoffs, so the
worker keeps trying the collector while the parent watches.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bridge.config import HttpSinkSettings
from bridge.sinks.http import HttpSink


def main() -> None:
    spool_dir, url, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    sink = HttpSink(
        HttpSinkSettings(
            type="http",
            name="crash-child",
            url=url,
            spool_dir=spool_dir,
            overflow="spool",
            spool_fsync="never",
            batch_max_events=100,
            batch_timeout=0.05,
            retry_initial_backoff=0.01,
            retry_max_backoff=0.05,
            timeout_connect=1.0,
            timeout_read=30.0,
        )
    )
    padding = "x" * 100
    i = 0
    while mode == "stream" or i < count:
        line = f'{{"event_id": "crash-{i}", "padding": "{padding}"}}\n'.encode()
        if sink.submit(line) and mode == "stream":
            os.write(1, f"{i}\n".encode())
        i += 1
    os.write(1, b"done\n")
    sys.stdin.read()  # until killed
    os._exit(0)


if __name__ == "__main__":
    main()

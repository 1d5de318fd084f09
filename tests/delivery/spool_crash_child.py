"""A process that appends events to a spool, for the crash and adoption tests in test_spool.py.

Usage: spool_crash_child.py DIRECTORY COUNT MODE [SEGMENT_BYTES]

Appends COUNT events `{"event_id": "e<i>", ...}` and, after each append returned True, writes
`<i>\\n` to stdout, so the parent knows exactly which events were on disk. MODE `exit` ends
with os._exit(0) without closing the spool (a dead owner); MODE `loop` keeps appending until
it is killed (the parent sends SIGKILL mid-stream).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bridge.delivery.spool import Spool
from bridge.stats import SinkStats


def main() -> None:
    directory, count, mode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    segment_bytes = int(sys.argv[4]) if len(sys.argv) > 4 else None
    spool = Spool(
        directory,
        max_bytes=1 << 40,
        fsync="never",
        event_ttl=3600.0,
        stats=SinkStats(),
        segment_bytes=segment_bytes,
    )
    padding = "x" * 200
    i = 0
    while mode == "loop" or i < count:
        line = f'{{"event_id": "e{i}", "padding": "{padding}"}}\n'.encode()
        if not spool.append(line):
            os._exit(3)
        os.write(1, f"{i}\n".encode())
        i += 1
    os._exit(0)


if __name__ == "__main__":
    main()

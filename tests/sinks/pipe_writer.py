"""A process with a stdout sink of its own on an inherited pipe, driven one command at a time.

`python -m tests.sinks.pipe_writer FD` writes event lines to FD (the shared pipe's write end,
passed with `pass_fds`), the way each gunicorn worker writes to the stdout it inherited.
Commands arrive as JSON lines on stdin; each gets one JSON line back on stdout:

- `{"op": "submit", "n": 1, "pad": 9000}`: submit one line; answers the sink's counters.
- `{"op": "fork_submit", "n": 2, "pad": 10, "ack_fd": 7}`: fork a child that waits for
  SIGUSR1, then submits its line, writes one byte to `ack_fd`, flushes and exits (status 0
  when flushed); answers `{"child": pid}`.
- `{"op": "close"}`: close the sink, reap the child; answers `{"child_status": n}` and exits.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

from bridge.config import StdoutSinkSettings
from bridge.sinks.stdout import StdoutSink


def event_line(n: int, pad: int) -> bytes:
    """One JSON line; `pad` bytes of filler make it as long as the test needs."""
    return json.dumps({"n": n, "pid": os.getpid(), "pad": "y" * pad}).encode() + b"\n"


def counters(sink: StdoutSink, accepted: bool) -> dict[str, Any]:
    stats = sink.stats()
    return {
        "accepted": accepted,
        "delivered": stats["delivered"],
        "queue_depth": stats["queue_depth"],
    }


def fork_submit(sink: StdoutSink, line: bytes, ack_fd: int) -> int:
    """Fork a child that submits `line` once SIGUSR1 arrives: the test picks the moment."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            signal.sigwait({signal.SIGUSR1})
            sink.submit(line)
            os.write(ack_fd, b"s")
            status = 0 if sink.flush(20.0) else 2
        finally:
            os._exit(status)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    return pid


def main() -> None:
    fd = int(sys.argv[1])
    sink = StdoutSink(StdoutSinkSettings(type="stdout", name="stdout-0"), fd=fd)
    child = 0
    for text in sys.stdin:
        command = json.loads(text)
        answer: dict[str, Any]
        if command["op"] == "submit":
            accepted = sink.submit(event_line(command["n"], command["pad"]))
            answer = counters(sink, accepted)
        elif command["op"] == "fork_submit":
            line = event_line(command["n"], command["pad"])
            child = fork_submit(sink, line, command["ack_fd"])
            answer = {"child": child}
        else:
            sink.close(5.0)
            status = os.waitpid(child, 0)[1] if child else 0
            answer = {"child_status": os.waitstatus_to_exitcode(status)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
        if command["op"] == "close":
            return


if __name__ == "__main__":
    main()

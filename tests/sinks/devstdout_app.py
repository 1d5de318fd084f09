"""A Flask app whose file sink writes to `/dev/stdout`, driven one command at a time.

`python -m tests.sinks.devstdout_app ANSWER_FD SINK_JSON` runs with its stdout on the pipe or
terminal under test (the way docker runs an app), the file sink's table being
`{"type": "file", "path": "/dev/stdout", **SINK_JSON}`. Commands arrive as JSON lines on
stdin; each gets one JSON line back on ANSWER_FD (stdout is what the test reads events from):

- `{"op": "fill"}`: fill the stdout pipe until it takes no more; answers `{"filled": bytes}`.
- `{"op": "get"}`: one request through the test client; answers the status and sink stats.
- `{"op": "stats"}`: answers the sink stats only.
- `{"op": "flush"}`: answers `{"flushed": bool}` and the sink stats.
- `{"op": "close"}`: answers the sink stats and whether the bridge closed cleanly; exits.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from flask import Flask

from bridge import SignalBridge


def fill_stdout() -> int:
    """Write through an open of our own: fd 1 itself stays blocking (the test shares it)."""
    fd = os.open("/proc/self/fd/1", os.O_WRONLY | os.O_NONBLOCK)
    filled = 0
    try:
        while True:
            filled += os.write(fd, b"#" * 511 + b"\n")
    except BlockingIOError:
        return filled
    finally:
        os.close(fd)


def main() -> None:
    answers = int(sys.argv[1])
    app = Flask("devstdout")
    app.config["BRIDGE_SINKS"] = [
        {"type": "file", "path": "/dev/stdout", **json.loads(sys.argv[2])}
    ]

    @app.route("/")
    def index() -> str:
        return "ok"

    bridge = SignalBridge(app)
    client = app.test_client()
    for text in sys.stdin:
        command = json.loads(text)
        answer: dict[str, Any] = {}
        if command["op"] == "fill":
            answer["filled"] = fill_stdout()
        elif command["op"] == "get":
            answer["status"] = client.get("/").status_code
        elif command["op"] == "stats":
            pass
        elif command["op"] == "flush":
            answer["flushed"] = bridge.flush(timeout=10.0)
        answer["stats"] = bridge.stats()["sinks"]["file-0"]
        if command["op"] == "close":
            answer["closed"] = bridge.close(timeout=5.0)
        os.write(answers, json.dumps(answer).encode() + b"\n")
        if command["op"] == "close":
            return


if __name__ == "__main__":
    main()

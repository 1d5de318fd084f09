"""A process whose real stderr the test controls, reporting failures the way the bridge does.

`python -m tests.diagnostics_child SCENARIO RESULT_FD`: runs one scenario, then writes one JSON
object (what happened) to RESULT_FD. pytest replaces `sys.stderr`, so only a process of its
own shows what the bridge does with the real fd 2.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from flask import Flask

from bridge import SignalBridge, diagnostics, redaction

SECRET = "s3cr3t-token-42"
URL_PASSWORD = "hunter2"


def request_with_a_failing_sink() -> dict[str, Any]:
    """stdout is /dev/full, so every event's write fails and is reported on the request."""
    app = Flask("failing")
    app.config["BRIDGE_SINKS"] = [{"type": "stdout"}]
    app.config["BRIDGE_SIGNALS"] = ["request_finished"]

    @app.route("/")
    def index() -> str:
        return "ok"

    bridge = SignalBridge(app)
    statuses = [app.test_client().get("/").status_code for _ in range(3)]
    stats = bridge.stats()["sinks"]["stdout-0"]
    bridge.close(timeout=1.0)
    return {
        "statuses": statuses,
        "write_errors": stats["dropped_by_reason"].get("write_error", 0),
        "dropped_reports": diagnostics.dropped_reports(),
    }


def report_while_the_pipe_is_locked() -> dict[str, Any]:
    """Another open of the pipe holds the lock, as a writer in the middle of a long line."""
    other = os.open(f"/proc/self/fd/{sys.stderr.fileno()}", os.O_WRONLY)
    fcntl.flock(other, fcntl.LOCK_EX)
    during = diagnostics.report("during", "written while another writer is mid-line")
    fcntl.flock(other, fcntl.LOCK_UN)
    after = diagnostics.report("after", "written once the line is complete")
    os.close(other)
    return {"during": during, "after": after, "dropped_reports": diagnostics.dropped_reports()}


def report_secrets() -> dict[str, Any]:
    """A registered secret and URL credentials, quoted by a failure message."""
    redaction.register_secrets([f"Bearer {SECRET}"])
    written = diagnostics.report(
        "secret",
        f"collector said: invalid token {SECRET} for https://ada:{URL_PASSWORD}@logs.test/in",
    )
    return {"written": written}


def report_before_and_after_fork() -> dict[str, Any]:
    """The parent reports a cause; a child forked afterwards reports the same cause too."""
    parent = diagnostics.report("forked", "from the parent")
    pid = os.fork()
    if pid == 0:
        os._exit(0 if diagnostics.report("forked", "from the child") else 1)
    child_status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return {"parent": parent, "child_status": child_status, "child_pid": pid}


SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {
    "request": request_with_a_failing_sink,
    "locked": report_while_the_pipe_is_locked,
    "secrets": report_secrets,
    "fork": report_before_and_after_fork,
}


def main() -> None:
    result = SCENARIOS[sys.argv[1]]()
    os.write(int(sys.argv[2]), json.dumps(result).encode())


if __name__ == "__main__":
    main()

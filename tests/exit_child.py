"""A process that ends while its collector trickles: `python -m tests.exit_child URL APPS`.

Each of APPS apps has an http sink whose collector (URL) never finishes a reply, and a stdout
sink; one more app is dropped, so its pipeline is released on a thread of its own. The script
returns when a line arrives on stdin (the test saw every send begin): what follows is the
interpreter's exit, which must not wait longer than one `shutdown_timeout` (plus the grace
given to a send that is cut), however many apps there are.
"""

from __future__ import annotations

import gc
import sys

from flask import Flask

from bridge import SignalBridge

SHUTDOWN_TIMEOUT = 3.0
KEPT: list[Flask] = []  # alive until the interpreter exits: closed by the bridge's atexit


def bridged(name: str, url: str) -> Flask:
    app = Flask(name)
    app.config["BRIDGE_SERVICE"] = name
    app.config["BRIDGE_SHUTDOWN_TIMEOUT"] = SHUTDOWN_TIMEOUT
    app.config["BRIDGE_SIGNALS"] = ["request_finished"]
    app.config["BRIDGE_SINKS"] = [
        # Timeouts far beyond the test: only close() can cut these sends short.
        {"type": "http", "url": url, "timeout_read": 60, "batch_timeout": 0.01},
        {"type": "stdout"},
    ]

    @app.route("/")
    def index() -> str:
        return "ok"

    SignalBridge(app)
    app.test_client().get("/")
    return app


def main() -> None:
    url, apps = sys.argv[1], int(sys.argv[2])
    KEPT.extend(bridged(f"svc{n}", url) for n in range(apps))
    bridged("dropped", url)  # no reference kept: freed at once, released on a thread
    gc.collect()
    sys.stdin.readline()  # the test saw every send begin


if __name__ == "__main__":
    main()

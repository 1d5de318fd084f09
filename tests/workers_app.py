"""The app the multi-worker stats and metrics tests run in several processes.

One `request.finished` event per request, into the file `WORKERS_EVENTS` names; `GET /`
answers with the serving process's pid, so a test knows which worker served it; the bridge's
Prometheus metrics are mounted at `/metrics`.
"""

from __future__ import annotations

import os

from flask import Flask

from bridge import SignalBridge, metrics

app = Flask(__name__)
app.config["BRIDGE_SINKS"] = [{"type": "file", "path": os.environ["WORKERS_EVENTS"]}]
app.config["BRIDGE_SIGNALS"] = ["request_finished"]
bridge = SignalBridge(app)
metrics.mount(app)


@app.route("/")
def index() -> str:
    return str(os.getpid())

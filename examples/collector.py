"""A tiny local log collector for the demo: takes the http sink's ndjson POSTs and keeps them.

It stands in for Vector's `http_server` source or Fluent Bit's `http` input: one JSON object
per line in the body, gzip or not (`Content-Encoding`), answered with 200. It runs on its own
thread on 127.0.0.1, on a port the kernel picks, for as long as the `with` block lasts.
"""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["LocalCollector"]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        gzipped = self.headers.get("Content-Encoding", "").lower() == "gzip"
        self.server.collector.receive(gzip.decompress(body) if gzipped else body, gzipped=gzipped)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None  # the demo prints its own summary


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    collector: LocalCollector


class LocalCollector:
    """`with LocalCollector() as collector:` then `collector.url`; `collector.events` after."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.problems: list[str] = []  # lines that were not JSON objects
        self.batches = 0
        self.gzipped_batches = 0
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.collector = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="demo-collector", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def receive(self, body: bytes, *, gzipped: bool) -> None:
        events: list[dict[str, Any]] = []
        problems: list[str] = []
        for line in body.splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                problems.append(f"not JSON: {line[:80]!r}")
                continue
            if isinstance(value, dict):
                events.append(value)
            else:
                problems.append(f"not an object: {line[:80]!r}")
        with self._lock:
            self.events.extend(events)
            self.problems.extend(problems)
            self.batches += 1
            self.gzipped_batches += gzipped

    def __enter__(self) -> LocalCollector:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10.0)

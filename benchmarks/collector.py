"""A local HTTP collector that only counts events, in a process of its own, for the benchmarks.

Used wherever a benchmark sends to the http sink (`bench_http`, the request and loop sections):
it runs in its own interpreter on 127.0.0.1, so it never shares a GIL or a CPU budget with
what is measured. It counts NDJSON lines, JSON-array items, or one event per request
otherwise, per request path and in total: each contender posts to a path of its own
(`CountingCollector.url_for(name)`), and `GET` on that path returns its count (`GET /`: the
total), so a contender that lost events shows a short count.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import requests

__all__ = ["CountingCollector", "count_at", "requests_on", "serve_counting_collector"]

Request = tuple[bytes, bytes, dict[bytes, bytes], bytes]  # method, path, headers, body


def _count(content_type: bytes, body: bytes) -> int:
    if content_type.startswith(b"application/x-ndjson"):
        return body.count(b"\n")
    if content_type.startswith(b"application/json"):
        parsed = json.loads(body)
        return len(parsed) if isinstance(parsed, list) else 1
    return 1


def requests_on(conn: socket.socket) -> Iterator[Request]:
    """The HTTP/1.1 requests arriving on one keep-alive connection, until the client closes
    it (a minimal reader for the benchmarks' receivers: Content-Length bodies only)."""
    buf = bytearray()
    while True:
        while (end := buf.find(b"\r\n\r\n")) < 0:
            chunk = conn.recv(262144)
            if not chunk:
                return
            buf += chunk
        head = bytes(buf[:end]).split(b"\r\n")
        del buf[: end + 4]
        method, path = head[0].split(b" ")[:2]
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        while len(buf) < length:
            chunk = conn.recv(max(262144, length - len(buf)))
            if not chunk:
                return
            buf += chunk
        body = bytes(buf[:length])
        del buf[:length]
        yield method, path, headers, body


class _Counts:
    """Events counted per request path, and in total (under `b"/"`)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_path: dict[bytes, int] = {}

    def add(self, path: bytes, events: int) -> None:
        with self.lock:
            self.by_path[path] = self.by_path.get(path, 0) + events
            self.by_path[b"/"] = self.by_path.get(b"/", 0) + events

    def get(self, path: bytes) -> int:
        with self.lock:
            return self.by_path.get(path, 0)


def _connection(conn: socket.socket, counts: _Counts) -> None:
    with conn:
        for method, target, headers, body in requests_on(conn):
            path = target.partition(b"?")[0]
            if method == b"GET":
                payload = str(counts.get(path)).encode()
            else:
                if headers.get(b"content-encoding") == b"gzip":
                    body = zlib.decompress(body, 31)
                counts.add(path, _count(headers.get(b"content-type", b""), body))
                payload = b""
            close = headers.get(b"connection", b"").lower() == b"close"
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                + str(len(payload)).encode()
                + (b"\r\nConnection: close" if close else b"")
                + b"\r\n\r\n"
                + payload
            )
            if close:
                return


def serve_counting_collector() -> None:
    """Listen on 127.0.0.1 (port printed on stdout); count events; `GET path` returns the
    events posted to `path` (`GET /`: all of them). Runs until stdin closes."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    counts = _Counts()

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=_connection, args=(conn, counts), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    print(listener.getsockname()[1], flush=True)
    sys.stdin.read()


def count_at(url: str) -> int:
    """The events the collector counted for `url`'s path (from any process)."""
    with urllib.request.urlopen(url, timeout=10.0) as response:
        return int(response.read())


class CountingCollector:
    """The collector process, seen from the process that started it."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from benchmarks.collector import serve_counting_collector; "
                "serve_counting_collector()",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.url_for("ingest")
        self._session = requests.Session()

    def url_for(self, name: str) -> str:
        """A path of its own for one contender: post there, count there."""
        return f"{self.base}/{name}"

    def count(self, url: str | None = None) -> int:
        """Events counted for `url` (one of `url_for`'s), or in total."""
        return int(self._session.get(url or f"{self.base}/").text)

    def wait_for(self, total: int, timeout: float = 120.0, *, url: str | None = None) -> None:
        """Return once the count (for `url`, or in total) reaches `total`; raise after
        `timeout`."""
        deadline = time.monotonic() + timeout
        while self.count(url) < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"collector counted {self.count(url)} of {total} events")
            time.sleep(0.002)

    def close(self) -> None:
        self._session.close()
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(10)
        self.process.stdout.close()

"""Every wire format end to end into a local receiver: events/s and the sender's CPU per event.

One row per implemented format (`bridge.formats.IMPLEMENTED`), beside the NDJSON row and the
bare batching floor of `bench_http`: each `HttpSink` (gzip off, defaults otherwise) gets the
same ~500-byte event lines, `flush()` returns once the receiver acknowledged them all, and the
sink's counters must say every event was delivered. The receiver, in its own process, answers
each platform's success the way the platform does (Loki 204, a bulk reply naming every item
created, HEC's `{"code":0}`, OTLP's empty export response, Datadog 202), so each format's reply
reading is timed too. "CPU µs / event" is this process's CPU time over the batch minus the
submitting thread's own: the delivery worker's encoding, signing, compressing and sending.
Target: every format at least 0.5x the NDJSON events/s (median of per-round ratios).
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.bench_http import encoded_lines, requests_on, sink_settings
from benchmarks.common import Contender, interleave, markdown_table, median, target_line
from bridge import formats
from bridge.sinks.http import HttpSink

__all__ = ["run", "serve_platform_receiver"]

# Options a format needs to start (a token, a logstore); only those its Options declare apply.
NEEDED_OPTIONS: dict[str, Any] = {
    "token": "bench-token",
    "api_key": "bench-api-key",
    "logstore": "bench",
    "access_key_id": "bench-id",
    "access_key_secret": "bench-secret",
}
TARGET = 0.5


def _reply(path: bytes, content_type: bytes, body: bytes) -> tuple[bytes, bytes]:
    """(status line, body) a platform answers a successful request with."""
    if path.split(b"?")[0].endswith(b"/_bulk"):
        actions = body.count(b"\n") // 2
        items = [{"create": {"status": 201}} for _ in range(actions)]
        return b"200 OK", orjson.dumps({"took": 1, "errors": False, "items": items})
    if b"/loki/api/v1/push" in path:
        return b"204 No Content", b""
    if b"/services/collector" in path:
        return b"200 OK", b'{"text":"Success","code":0}'
    if path.startswith(b"/v1/logs"):
        return b"200 OK", b"{}" if content_type.startswith(b"application/json") else b""
    if path.startswith(b"/api/v2/logs"):
        return b"202 Accepted", b"{}"
    return b"200 OK", b""


def _connection(conn: socket.socket) -> None:
    with conn:
        for _, path, headers, body in requests_on(conn):
            status, payload = _reply(path, headers.get(b"content-type", b""), body)
            conn.sendall(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
            )


def serve_platform_receiver() -> None:
    """Listen on 127.0.0.1 (port printed on stdout) and answer like each platform; runs until
    stdin closes."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=_connection, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    print(listener.getsockname()[1], flush=True)
    sys.stdin.read()


def options_for(name: str) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(formats.options_type(name))}
    return {k: v for k, v in NEEDED_OPTIONS.items() if k in fields}


def format_contender(name: str, url: str, lines: list[bytes], cpu: list[float]) -> Contender:
    sinks: list[HttpSink] = []

    def start() -> None:
        settings = sink_settings(url, format=name, format_options=options_for(name))
        sinks.append(HttpSink(settings))

    def batch() -> list[float]:
        sink = sinks[0]
        submit = sink.submit
        process, own, started = time.process_time(), time.thread_time(), time.perf_counter()
        if sum(map(submit, lines)) != len(lines):
            raise RuntimeError(f"{name}: the sink refused events")
        if not sink.flush(120.0):
            raise RuntimeError(f"{name}: flush timed out: {sink.stats()['last_error']}")
        elapsed = time.perf_counter() - started
        worker = (time.process_time() - process) - (time.thread_time() - own)
        if sink.stats()["delivered"] != len(lines):
            raise RuntimeError(f"{name}: not every event was delivered: {sink.stats()}")
        cpu.append(worker / len(lines) * 1e6)
        return [len(lines) / elapsed]

    def stop() -> None:
        sinks.pop().close(10.0)

    return Contender(name, batch, start, stop)


def run(quick: bool = False, *, rounds: int | None = None, events: int | None = None) -> str:
    rounds = rounds or (2 if quick else 5)
    lines = encoded_lines(events or (2_000 if quick else 20_000))
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from benchmarks.bench_formats import serve_platform_receiver as s; s()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert process.stdin is not None and process.stdout is not None
    cpu: dict[str, list[float]] = {name: [] for name in formats.IMPLEMENTED}
    try:
        url = f"http://127.0.0.1:{int(process.stdout.readline())}"
        contenders = [format_contender(name, url, lines, cpu[name]) for name in formats.IMPLEMENTED]
        interleave(contenders, rounds, seed=5)
    finally:
        process.stdin.close()
        process.wait(10)
        process.stdout.close()
    samples = {c.name: c.samples for c in contenders}
    base = samples["ndjson"]

    def vs_ndjson(name: str) -> float:
        return median(a / b for a, b in zip(samples[name], base, strict=True))

    rows = [
        (
            name,
            f"{median(samples[name]):,.0f}",
            f"{median(cpu[name]):.1f}",
            f"{vs_ndjson(name):.2f}x",
        )
        for name in formats.IMPLEMENTED
    ]
    table = markdown_table(("format", "events/s (median)", "CPU µs / event", "vs ndjson"), rows)
    targets = [
        target_line(f"{name} vs ndjson", vs_ndjson(name), TARGET, unit="x", at_most=False)
        for name in formats.IMPLEMENTED
        if name != "ndjson"
    ]
    return (
        "## Wire formats: end to end into a local receiver\n\n"
        + (__doc__ or "").split("\n\n", 1)[-1].strip()
        + "\n\n"
        + table
        + "\n\n"
        + "\n".join(targets)
        + "\n"
    )

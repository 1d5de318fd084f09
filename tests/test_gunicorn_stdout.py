"""Four real gunicorn workers share one stdout pipe, drained slowly by a lagging log reader.

The issue's scenario: a container log driver reads the pipe slowly, and lines over PIPE_BUF
(every stack trace) written by two workers used to interleave, leaving non-JSON lines and
lost `request.exception` events. Here the pipe is one page (4 KiB), so nearly every stack
trace goes out in several writes; the reader takes small chunks with a pause after each.
Each request has its own X-Request-ID; after a SIGTERM (workers flush on exit), every line on
the pipe must be JSON and every request's events there exactly once, with nothing dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.streams import PIPE_BUF
from examples.server import GunicornServer

pytestmark = pytest.mark.slow

APP = "tests.gunicorn_stdout_app:app"
WORKERS = 4
REQUESTS = 300
CLIENTS = 8
F_SETPIPE_SZ = 1031
READ_CHUNK = 2048
READ_PAUSE = 0.001  # after each chunk: a throttle, not a synchronization
READ_LIMIT = 120.0  # the reader gives up by then, whatever happens


def request_id(number: int) -> str:
    return f"req-{number:04d}"


def fails(number: int) -> bool:
    """Two requests in three raise; the others make one small line each."""
    return number % 3 != 0


class PipedGunicorn(GunicornServer):
    """A GunicornServer whose stdout is the given pipe, shared by the master and its workers."""

    def __init__(self, *args: Any, stdout_fd: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stdout_fd = stdout_fd

    def _spawn(self, port: int) -> None:
        env = {**self.env, "PYTHONUNBUFFERED": "1"}
        with self.stderr_path.open("ab") as err:
            self._process = subprocess.Popen(
                self.command(port),
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self.stdout_fd,
                stderr=err,
                start_new_session=True,
            )


class SlowReader:
    """Reads the pipe in small chunks, pausing after each, until every writer closed it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = bytearray()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + READ_LIMIT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 1.0)
            if not ready:
                continue
            chunk = os.read(self.fd, READ_CHUNK)
            if not chunk:
                return
            self.data.extend(chunk)
            time.sleep(READ_PAUSE)

    def join(self) -> bytes:
        self.thread.join(READ_LIMIT)
        assert not self.thread.is_alive(), "stdout never reached end of file"
        return bytes(self.data)


def send_requests(url: str) -> dict[str, int]:
    """REQUESTS requests from CLIENTS threads; the status of each, by request id."""
    numbers = iter(range(REQUESTS))
    lock = threading.Lock()
    statuses: dict[str, int] = {}

    def client() -> None:
        with requests.Session() as http:
            while True:
                with lock:
                    number = next(numbers, None)
                if number is None:
                    return
                path = f"/fail/{30 + number % 50}" if fails(number) else "/ok"
                rid = request_id(number)
                response = http.get(url + path, headers={"X-Request-ID": rid}, timeout=30.0)
                with lock:
                    statuses[rid] = response.status_code

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60.0)
    assert not any(thread.is_alive() for thread in threads), "a client thread hung"
    return statuses


def parse_lines(raw: bytes) -> list[dict[str, Any]]:
    """Every line as JSON; fails on the first torn or interleaved one, saying how many."""
    assert raw.endswith(b"\n"), "stdout ends in the middle of a line"
    lines = raw.splitlines()
    events, torn = [], []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            torn.append(line)
    if torn:
        first = f"{torn[0][:100]!r}...{torn[0][-100:]!r}"
        pytest.fail(f"{len(torn)} of {len(lines)} lines torn or interleaved, first: {first}")
    return events


def serve(tmp_path: Path, extra_args: list[str]) -> None:
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, F_SETPIPE_SZ, PIPE_BUF)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["STATS_DIR"] = str(tmp_path)
    server = PipedGunicorn(
        APP,
        cwd=tmp_path,
        workers=WORKERS,
        extra_args=extra_args,
        env=env,
        ready_path="/ok",
        stdout_fd=write_fd,
    )
    reader = SlowReader(read_fd)
    reader.start()
    try:
        try:
            server.start()
        finally:
            os.close(write_fd)  # from now on only gunicorn holds it: its exit ends the file
        statuses = send_requests(server.url)
        assert 0 == server.stop()
        raw = reader.join()
    finally:
        server.kill()
        reader.join()
        with contextlib.suppress(OSError):
            os.close(read_fd)

    expected = {request_id(n): 500 if fails(n) else 200 for n in range(REQUESTS)}
    assert expected == statuses
    events = parse_lines(raw)
    ours = [e for e in events if str(e.get("request_id", "")).startswith("req-")]
    exceptions = Counter(e["request_id"] for e in ours if e["event"] == "request.exception")
    finished = Counter(e["request_id"] for e in ours if e["event"] == "request.finished")
    assert {rid: 1 for rid, status in expected.items() if status == 500} == dict(exceptions)
    assert {rid: 1 for rid in expected} == dict(finished)
    traces = [len(e["exception.stacktrace"]) for e in ours if e["event"] == "request.exception"]
    assert 1.5 * PIPE_BUF < min(traces)  # never one atomic write

    stats = [json.loads(p.read_text()) for p in tmp_path.glob("bridge-stats-*.json")]
    assert len(stats) >= WORKERS
    assert [0] * len(stats) == [s["stdout-0"]["dropped"] for s in stats]
    complaints = [
        line
        for line in server.stderr_text().splitlines()
        if line.startswith("flask-signal-bridge[")
    ]
    assert [] == complaints


class TestGunicornStdoutSink:
    @pytest.mark.parametrize(
        "extra_args",
        [pytest.param([], id="fork-then-import"), pytest.param(["--preload"], id="preload")],
    )
    def test_long_lines_from_four_workers_arrive_whole_and_once(
        self, tmp_path: Path, extra_args: list[str]
    ) -> None:
        """Stack traces of many KiB from four workers, a slow reader: no torn or lost line."""
        serve(tmp_path, extra_args)

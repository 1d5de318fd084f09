"""Several real gunicorn workers append to one file while it is rotated under them.

The file sink's promise: one whole line per `write()` with O_APPEND, so workers never tear or
interleave lines; logrotate's renames are noticed and followed; size rotation (`rotate_bytes`)
is done by one worker at a time. Each request carries a unique X-Request-ID, so after a SIGTERM
(workers flush on exit) every request's events can be counted across the file and all its
rotated copies: each must be there exactly once.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from examples.server import GunicornServer

pytestmark = pytest.mark.slow

APP = "examples.login_log.app:app"
WORKERS = 4
REQUESTS = 400
CLIENTS = 6
EXTERNAL_ROTATIONS = 4
LOGIN_EVERY = 4  # every 4th request is a (cheap: unknown user) failed login

# How gunicorn is run: each worker imports the app; the master imports it once before forking
# (the sink's state is inherited); and workers recycled during traffic (--max-requests), forked
# from a master whose descriptor still names the first, long rotated, file.
SERVER_MODES = {
    "fork-then-import": [],
    "preload": ["--preload"],
    "preload-recycled": ["--preload", "--max-requests", "40", "--max-requests-jitter", "20"],
}


def request_id(number: int) -> str:
    return f"req-{number:04d}"


def username(number: int) -> str:
    """Some names are long, so that some lines are several KiB: still one write each."""
    return f"user-{number}" + ("-" + "x" * 4000 if number % (4 * LOGIN_EVERY) == 0 else "")


def all_copies(path: Path) -> list[Path]:
    """The file and its rotated copies (`events.jsonl`, `events.jsonl.1`, ...), oldest first."""
    copies = [p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()]
    copies.sort(key=lambda p: int(p.suffix[1:]), reverse=True)
    return copies + ([path] if path.exists() else [])


def read_all(path: Path) -> list[dict[str, Any]]:
    """Every event of the file and its copies; fails on a torn, partial or non-JSON line."""
    events: list[dict[str, Any]] = []
    for copy in all_copies(path):
        raw = copy.read_bytes()
        assert raw == b"" or raw.endswith(b"\n"), f"{copy.name} ends with a partial line"
        for number, line in enumerate(raw.splitlines(), 1):
            try:
                event = json.loads(line)
            except ValueError:
                pytest.fail(f"{copy.name} line {number} is torn or not JSON: {line[:120]!r}")
            assert isinstance(event, dict), f"{copy.name} line {number} is not an object"
            events.append(event)
    return events


class Traffic:
    """`total` requests from CLIENTS threads, each with its own X-Request-ID."""

    def __init__(self, url: str, total: int = REQUESTS) -> None:
        self.url = url
        self.total = total
        self.statuses: dict[str, int] = {}
        self.errors: list[str] = []
        self.completed = 0
        self.progress = threading.Condition()  # notified after every answered request
        self._next = 0
        self._threads = [threading.Thread(target=self._client) for _ in range(CLIENTS)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=60.0)
        assert not any(thread.is_alive() for thread in self._threads), "a client thread hung"

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until `predicate()` holds (checked after each answered request) or all are
        answered; returns the predicate's value."""
        with self.progress:
            self.progress.wait_for(lambda: predicate() or self.completed >= self.total, timeout)
            return predicate()

    def _take(self) -> int | None:
        with self.progress:
            if self._next >= self.total:
                return None
            self._next += 1
            return self._next - 1

    def _client(self) -> None:
        with requests.Session() as http:
            while (number := self._take()) is not None:
                rid = request_id(number)
                headers = {"X-Request-ID": rid}
                try:
                    if number % LOGIN_EVERY == 0:
                        form = {"username": username(number), "password": "x"}
                        response = http.post(
                            self.url + "/login", data=form, headers=headers, timeout=30.0
                        )
                    else:
                        response = http.get(self.url + "/", headers=headers, timeout=30.0)
                    status = response.status_code
                except requests.RequestException as exc:
                    status = -1
                    self.errors.append(f"{rid}: {exc}")
                with self.progress:
                    self.statuses[rid] = status
                    self.completed += 1
                    self.progress.notify_all()


def logrotate(path: Path) -> bool:
    """What logrotate does without copytruncate: shift `.N` to `.N+1`, rename the file to `.1`."""
    if not path.exists():
        return False  # missingok: no worker has reopened it since the last rotation
    copies = sorted(
        (int(p.suffix[1:]) for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()),
        reverse=True,
    )
    for index in copies:
        os.rename(f"{path}.{index}", f"{path}.{index + 1}")
    os.rename(path, f"{path}.1")
    return True


def start_server(tmp_path: Path, sink: dict[str, Any], mode: str) -> GunicornServer:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["BRIDGE_SINKS"] = json.dumps([sink])  # replaces bridge.toml's file and stdout sinks
    return GunicornServer(
        APP,
        cwd=tmp_path,
        workers=WORKERS,
        extra_args=SERVER_MODES[mode],
        env=env,
    )


def assert_each_request_once(events: list[dict[str, Any]], traffic: Traffic) -> None:
    """Every request answered, and its events present exactly once across all copies."""
    assert [] == traffic.errors
    expected_ids = {request_id(n) for n in range(traffic.total)}
    assert expected_ids == set(traffic.statuses)
    wrong_status = {
        rid: status
        for rid, status in traffic.statuses.items()
        if status != (401 if int(rid[4:]) % LOGIN_EVERY == 0 else 200)
    }
    assert {} == wrong_status
    finished = Counter(e.get("request_id") for e in events if e["event"] == "request.finished")
    logins = Counter(
        (e.get("request_id"), e.get("username")) for e in events if e["event"] == "user-login"
    )
    assert {rid: 1 for rid in expected_ids} == {rid: finished[rid] for rid in expected_ids}
    expected_logins = {
        (request_id(n), username(n)): 1 for n in range(traffic.total) if n % LOGIN_EVERY == 0
    }
    assert expected_logins == dict(logins)
    event_ids = Counter(e["event_id"] for e in events)
    assert [] == [event_id for event_id, count in event_ids.items() if count > 1]


def bridge_complaints(server: GunicornServer) -> list[str]:
    """The bridge's own stderr reports of failures (slow-write notices are not failures)."""
    return [
        line
        for line in server.stderr_text().splitlines()
        if line.startswith("flask-signal-bridge[") and "a write took" not in line
    ]


def serve_with_logrotate(tmp_path: Path, options: dict[str, Any], mode: str) -> None:
    """Traffic while the file is renamed logrotate-style; then every request's events once."""
    path = tmp_path / "logs" / "events.jsonl"
    server = start_server(tmp_path, {"type": "file", "path": str(path), **options}, mode)
    renames = 0
    try:
        server.start()
        traffic = Traffic(server.url)
        traffic.start()
        try:
            step = traffic.total // (EXTERNAL_ROTATIONS + 1)
            for k in range(1, EXTERNAL_ROTATIONS + 1):
                # Rename once k steps of requests are answered, if a worker has reopened the
                # file since the last rename (each checks at most once a second).
                due = traffic.wait_until(lambda k=k: traffic.completed >= k * step, 60.0)
                if due and traffic.wait_until(path.exists, 60.0):
                    renames += logrotate(path)
        finally:
            traffic.join()
        # Workers follow the last rename: a new file appears once one of them writes again.
        with requests.Session() as http:
            for probe in range(400):
                if path.exists():
                    break
                headers = {"X-Request-ID": f"probe-{probe}"}
                http.get(server.url + "/", headers=headers, timeout=30.0)
        assert 0 == server.stop()
    finally:
        server.kill()
    assert renames >= 1
    assert path.exists(), "no worker reopened the file after it was renamed"
    assert_each_request_once(read_all(path), traffic)
    assert [] == bridge_complaints(server)


def serve_with_size_rotation(tmp_path: Path, options: dict[str, Any], mode: str) -> None:
    """Traffic with `rotate_bytes` and `backups`; then every request's events exactly once."""
    path = tmp_path / "logs" / "events.jsonl"
    backups = 50  # far more than the ~10 rotations of this traffic: nothing may fall off
    sink = {"type": "file", "path": str(path), "rotate_bytes": 32 * 1024, "backups": backups}
    server = start_server(tmp_path, {**sink, **options}, mode)
    try:
        server.start()
        traffic = Traffic(server.url)
        traffic.start()
        traffic.join()
        assert 0 == server.stop()
    finally:
        server.kill()
    copies = all_copies(path)
    assert len(copies) >= 3, f"expected several rotated copies, found {[c.name for c in copies]}"
    assert not (path.parent / f"{path.name}.{backups}").exists()
    assert_each_request_once(read_all(path), traffic)
    assert [] == bridge_complaints(server)


@pytest.mark.parametrize("mode", list(SERVER_MODES))
class TestGunicornFileSink:
    def test_external_rotation_loses_and_tears_nothing(self, tmp_path: Path, mode: str) -> None:
        """Files renamed logrotate-style during traffic: every request's events land once."""
        serve_with_logrotate(tmp_path, {}, mode)

    def test_size_rotation_by_the_sink_loses_and_tears_nothing(
        self, tmp_path: Path, mode: str
    ) -> None:
        """rotate_bytes with backups, four workers racing to rotate: every event lands once."""
        serve_with_size_rotation(tmp_path, {}, mode)


class TestGunicornBackgroundFileSink:
    """`fsync = true`: every line goes through each worker's own sink thread."""

    def test_nothing_lost_through_rotation_recycling_and_sigterm(self, tmp_path: Path) -> None:
        """Threads restarted in forked and recycled workers write every line before exit."""
        serve_with_size_rotation(tmp_path, {"fsync": True}, "preload-recycled")


class TestGunicornSyncFileSink:
    """`sync = true`: each worker writes the line on the request thread before answering."""

    def test_external_rotation_is_followed(self, tmp_path: Path) -> None:
        """Workers reopen the file logrotate renamed, and lose and tear nothing."""
        serve_with_logrotate(tmp_path, {"sync": True}, "fork-then-import")

    def test_size_rotation_happens(self, tmp_path: Path) -> None:
        """rotate_bytes rotates a sync sink's file too, and loses and tears nothing."""
        serve_with_size_rotation(tmp_path, {"sync": True}, "fork-then-import")

"""The file sink on a path the operator made a symlink, a pipe or a terminal before start-up.

What is at the path when the sink is built is the operator's layout and is honoured
(`/dev/stdout` under docker, `/var/log/app/events.jsonl -> /data/events.jsonl`); a symlink
swapped in or re-pointed later is not followed. A pipe never makes a request wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from bridge import SignalBridge
from bridge.config import FileSinkSettings
from bridge.errors import ConfigError
from bridge.extension import build_sink
from tests.sinks.test_file import line, make_sink

ROOT = Path(__file__).resolve().parents[2]
F_SETPIPE_SZ = 1031
DEADLINE = 20.0  # seconds a step may take before the test fails instead of hanging
SECRET = b"root:secret\n"


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """`log/events.jsonl -> data/events.jsonl`, both made before start-up, and a victim."""
    (tmp_path / "log").mkdir()
    (tmp_path / "data").mkdir()
    target = tmp_path / "data" / "events.jsonl"
    target.touch()
    path = tmp_path / "log" / "events.jsonl"
    path.symlink_to(target)
    victim = tmp_path / "victim"
    victim.write_bytes(SECRET)
    return path, target


def numbers(path: Path) -> list[int]:
    return [json.loads(raw)["n"] for raw in path.read_bytes().splitlines()]


def config_error(**options: Any) -> ConfigError:
    """The ConfigError building sink 0 raises, as `init_app` reports it."""
    with pytest.raises(ConfigError) as caught:
        build_sink(FileSinkSettings(type="file", name="file-0", **options), 0)
    return caught.value


class TestOperatorSymlink:
    def test_requests_are_written_through_a_symlink_made_before_start(
        self, layout: tuple[Path, Path]
    ) -> None:
        """A Flask app whose log path is a symlink to another directory writes its events."""
        path, target = layout
        app = Flask("linked")
        app.config["BRIDGE_SINKS"] = [{"type": "file", "path": str(path)}]
        app.add_url_rule("/", "index", lambda: "ok")
        bridge = SignalBridge(app)
        try:
            assert 200 == app.test_client().get("/").status_code
            assert bridge.flush(timeout=5.0)
        finally:
            bridge.close(timeout=5.0)
        events = [json.loads(raw) for raw in target.read_bytes().splitlines()]
        assert ["request.finished"] == [event["event"] for event in events]
        assert path.is_symlink()

    def test_target_renamed_and_recreated_is_followed(self, layout: tuple[Path, Path]) -> None:
        """logrotate on the target (rename, create): new lines go to the new target."""
        path, target = layout
        sink = make_sink(path)
        for n in range(5):
            sink.submit(line(n))
        os.rename(target, target.with_name("events.jsonl.1"))
        target.touch()
        for n in range(5, 10):
            sink.submit(line(n))
        assert sink.flush(5.0)
        sink.close(1.0)
        assert ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9]) == (
            numbers(target.with_name("events.jsonl.1")),
            numbers(target),
        )

    def test_target_renamed_and_not_recreated_is_never_created(
        self, layout: tuple[Path, Path], reports: list[str]
    ) -> None:
        """The link left dangling: its target is not created; lines go on into the renamed
        file, and the refusal is reported."""
        path, target = layout
        sink = make_sink(path)
        sink.submit(line(0))
        os.rename(target, target.with_name("events.jsonl.1"))
        sink.submit(line(1))
        flushed = sink.flush(5.0)
        sink.close(1.0)
        assert not flushed
        assert not target.exists()
        assert [0, 1] == numbers(target.with_name("events.jsonl.1"))
        assert "never created" in sink.stats()["last_error"]
        assert any("never created" in message for message in reports)

    def test_repointed_link_is_not_followed(
        self, layout: tuple[Path, Path], tmp_path: Path, reports: list[str]
    ) -> None:
        """The link re-pointed after start-up: the other file is untouched, the refusal is
        reported, and lines go on into the file the link led to at start-up."""
        path, target = layout
        victim = tmp_path / "victim"
        sink = make_sink(path)
        sink.submit(line(0))
        path.unlink()
        path.symlink_to(victim)
        sink.submit(line(1))
        flushed = sink.flush(5.0)
        sink.close(1.0)
        assert not flushed
        assert SECRET == victim.read_bytes()
        assert [0, 1] == numbers(target)
        assert "re-pointed" in sink.stats()["last_error"]
        assert any("re-pointed" in message for message in reports)

    def test_repointed_link_with_its_target_deleted_drops_and_counts(
        self, layout: tuple[Path, Path], tmp_path: Path, reports: list[str]
    ) -> None:
        """Target deleted and the link re-pointed: every line is dropped and counted; the
        other file is untouched."""
        path, target = layout
        victim = tmp_path / "victim"
        sink = make_sink(path)
        sink.submit(line(0))
        target.unlink()
        path.unlink()
        path.symlink_to(victim)
        for n in range(1, 4):
            sink.submit(line(n))
        flushed = sink.flush(5.0)
        sink.close(1.0)
        assert not flushed
        assert SECRET == victim.read_bytes()
        stats = sink.stats()
        assert ({"write_error": 3}, 1) == (stats["dropped_by_reason"], stats["delivered"])
        assert "re-pointed" in stats["last_error"]
        assert any("re-pointed" in message for message in reports)

    def test_link_replaced_by_a_regular_file_is_written(self, layout: tuple[Path, Path]) -> None:
        """logrotate on the link's path renames the link and creates a plain file there:
        the sink writes to that file."""
        path, target = layout
        sink = make_sink(path)
        sink.submit(line(0))
        os.rename(path, path.with_name("events.jsonl.1"))
        path.touch()
        sink.submit(line(1))
        assert sink.flush(5.0)
        sink.close(1.0)
        assert ([0], [1]) == (numbers(target), numbers(path))
        assert not path.is_symlink()

    def test_link_removed_gives_a_plain_file(self, layout: tuple[Path, Path]) -> None:
        """The link renamed away and nothing put back: a plain file is created at the path,
        never the link's target."""
        path, target = layout
        sink = make_sink(path)
        sink.submit(line(0))
        os.rename(path, path.with_name("events.jsonl.1"))
        target.unlink()
        sink.submit(line(1))
        assert sink.flush(5.0)
        sink.close(1.0)
        assert ([1], False) == (numbers(path), target.exists())
        assert not path.is_symlink()

    def test_chain_of_links_made_before_start(self, layout: tuple[Path, Path]) -> None:
        """A symlink to a symlink to the file (`current -> 2026.jsonl`) is followed too."""
        path, target = layout
        current = target.with_name("current")
        current.symlink_to(target.name)
        path.unlink()
        path.symlink_to(current)
        sink = make_sink(path)
        sink.submit(line(0))
        assert sink.close(5.0)
        assert [0] == numbers(target)

    def test_dangling_symlink_at_start_is_a_config_error(self, tmp_path: Path) -> None:
        """Its target is never created: ConfigError naming the key, the value and why."""
        path = tmp_path / "events.jsonl"
        path.symlink_to(tmp_path / "absent" / "events.jsonl")
        error = config_error(path=path)
        assert ("sinks[0].path", str(path)) == (error.key, error.value)
        assert "dangling symlink" in error.expected
        assert not (tmp_path / "absent").exists()

    def test_rotate_bytes_with_a_symlink_is_a_config_error(self, layout: tuple[Path, Path]) -> None:
        """Size rotation would rename the link, not the file it leads to: refused at start."""
        path, target = layout
        error = config_error(path=path, rotate_bytes=4096)
        assert ("sinks[0].rotate_bytes", 4096) == (error.key, error.value)
        assert "symlink" in error.expected
        assert path.is_symlink() and b"" == target.read_bytes()


def read_events(fd: int, count: int) -> list[dict[str, Any]]:
    """Read `fd` until `count` event lines arrived (other lines are skipped); fails past
    the deadline or on a torn line."""
    data = bytearray()
    deadline = time.monotonic() + DEADLINE
    while True:
        lines = bytes(data).replace(b"\r\n", b"\n").split(b"\n")[:-1]
        events = [raw for raw in lines if raw.startswith(b"{")]
        if len(events) >= count:
            return [json.loads(raw) for raw in events]
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{count} events expected, got: {bytes(data)[-200:]!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 1 << 16)
            assert chunk, "closed before every event arrived"
            data.extend(chunk)


class DevStdoutApp:
    """A `tests.sinks.devstdout_app` process: its stdout is `stdout_fd`, its sink /dev/stdout."""

    def __init__(self, stdout_fd: int, sink: dict[str, Any]) -> None:
        self.answers, answer_write = os.pipe()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.sinks.devstdout_app",
                str(answer_write),
                json.dumps(sink),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=stdout_fd,
            pass_fds=(answer_write,),
        )
        os.close(answer_write)
        self.pending = b""

    def ask(self, op: str) -> dict[str, Any]:
        """Send one command and wait (bounded) for its answer."""
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.write(json.dumps({"op": op}).encode() + b"\n")
            self.process.stdin.flush()
        deadline = time.monotonic() + DEADLINE
        while b"\n" not in self.pending:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no answer to {op} within {DEADLINE} s"
            ready, _, _ = select.select([self.answers], [], [], remaining)
            if ready:
                chunk = os.read(self.answers, 1 << 16)
                assert chunk, f"the app exited (status {self.process.wait(DEADLINE)})"
                self.pending += chunk
        answer, self.pending = self.pending.split(b"\n", 1)
        result: dict[str, Any] = json.loads(answer)
        return result

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()
        os.close(self.answers)


@pytest.fixture
def apps() -> Iterator[Callable[..., DevStdoutApp]]:
    """Factory of app processes; each is killed at teardown."""
    started: list[DevStdoutApp] = []

    def start(stdout_fd: int, **sink: Any) -> DevStdoutApp:
        app = DevStdoutApp(stdout_fd, sink)
        started.append(app)
        return app

    yield start
    for app in started:
        app.kill()


class TestDevStdout:
    def test_events_reach_the_pipe_docker_reads(
        self, pipe: tuple[int, int], apps: Callable[..., DevStdoutApp]
    ) -> None:
        """`path = "/dev/stdout"` with stdout a pipe: the request's event arrives on it."""
        read_fd, write_fd = pipe
        app = apps(write_fd)
        assert 200 == app.ask("get")["status"]
        assert app.ask("flush")["flushed"]
        (event,) = read_events(read_fd, 1)
        assert ("request.finished", "/") == (event["event"], event["url.path"])
        assert app.ask("close")["closed"]

    def test_full_pipe_never_blocks_a_request(
        self, pipe: tuple[int, int], apps: Callable[..., DevStdoutApp]
    ) -> None:
        """Nobody reading: requests complete; one line waits in the queue, the others are
        dropped and counted (queue_max_events = 1); once read, the queued lines arrive whole."""
        read_fd, write_fd = pipe
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, 4096)  # one page: quick to fill
        app = apps(write_fd, queue_max_events=1)
        assert app.ask("fill")["filled"] >= 4096
        for _ in range(4):
            assert 200 == app.ask("get")["status"]  # answered: the request did not wait
        stats = app.ask("stats")["stats"]
        dropped = stats["dropped_by_reason"]
        assert (0, ["queue_overflow"]) == (stats["delivered"], list(dropped))
        assert 4 == stats["enqueued"] + dropped["queue_overflow"]
        assert stats["enqueued"] in (1, 2)  # one in the thread's hands, one in the queue
        events = read_events(read_fd, stats["enqueued"])
        flushed = app.ask("flush")
        assert ["request.finished"] * stats["enqueued"] == [e["event"] for e in events]
        assert (True, stats["enqueued"]) == (flushed["flushed"], flushed["stats"]["delivered"])

    def test_terminal_through_dev_stdout(self, apps: Callable[..., DevStdoutApp]) -> None:
        """stdout a terminal (a character device behind /dev/stdout): events appear on it."""
        master, slave = os.openpty()
        try:
            app = apps(slave)
            assert 200 == app.ask("get")["status"]
            assert app.ask("flush")["flushed"]
            (event,) = read_events(master, 1)
            assert "request.finished" == event["event"]
        finally:
            os.close(master)
            os.close(slave)


class TestFifoAtStart:
    def test_fifo_made_before_start_with_a_reader(self, tmp_path: Path) -> None:
        """The operator's FIFO at the path (mkfifo, a reader attached): lines go into it,
        and a full FIFO never blocks submit."""
        path = tmp_path / "events.fifo"
        os.mkfifo(path)
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            fcntl.fcntl(reader, F_SETPIPE_SZ, 4096)
            sink = make_sink(path)
            for n in range(40):  # ~9 KB into a 4 KB pipe: the rest waits in the queue
                assert sink.submit(line(n, pad=200))
            assert sink.stats()["delivered"] < 40
            received = read_events(reader, 40)
            assert sink.flush(5.0)
            sink.close(1.0)
        finally:
            os.close(reader)
        assert list(range(40)) == [event["n"] for event in received]

    def test_dev_null_takes_every_line(self) -> None:
        """A character device at the path: every line written, `rotate_bytes` moot."""
        sink = make_sink(Path("/dev/null"), rotate_bytes=4096)
        for n in range(100):
            assert sink.submit(line(n, pad=100))
        assert sink.close(5.0)
        assert (100, {}) == (sink.stats()["delivered"], sink.stats()["dropped_by_reason"])

    def test_fifo_without_a_reader_is_a_config_error_not_a_hang(self, tmp_path: Path) -> None:
        """Nobody reads the FIFO: init fails at once, naming the path."""
        path = tmp_path / "events.fifo"
        os.mkfifo(path)
        error = config_error(path=path)
        assert ("sinks[0].path", str(path)) == (error.key, error.value)
        assert "reader" in error.expected

    def test_sync_on_a_pipe_is_a_config_error(self, tmp_path: Path) -> None:
        """`sync = true` would make requests wait for the pipe's reader: refused at start."""
        path = tmp_path / "events.fifo"
        os.mkfifo(path)
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            error = config_error(path=path, sync=True)
        finally:
            os.close(reader)
        assert ("sinks[0].sync", True) == (error.key, error.value)
        assert "pipe" in error.expected

"""The bridge's own reports: never block a request, never tear a line, never quote a secret."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge import diagnostics
from bridge.streams import PIPE_BUF
from tests.diagnostics_child import SECRET, URL_PASSWORD

ROOT = Path(__file__).resolve().parent.parent
F_SETPIPE_SZ = 1031
DEADLINE = 20.0  # a child still running by then is hung: it is killed and the test fails


@pytest.fixture
def stderr_pipe() -> Iterator[tuple[int, int]]:
    """A one-page pipe to serve as a child's stderr: (read end, write end)."""
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, F_SETPIPE_SZ, PIPE_BUF)
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):
            os.close(fd)


def fill(fd: int) -> None:
    """Write to the pipe until it is full, as a log reader that stopped reading leaves it."""
    os.set_blocking(fd, False)
    with contextlib.suppress(BlockingIOError):
        for _ in range(1024):
            os.write(fd, b"x" * 512)
    os.set_blocking(fd, True)


def run_child(scenario: str, *, stdout: int | None = None, stderr: int) -> dict[str, Any]:
    """Run one `tests.diagnostics_child` scenario; its result, or a failure if it hangs."""
    result_read, result_write = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.diagnostics_child", scenario, str(result_write)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            pass_fds=(result_write,),
        )
        os.close(result_write)
        try:
            status = process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"{scenario}: the child did not finish within {DEADLINE} s (blocked)")
        assert 0 == status
        ready, _, _ = select.select([result_read], [], [], DEADLINE)
        assert ready
        result: dict[str, Any] = json.loads(os.read(result_read, 1 << 16))
        return result
    finally:
        os.close(result_read)
        with contextlib.suppress(OSError):
            os.close(result_write)


def read_reports(fd: int) -> list[str]:
    """Every line the children wrote to the pipe so far (their write ends are closed)."""
    os.set_blocking(fd, False)
    data = bytearray()
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 1 << 16):
            data.extend(chunk)
    return bytes(data).decode().splitlines()


class TestReportNeverBlocks:
    def test_request_completes_with_stderr_full_and_a_failing_sink(
        self, stderr_pipe: tuple[int, int]
    ) -> None:
        """Nobody reads stderr and every write fails: requests finish, the report is dropped."""
        _read_fd, write_fd = stderr_pipe
        fill(write_fd)
        with open("/dev/full", "wb") as full:
            result = run_child("request", stdout=full.fileno(), stderr=write_fd)
        assert {"statuses": [200, 200, 200], "write_errors": 3, "dropped_reports": 1} == result


class TestReportLine:
    def test_waits_for_no_one_mid_line(self, stderr_pipe: tuple[int, int]) -> None:
        """With another writer holding the pipe's lock, the report is dropped, not interleaved."""
        read_fd, write_fd = stderr_pipe
        result = run_child("locked", stderr=write_fd)
        assert {"during": False, "after": True, "dropped_reports": 1} == result
        os.close(write_fd)
        reports = read_reports(read_fd)
        assert 1 == len(reports)
        assert reports[0].endswith(": written once the line is complete")

    def test_secrets_never_reach_stderr(self, stderr_pipe: tuple[int, int]) -> None:
        """A registered secret and a URL password in a report are replaced on stderr."""
        read_fd, write_fd = stderr_pipe
        assert {"written": True} == run_child("secrets", stderr=write_fd)
        os.close(write_fd)
        (line,) = read_reports(read_fd)
        assert SECRET not in line
        assert URL_PASSWORD not in line
        expected = "invalid token [REDACTED] for https://[REDACTED]@logs.test/in"
        assert line.endswith(expected)

    def test_forked_child_reports_its_own_failures(self, stderr_pipe: tuple[int, int]) -> None:
        """A cause the parent just reported is still reported once by a child forked after."""
        read_fd, write_fd = stderr_pipe
        result = run_child("fork", stderr=write_fd)
        assert (True, 0) == (result["parent"], result["child_status"])
        os.close(write_fd)
        child_line = f"flask-signal-bridge[{result['child_pid']}]: from the child"
        assert child_line in read_reports(read_fd)

    def test_one_short_line_whatever_the_message(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A long, multi-line message becomes one line of at most PIPE_BUF bytes."""
        assert diagnostics.report("test-long-message", "first\nsecond\n" + "z" * 10_000)
        lines = capsys.readouterr().err.splitlines()
        assert 1 == len(lines)
        assert len(lines[0].encode()) < PIPE_BUF
        assert ": first second zzz" in lines[0]

    def test_replaced_stderr_is_scrubbed_too(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A sys.stderr the application replaced gets the scrubbed line."""
        assert diagnostics.report("test-url", "cannot reach https://bob:pa55word@collector/x")
        err = capsys.readouterr().err
        assert "pa55word" not in err
        assert "https://[REDACTED]@collector/x" in err

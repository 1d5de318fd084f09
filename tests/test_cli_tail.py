"""`flask bridge tail`: correlation filters, stack traces as lines, colours, and `--follow`
in a real `flask` process while the file is rotated under it."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest
from click.testing import Result
from flask import Flask

from bridge.cli import bridge_command
from bridge.tail import format_invalid, parse_line
from tests.conftest import build_app


def event_line(**event: Any) -> bytes:
    return json.dumps(event).encode() + b"\n"


def invoke(app: Flask, *args: str, **kwargs: Any) -> Result:
    return app.test_cli_runner().invoke(bridge_command, list(args), **kwargs)


INVALID = format_invalid(parse_line(3, b"not json"))  # "!! line 3: invalid JSON: ...: not json"
TRACE = 'Traceback (most recent call last):\n  File "app.py", line 9, in boom\nValueError: x\n'


@pytest.fixture
def request_file(tmp_path: Path) -> Path:
    """Two requests of two users; the second one failed with a stack trace."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(
        event_line(timestamp="T1", level="info", event="user.login", request_id="r1", user_id=7)
        + event_line(
            timestamp="T2",
            level="info",
            event="request.finished",
            request_id="r1",
            **{"user.id": "7"},
            status=200,
        )
        + b"not json\n"
        + event_line(
            timestamp="T3",
            level="error",
            event="request.exception",
            request_id="r2",
            **{"user.id": "9", "exception.type": "ValueError", "exception.stacktrace": TRACE},
        )
    )
    return path


class TestTailView:
    def test_request_id_and_user_come_first(self, request_file: Path) -> None:
        """The request id and user.id follow the event name, before the other fields."""
        result = invoke(build_app(), "tail", str(request_file), "--event", "request.finished")
        assert 0 == result.exit_code, result.output
        assert [
            "T2 INFO    request.finished  request_id=r1 user.id=7 status=200",
            INVALID,
        ] == result.output.splitlines()

    def test_stack_trace_as_indented_lines(self, request_file: Path) -> None:
        """exception.stacktrace is printed as its own lines under the event, not as \\n."""
        result = invoke(build_app(), "tail", str(request_file), "--level", "error")
        assert 0 == result.exit_code, result.output
        assert [
            INVALID,
            "T3 ERROR   request.exception  request_id=r2 user.id=9 exception.type=ValueError",
            "    Traceback (most recent call last):",
            '      File "app.py", line 9, in boom',
            "    ValueError: x",
        ] == result.output.splitlines()

    @pytest.mark.parametrize(
        ("options", "expected"),
        [
            (["--user", "7"], ["T1", "T2", "!!"]),
            (["--user", "9"], ["!!", "T3"]),
            (["--request-id", "r1"], ["T1", "T2", "!!"]),
            (["--request-id", "r2", "--user", "7"], ["!!"]),
            (["--request-id", "r2", "--json"], ["{"]),
        ],
    )
    def test_user_and_request_filters(
        self, request_file: Path, options: list[str], expected: list[str]
    ) -> None:
        """--user matches user.id (else user_id), --request-id matches request_id."""
        result = invoke(build_app(), "tail", str(request_file), *options)
        assert 0 == result.exit_code, result.output
        assert expected == [
            x[:1] if x.startswith("{") else x.split(" ")[0]
            for x in result.stdout.splitlines()
            if not x.startswith("    ")  # a stack trace's lines
        ]

    def test_json_passthrough_filtered(self, request_file: Path) -> None:
        """--json prints the raw matching lines unchanged; a stack trace stays escaped."""
        result = invoke(build_app(), "tail", str(request_file), "--json", "--user", "9")
        assert 0 == result.exit_code, result.output
        assert [request_file.read_bytes().splitlines()[3].decode()] == result.stdout.splitlines()


class TestTailColours:
    def test_coloured_on_a_terminal(self, request_file: Path) -> None:
        """On a terminal, an error event's line is red; its stack trace is not coloured."""
        result = invoke(build_app(), "tail", str(request_file), "--level", "error", color=True)
        assert 0 == result.exit_code, result.output
        lines = result.stdout.splitlines()
        assert lines[0].startswith("\x1b[35m!! line 3")
        assert (
            "\x1b[31mT3 ERROR   request.exception  request_id=r2 user.id=9 "
            "exception.type=ValueError\x1b[0m"
        ) == lines[1]
        assert "    ValueError: x" == lines[-1]

    def test_no_color_wins_over_a_terminal(self, request_file: Path) -> None:
        """NO_COLOR set: no escape sequence even on a terminal."""
        result = invoke(build_app(), "tail", str(request_file), color=True, env={"NO_COLOR": "1"})
        assert 0 == result.exit_code, result.output
        assert "\x1b" not in result.output
        assert 7 == len(result.output.splitlines())

    def test_plain_when_piped(self, request_file: Path) -> None:
        """Not a terminal: no escape sequence."""
        result = invoke(build_app(), "tail", str(request_file))
        assert "\x1b" not in result.output


def read_lines(stream: IO[str], into: queue.Queue[str]) -> None:
    for text in stream:
        into.put(text.rstrip("\n"))


def next_line(lines: queue.Queue[str], deadline: float) -> str:
    return lines.get(timeout=max(0.0, deadline - time.monotonic()))


@pytest.mark.slow
class TestFollowInARealProcess:
    def test_follows_a_real_rename_and_new_file(self, tmp_path: Path) -> None:
        """`flask bridge tail -f` reads the old file to its end after a rename, then the new
        file at the same path, and stops at --max-events."""
        path = tmp_path / "events.jsonl"
        path.write_bytes(
            event_line(timestamp="T1", event="a") + event_line(timestamp="T2", event="b")
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "FLASK_"))}
        env.update(PYTHONUNBUFFERED="1", NO_COLOR="1")
        process = subprocess.Popen(
            [sys.executable, "-m", "flask", "bridge", "tail", str(path), "-f", "--max-events", "4"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 60
            assert ["T1", "T2"] == [next_line(lines, deadline).split(" ")[0] for _ in range(2)]
            rotated = path.with_suffix(".1")
            path.rename(rotated)  # logrotate's rename; the writer still appends to the old file
            with rotated.open("ab") as old:
                old.write(event_line(timestamp="T3", event="c"))
            path.write_bytes(event_line(timestamp="T4", event="d"))
            assert 0 == process.wait(timeout=60), process.stderr.read() if process.stderr else ""
            reader.join(timeout=10)
            shown = [next_line(lines, deadline) for _ in range(2)]
            assert ["T3 -       c", "T4 -       d"] == shown
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()

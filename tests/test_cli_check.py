"""`flask bridge check` on a configuration with an unknown key and on a collector that refuses
connections: the problems, the failed row, the verdict line and the exit status."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from flask import Flask

from bridge import SignalBridge
from bridge.cli import bridge_command
from tests.collector import Collector
from tests.conftest import build_app, read_events


def refused_url() -> str:
    """A 127.0.0.1 URL nothing listens on: the port was just free, connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def rows(output: str) -> list[list[str]]:
    lines = output.splitlines()
    start = lines.index("sinks:") + 1
    return [re.split(r"\s{2,}", line.strip()) for line in lines[start:] if line.startswith("  ")]


class TestCheckVerdicts:
    def test_unknown_key_lists_the_problems(self) -> None:
        """A misspelt key exits 1 with the key and the keys it could have been."""
        app = build_app(BRIDGE_SINKS=[{"type": "file", "path": "x.jsonl", "rotate_byte": 1}])
        result = app.test_cli_runner().invoke(bridge_command, ["check"])
        assert 1 == result.exit_code
        lines = result.output.splitlines()
        assert ["bridge configuration is invalid:", "  key:      sinks[0].rotate_byte"] == lines[:2]
        assert lines[3].startswith("  expected: a known key for a file sink: ")
        assert "verdict: ok" not in result.output

    def test_refused_collector_is_a_failed_row(self) -> None:
        """A collector whose port refuses connections fails its row; the verdict says so, exit 3."""
        url = refused_url()
        app = build_app(BRIDGE_SINKS=[{"type": "stdout"}, {"type": "http", "url": url}])
        result = app.test_cli_runner().invoke(bridge_command, ["check", "--timeout", "2"])
        assert 3 == result.exit_code, result.output
        assert [
            ["sink", "type", "target", "verdict", "detail"],
            ["stdout-0", "stdout", "stdout", "ok", "ok"],
            ["http-1", "http, ndjson", url, "FAIL", "unreachable: Connection refused"],
        ] == rows(result.output)
        assert "verdict: FAIL, 1 of 2 sinks cannot be written to" == result.output.splitlines()[-1]

    def test_bridged_app_all_good(self) -> None:
        """Every sink ready: the verdict line is green on a terminal and the exit status 0."""
        app: Flask = build_app(BRIDGE_SINKS=[{"type": "stdout"}])
        bridge = SignalBridge(app)
        try:
            result = app.test_cli_runner().invoke(bridge_command, ["check"], color=True)
        finally:
            bridge.close(timeout=5.0)
        assert 0 == result.exit_code, result.output
        last = result.output.splitlines()[-1]
        assert "\x1b[32mverdict: ok, configuration valid and 1 sink ready\x1b[0m" == last


class TestCheckAuthSignals:
    def test_the_auth_group_is_listed_with_outcomes(self) -> None:
        """`signals = ["auth"]`: the app's own login signal is shown as an auth success."""
        app = build_app(BRIDGE_SIGNALS=["auth"], BRIDGE_SINKS=[{"type": "stdout"}])
        result = app.test_cli_runner().invoke(bridge_command, ["check"])
        assert 0 == result.exit_code, result.output
        assert "  user-login -> user-login (auth: success)" in result.output.splitlines()

    def test_an_auth_name_that_does_not_resolve_fails_the_check(self) -> None:
        """A misspelt `[auth]` signal is a configuration error here as in init_app."""
        app = build_app(
            BRIDGE_SIGNALS=["auth"],
            BRIDGE_AUTH={"failure": ["user-login-faild"]},
            BRIDGE_SINKS=[{"type": "stdout"}],
        )
        result = app.test_cli_runner().invoke(bridge_command, ["check"])
        assert 1 == result.exit_code, result.output
        assert "auth.failure" in result.output


class TestEmitTestVerdicts:
    def test_refused_collector_fails_its_row(self, tmp_path: Path) -> None:
        """The file sink delivers, the http sink on a refused port does not within --timeout:
        one verdict per sink, exit 1."""
        url = refused_url()
        path = tmp_path / "events.jsonl"
        app = build_app(
            BRIDGE_SINKS=[{"type": "file", "path": str(path)}, {"type": "http", "url": url}]
        )
        bridge = SignalBridge(app)
        try:
            result = app.test_cli_runner().invoke(bridge_command, ["emit-test", "--timeout", "1"])
        finally:
            bridge.close(timeout=1.0)
        assert 1 == result.exit_code, result.output
        verdicts = {
            line.split(":")[0].strip(): line.split(": ", 1)[1].split(", ")[:2]
            for line in result.output.splitlines()
            if line.startswith("  ")
        }
        assert {
            "file-0": [
                "ok",
                "enqueued=1 delivered=1 dropped=0 spooled=0 dead_lettered=0 queue_depth=0",
            ],
            "http-1": ["FAIL", "not delivered within 1s"],
        } == verdicts
        assert (
            "Error: the test event did not reach every sink: not delivered within 1s "
            "(1 of 2 sinks failed)"
        ) == result.output.splitlines()[-1]
        assert ["bridge.test"] == [e["event"] for e in read_events(path)]

    def test_collector_acknowledges(self) -> None:
        """A real collector that accepts the event: ok, and it received one bridge.test."""
        with Collector() as collector:
            app = build_app(BRIDGE_SINKS=[{"type": "http", "url": collector.url}])
            bridge = SignalBridge(app)
            try:
                result = app.test_cli_runner().invoke(bridge_command, ["emit-test"])
            finally:
                bridge.close(timeout=5.0)
            assert ["bridge.test"] == [e["event"] for e in collector.events()]
        assert 0 == result.exit_code, result.output
        assert result.output.splitlines()[1].startswith("  http-0: ok, enqueued=1 delivered=1")
        assert "delivered" == result.output.splitlines()[-1]

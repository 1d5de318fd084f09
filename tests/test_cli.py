"""`flask bridge ...` through Flask's CLI runner, real apps and real files in tmp_path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from flask import Flask
from flask.cli import FlaskGroup, ScriptInfo

import bridge.cli
import bridge.diagnostics
from bridge import SignalBridge
from bridge.cli import bridge_command
from bridge.workerstats import publish
from tests.collector import Collector, Reply
from tests.conftest import BridgedApp, build_app, read_events

Make = Callable[..., BridgedApp]


def invoke(app: Flask, *args: str, **kwargs: Any) -> Result:
    return app.test_cli_runner().invoke(bridge_command, list(args), **kwargs)


def broken_app_factory() -> Flask:
    """An app factory whose init_app fails on a wrong configuration value."""
    app = Flask("broken")
    app.config["BRIDGE_MAX_LINE_BYTES"] = "big"
    SignalBridge(app)
    return app


def read_dead_lines(path: Path) -> list[str]:
    """The original event lines held by a dead-letter file."""
    return [json.loads(record)["line"] for record in path.read_text().splitlines()]


def table_rows(output: str) -> list[list[str]]:
    """The `check` table's rows (header first), split into their cells."""
    lines = output.splitlines()
    start = lines.index("sinks:") + 1
    return [re.split(r"\s{2,}", line.strip()) for line in lines[start:] if line.startswith("  ")]


def event_line(**event: Any) -> bytes:
    return json.dumps(event).encode() + b"\n"


@pytest.fixture
def closing_bridges() -> Iterator[list[SignalBridge]]:
    """Bridges a test makes itself; closed at teardown."""
    bridges: list[SignalBridge] = []
    yield bridges
    for each in bridges:
        each.close(timeout=5.0)


class TestCheck:
    def test_valid_configuration(self, make_bridged: Make) -> None:
        """Lists the service, the signals with their events and the sinks, probed, exit 0."""
        bridged = make_bridged(
            signals=["default", "user-login"], BRIDGE_RENAME={"message_flashed": "flash"}
        )
        result = invoke(bridged.app, "check")
        assert 0 == result.exit_code, result.output
        assert [
            "service: shop",
            "signals:",
            "  request_finished -> request.finished (built-in)",
            "  got_request_exception -> request.exception (built-in)",
            "  message_flashed -> flash (built-in)",
            "  user-login -> user-login (custom)",
            "loggers: (none)",
            "sinks:",
        ] == result.output.splitlines()[:8]
        assert [
            ["sink", "type", "target", "verdict", "detail"],
            [
                "file-0",
                "file",
                str(bridged.path),
                "ok",
                f"directory {bridged.path.parent} is writable",
            ],
        ] == table_rows(result.output)
        assert ["verdict: ok, configuration valid and 1 sink ready"] == result.output.splitlines()[
            10:
        ]

    def test_wrong_value_names_key_value_and_expectation(self) -> None:
        """A wrong value exits 1 with the key, the value and what was expected."""
        app = build_app(BRIDGE_SINKS=[{"type": "file", "path": ""}])
        result = invoke(app, "check")
        assert 1 == result.exit_code
        assert [
            "bridge configuration is invalid:",
            "  key:      sinks[0].path",
            "  value:    ''",
            "  expected: a non-empty string",
            "  (set in the TOML file named by BRIDGE_CONFIG, app.config['BRIDGE_SINKS'] or the "
            "environment variable BRIDGE_SINKS; later ones win)",
        ] == result.output.splitlines()

    def test_every_problem_listed(self) -> None:
        """Every mistake of the configuration is explained, not only the first; exit 1."""
        app = build_app(
            BRIDGE_MAX_LINE_BYTES="big",
            BRIDGE_SINKS=[{"type": "file", "path": ""}, {"type": "http", "url": "http://h:0/"}],
        )
        result = invoke(app, "check")
        assert 1 == result.exit_code
        hint = (
            "  (set in the TOML file named by BRIDGE_CONFIG, app.config['BRIDGE_{0}'] or the "
            "environment variable BRIDGE_{0}; later ones win)"
        )
        assert [
            "bridge configuration is invalid (3 problems):",
            "  key:      max_line_bytes",
            "  value:    'big'",
            "  expected: a whole number >= 1",
            hint.format("MAX_LINE_BYTES"),
            "",
            "  key:      sinks[0].path",
            "  value:    ''",
            "  expected: a non-empty string",
            hint.format("SINKS"),
            "",
            "  key:      sinks[1].url",
            "  value:    'http://h:0/'",
            "  expected: a port from 1 to 65535",
            hint.format("SINKS"),
        ] == result.output.splitlines()

    def test_every_unknown_signal_listed(self) -> None:
        """Two misspelt signals are both reported."""
        result = invoke(build_app(BRIDGE_SIGNALS=["request_finishd", "user-logn"]), "check")
        assert 1 == result.exit_code
        assert ["  value:    'request_finishd'", "  value:    'user-logn'"] == [
            line for line in result.output.splitlines() if line.startswith("  value:")
        ]

    def test_header_value_not_latin1(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A header value HTTP cannot send is explained (not a crash), its value hidden."""
        monkeypatch.setenv("COLLECTOR_TOKEN", "\u20acuro-s3cret")
        sink = {
            "type": "http",
            "url": "http://127.0.0.1:9/",
            "headers": {"Authorization": "Bearer ${COLLECTOR_TOKEN}"},
        }
        result = invoke(build_app(BRIDGE_SINKS=[sink]), "check")
        assert 1 == result.exit_code, result.output
        assert [
            "bridge configuration is invalid:",
            "  key:      sinks[0].headers.Authorization",
            "  value:    '[hidden]'",
            "  expected: a header value of latin-1 characters (HTTP cannot carry others)",
        ] == result.output.splitlines()[:4]
        assert "s3cret" not in result.output and "Bearer" not in result.output

    def test_environment_json_mistake(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """BRIDGE_SINKS with a JSON mistake says where, without echoing the text."""
        monkeypatch.setenv("BRIDGE_SINKS", '[{"type": "stdout", "stream": "stderr",}]')
        result = invoke(build_app(), "check")
        assert 1 == result.exit_code
        assert [
            "bridge configuration is invalid:",
            "  key:      BRIDGE_SINKS (environment)",
            "  expected: invalid JSON at line 1 column 40: Expecting property name enclosed in "
            "double quotes",
        ] == result.output.splitlines()

    def test_ignored_environment_listed(
        self, make_bridged: Make, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """BRIDGE_* variables that name no key are listed by name, never by value."""
        monkeypatch.setattr(bridge.diagnostics, "_last_reported", {})
        monkeypatch.setenv("BRIDGE_PORT", "tcp://10.0.0.11:8000")
        monkeypatch.setenv("BRIDGE_SERVICE_HOST", "10.0.0.11")
        result = invoke(make_bridged().app, "check")
        assert 0 == result.exit_code, result.output
        assert (
            "ignored environment variables (they name no bridge key): "
            "BRIDGE_PORT, BRIDGE_SERVICE_HOST"
        ) in result.stdout.splitlines()
        assert "10.0.0.11" not in result.output

    def test_rename_by_signal_name(self, make_bridged: Make) -> None:
        """A rename keyed by the signal's own blinker name is shown as the app logs it."""
        bridged = make_bridged(BRIDGE_RENAME={"request-finished": "http.done"})
        result = invoke(bridged.app, "check")
        assert 0 == result.exit_code, result.output
        assert "  request_finished -> http.done (built-in)" in result.output.splitlines()
        bridged.client.get("/")
        assert ["http.done"] == [e["event"] for e in bridged.events()]

    def test_unknown_signal(self) -> None:
        """A misspelt signal exits 1 with a suggestion."""
        result = invoke(build_app(BRIDGE_SIGNALS=["request_finishd"]), "check")
        assert 1 == result.exit_code
        assert "did you mean 'request_finished'?" in result.output

    def test_unreachable_sink_exits_3(self, tmp_path: Path) -> None:
        """A valid configuration whose file sink cannot be created exits 3 and says why."""
        (tmp_path / "plain").write_text("x")
        path = tmp_path / "plain" / "events.jsonl"
        app = build_app(BRIDGE_SINKS=[{"type": "file", "path": str(path)}, {"type": "stdout"}])
        result = invoke(app, "check")
        assert 3 == result.exit_code
        lines = result.output.splitlines()
        assert "warning: this app has no SignalBridge (configuration checked anyway)" == lines[0]
        assert [
            ["sink", "type", "target", "verdict", "detail"],
            ["file-0", "file", str(path), "FAIL", f"{tmp_path / 'plain'} is not a directory"],
            ["stdout-1", "stdout", "stdout", "ok", "ok"],
        ] == table_rows(result.output)
        assert "verdict: FAIL, 1 of 2 sinks cannot be written to" == lines[-1]

    def test_http_sink_listed_without_url_secrets(self) -> None:
        """An http sink is listed and probed by its URL without credentials or query string."""
        with Collector() as collector:
            secret_url = collector.url.replace("http://", "http://u:pw@") + "?key=s3cret"
            sink = {"type": "http", "url": secret_url}
            result = invoke(build_app(BRIDGE_SINKS=[sink]), "check")
        assert 0 == result.exit_code, result.output
        assert [
            "http-0",
            "http, ndjson",
            collector.url,
            "ok",
            "reachable (HTTP 501 to HEAD)",
        ] == table_rows(result.output)[1]
        assert "s3cret" not in result.output and "pw" not in result.output

    def test_http_sink_probed(self, closing_bridges: list[SignalBridge]) -> None:
        """A bridged app's http sink is probed against the real collector."""
        with Collector() as collector:
            app = build_app(BRIDGE_SINKS=[{"type": "http", "url": collector.url}])
            closing_bridges.append(SignalBridge(app))
            result = invoke(app, "check")
            assert 0 == result.exit_code, result.output
            row = table_rows(result.output)[1]
            assert ["http-0", "http, ndjson", collector.url, "ok"] == row[:4]
            assert row[4].startswith("reachable")
        assert ["verdict: ok, configuration valid and 1 sink ready"] == result.output.splitlines()[
            -1:
        ]


class TestCheckWhenTheAppFails:
    def test_init_app_config_error_is_explained(self, make_bridged: Make) -> None:
        """An app whose init_app raised a ConfigError is explained, not a traceback; exit 1."""
        runner = make_bridged().app.test_cli_runner()
        result = runner.invoke(
            bridge_command, ["check"], obj=ScriptInfo(create_app=broken_app_factory)
        )
        assert 1 == result.exit_code
        assert [
            "the app failed to start: init_app raised a ConfigError",
            "bridge configuration is invalid:",
            "  key:      max_line_bytes",
            "  value:    'big'",
            "  expected: a whole number >= 1",
        ] == result.output.splitlines()[:5]
        assert result.exception is None or isinstance(result.exception, SystemExit)

    def test_other_load_failures(self, make_bridged: Make) -> None:
        """Any other failure while loading the app is reported in one line; exit 1."""

        def factory() -> Flask:
            raise RuntimeError("database URL missing")

        runner = make_bridged().app.test_cli_runner()
        result = runner.invoke(bridge_command, ["check"], obj=ScriptInfo(create_app=factory))
        assert 1 == result.exit_code
        expected = "the app failed to load: RuntimeError: database URL missing\n"
        assert expected == result.output

    def test_found_through_the_entry_point(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Flask's CLI finds `bridge` through the entry point even though the app fails."""
        monkeypatch.setenv("FLASK_RUN_FROM_CLI", "true")  # FlaskGroup sets it; restore after
        cli = FlaskGroup(create_app=broken_app_factory, load_dotenv=False)
        result = CliRunner().invoke(cli, ["bridge", "check"])
        assert 1 == result.exit_code
        assert "  key:      max_line_bytes" in result.output.splitlines()

    @pytest.mark.slow
    def test_real_flask_command(self, tmp_path: Path) -> None:
        """`flask --app broken:create_app bridge check` in a fresh process explains the error."""
        (tmp_path / "broken.py").write_text(
            "from flask import Flask\n"
            "from bridge import SignalBridge\n\n"
            "def create_app():\n"
            "    app = Flask('broken')\n"
            "    app.config['BRIDGE_SINKS'] = [{'type': 'file'}]\n"
            "    SignalBridge(app)\n"
            "    return app\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "FLASK_"))}
        done = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "broken:create_app", "bridge", "check"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert 1 == done.returncode, done.stderr
        assert "  key:      sinks[0].path" in done.stderr.splitlines()
        assert "Traceback" not in done.stderr


class TestEmitTest:
    def test_sends_and_reports(self, make_bridged: Make) -> None:
        """One bridge.test event reaches the file; each sink's counters are printed."""
        bridged = make_bridged()
        result = invoke(bridged.app, "emit-test")
        assert 0 == result.exit_code, result.output
        assert (
            "  file-0: ok, enqueued=1 delivered=1 dropped=0 spooled=0 dead_lettered=0 queue_depth=0"
            in result.output.splitlines()
        )
        [event] = read_events(bridged.path)
        assert ("bridge.test", "bridge-test", "info") == (
            event["event"],
            event["signal"],
            event["level"],
        )

    def test_failure_exits_1(self, closing_bridges: list[SignalBridge]) -> None:
        """A sink that drops the event (a full disk: /dev/full) makes emit-test fail."""
        app = build_app(BRIDGE_SINKS=[{"type": "file", "path": "/dev/full"}])
        closing_bridges.append(SignalBridge(app))
        result = invoke(app, "emit-test")
        assert 1 == result.exit_code
        assert "Error: the test event did not reach every sink: 1 dropped" in result.output

    def test_app_without_bridge(self) -> None:
        """An app without a SignalBridge gets a clear error."""
        result = invoke(build_app(), "emit-test")
        assert 1 == result.exit_code
        assert "this app has no SignalBridge" in result.output


class TestStats:
    @pytest.fixture
    def stats_env(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        monkeypatch.setenv("BRIDGE_STATS_DIR", str(tmp_path / "stats"))
        return tmp_path / "stats" / "shop"

    def test_prints_json_of_every_worker(self, make_bridged: Make, stats_env: Path) -> None:
        """--json prints each published worker's stats() and their total."""
        bridged = make_bridged()
        publisher = publish(bridged.app, bridged.bridge.emitter(bridged.app))
        try:
            bridged.client.get("/")
            assert bridged.bridge.flush(timeout=10.0)
            publisher.tick()
            result = invoke(bridged.app, "stats", "--json")
        finally:
            publisher.stop()
        assert 0 == result.exit_code, result.output
        shown = json.loads(result.output)
        assert [(os.getpid(), True)] == [(w["pid"], w["alive"]) for w in shown["workers"]]
        assert bridged.bridge.stats() == shown["workers"][0]["stats"]
        delivered = bridged.bridge.stats()["sinks"]["file-0"]["delivered"]
        assert 1 == delivered
        assert delivered == shown["total"]["sinks"]["file-0"]["delivered"]
        assert str(stats_env) == shown["directory"]

    def test_table_per_worker_and_total(self, make_bridged: Make, stats_env: Path) -> None:
        """One row per worker and sink, a dead worker marked, then the total."""
        bridged = make_bridged()
        stats_env.mkdir(parents=True)
        for pid, alive_pid in ((101, os.getpid()), (102, None)):
            record = {"sinks": {"file-0": {"enqueued": 2, "delivered": 2}}, "receiver_errors": 0}
            real = alive_pid if alive_pid is not None else dead_process_pid()
            (stats_env / f"{pid}-1.json").write_text(
                json.dumps({"pid": real, "updated": 0.0, "stats": record})
            )
        result = invoke(bridged.app, "stats")
        assert 0 == result.exit_code, result.output
        rows = [line.split() for line in result.output.splitlines()[1:]]
        assert ["worker", "state", "updated", "sink"] == rows[0][:4]
        assert ["alive", "dead"] == sorted(row[2] for row in rows[1:3])
        assert ["total", "file-0", "4", "4"] == rows[3][:4]
        assert "1 of 2 workers alive" in result.output.splitlines()[0]

    def test_nothing_published_says_where_it_looked(
        self, make_bridged: Make, stats_env: Path
    ) -> None:
        """Without snapshots, the command says which directory it read."""
        result = invoke(make_bridged().app, "stats")
        assert 0 == result.exit_code, result.output
        assert str(stats_env) in result.output


def dead_process_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return int(done.stdout)


@pytest.fixture
def event_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_bytes(
        event_line(timestamp="T1", level="info", event="request.finished", status=200)
        + b"{torn line\n"
        + event_line(timestamp="T2", level="warning", event="user.login", user="ada")
        + event_line(timestamp="T3", level="error", event="request.exception", signal="s")
    )
    return path


class TestTail:
    def test_pretty_prints_and_shows_invalid_lines(
        self, make_bridged: Make, event_file: Path
    ) -> None:
        """One readable line per event; an invalid line is shown as such."""
        result = invoke(make_bridged().app, "tail", str(event_file))
        assert 0 == result.exit_code, result.output
        first, invalid, *rest = result.output.splitlines()
        assert "T1 INFO    request.finished  status=200" == first
        assert invalid.startswith("!! line 2: invalid JSON: ")
        assert invalid.endswith(": {torn line")
        assert ["T2 WARNING user.login  user=ada", "T3 ERROR   request.exception"] == rest

    @pytest.mark.parametrize(
        ("options", "expected"),
        [
            (["--event", "request.*"], ["T1", "!!", "T3"]),
            (["--level", "warning"], ["!!", "T2", "T3"]),
            (["--grep", "ADA"], ["T2"]),
            (["--event", "user.login", "--event", "request.exception"], ["!!", "T2", "T3"]),
            (["-n", "2"], ["T2", "T3"]),
            (["--max-events", "1"], ["T1"]),
        ],
    )
    def test_filters(
        self, make_bridged: Make, event_file: Path, options: list[str], expected: list[str]
    ) -> None:
        """--event (globs, repeatable), --level (at least), --grep, -n and --max-events."""
        result = invoke(make_bridged().app, "tail", str(event_file), *options)
        assert 0 == result.exit_code, result.output
        assert expected == [text.split(" ", 1)[0] for text in result.output.splitlines()]

    def test_json_keeps_lines_and_sends_invalid_to_stderr(
        self, make_bridged: Make, event_file: Path
    ) -> None:
        """--json prints matching lines unchanged on stdout; invalid lines go to stderr."""
        result = invoke(make_bridged().app, "tail", str(event_file), "--json", "--level", "error")
        assert 0 == result.exit_code, result.output
        assert [event_file.read_bytes().splitlines()[3].decode()] == result.stdout.splitlines()
        assert result.stderr.startswith("!! line 2: invalid JSON")

    def test_missing_file(self, make_bridged: Make, tmp_path: Path) -> None:
        """Without --follow a missing file is a usage error."""
        result = invoke(make_bridged().app, "tail", str(tmp_path / "nope.jsonl"))
        assert 2 == result.exit_code
        assert "does not exist" in result.output

    def test_follow_across_rotation(
        self, make_bridged: Make, event_file: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--follow prints new events, survives a rename-and-recreate, stops at --max-events."""
        steps = [
            lambda: event_file.rename(event_file.with_suffix(".1")),
            lambda: event_file.write_bytes(event_line(timestamp="T4", event="after.rotation")),
        ]

        def scripted_sleep(seconds: float) -> None:
            assert steps, "tail --follow slept more often than the scenario planned"
            steps.pop(0)()

        monkeypatch.setattr(bridge.cli, "_sleep", scripted_sleep)
        result = invoke(
            make_bridged().app, "tail", str(event_file), "-f", "--grep", '"T', "--max-events", "4"
        )
        assert 0 == result.exit_code, result.output
        assert ["T1", "T2", "T3", "T4"] == [x.split(" ", 1)[0] for x in result.output.splitlines()]
        assert [] == steps

    def test_ctrl_c_ends_follow_quietly(
        self, make_bridged: Make, event_file: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Ctrl-C while following ends with tail's status 130 after what was shown."""

        def interrupted(seconds: float) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(bridge.cli, "_sleep", interrupted)
        result = invoke(make_bridged().app, "tail", str(event_file), "-f", "--event", "user.*")
        assert 130 == result.exit_code
        assert ["!!", "T2"] == [x.split(" ", 1)[0] for x in result.output.splitlines()]


HOSTILE = "\x1b[2J\x1b]0;owned\x07\x9b31m\u202etxt.exe\u2066\u2028\x7f"
TERMINAL_CONTROLS = set(map(chr, [*range(0x20), *range(0x7F, 0xA0), 0x202E, 0x2066, 0x2028]))


@pytest.fixture
def hostile_file(tmp_path: Path) -> Path:
    """Lines whose text would clear the screen, retitle the window and reverse the text."""
    path = tmp_path / "hostile.jsonl"
    valid = json.dumps(
        {"timestamp": "T1", "level": "error", "event": HOSTILE, HOSTILE: {"trace": HOSTILE}},
        ensure_ascii=False,
    )
    path.write_bytes(valid.encode() + b"\n" + f"not json {HOSTILE}\r\n".encode())
    return path


class TestTailOfHostileLines:
    def assert_inert(self, output: str) -> None:
        for line in output.splitlines():
            assert [] == [c for c in line if c in TERMINAL_CONTROLS], repr(line)

    def test_pretty(self, make_bridged: Make, hostile_file: Path) -> None:
        """Pretty-printed events and invalid lines show control characters as escapes."""
        result = invoke(make_bridged().app, "tail", str(hostile_file))
        assert 0 == result.exit_code, result.output
        self.assert_inert(result.output)
        event, invalid = result.output.splitlines()
        assert event.startswith("T1 ERROR   \\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\u202etxt.exe")
        assert invalid.endswith(
            ": not json \\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\u202etxt.exe\\u2066\\u2028\\x7f\\r"
        )

    def test_json(self, make_bridged: Make, hostile_file: Path) -> None:
        """--json prints the same JSON with the characters escaped; invalid lines too."""
        result = invoke(make_bridged().app, "tail", str(hostile_file), "--json")
        assert 0 == result.exit_code, result.output
        self.assert_inert(result.output)
        (shown,) = result.stdout.splitlines()
        assert json.loads(hostile_file.read_bytes().splitlines()[0]) == json.loads(shown)
        assert result.stderr.startswith("!! line 2: invalid JSON")

    def test_follow(
        self, make_bridged: Make, hostile_file: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Lines appended while following are escaped as well."""
        original = hostile_file.read_bytes()
        hostile_file.write_bytes(b"")

        def append(seconds: float) -> None:
            with hostile_file.open("ab") as handle:
                handle.write(original)

        monkeypatch.setattr(bridge.cli, "_sleep", append)
        result = invoke(make_bridged().app, "tail", str(hostile_file), "-f", "--max-events", "2")
        assert 0 == result.exit_code, result.output
        assert 2 == len(result.output.splitlines())
        self.assert_inert(result.output)


class TestReplay:
    def dead_letters(self, path: Path, *records: dict[str, Any] | str) -> Path:
        text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
        path.write_text(text)
        return path

    def test_resends_original_lines(self, make_bridged: Make, tmp_path: Path) -> None:
        """`line` and `event` records are resent unchanged to the named sink."""
        original = '{"event":"user.login","event_id":"0190-a","user_id":7}'
        dead = self.dead_letters(
            tmp_path / "dead.jsonl",
            {
                "time": "T",
                "reason": "rejected_4xx",
                "status": 400,
                "response": "",
                "line": original,
            },
            {"event": {"event": "order.paid", "event_id": "0190-b"}},
        )
        bridged = make_bridged()
        result = invoke(bridged.app, "replay", str(dead), "--sink", "file-0")
        assert 0 == result.exit_code, result.output
        assert f"resent 2 of 2 events to file-0\nremoved 2 delivered records from {dead}\n" == (
            result.output
        )
        assert b"" == dead.read_bytes()
        assert (original + "\n").encode() == bridged.path.read_bytes().splitlines(True)[0]
        assert [
            {"event": "user.login", "event_id": "0190-a", "user_id": 7},
            {"event": "order.paid", "event_id": "0190-b"},
        ] == read_events(bridged.path)

    def test_unreadable_records_are_skipped_and_counted(
        self, make_bridged: Make, tmp_path: Path
    ) -> None:
        """Records without an original event are skipped, the rest resent, exit 1."""
        dead = self.dead_letters(
            tmp_path / "dead.jsonl",
            {"line": '{"event": "kept"}'},
            "not json",
            {"line": "[1, 2]"},
            {"reason": "no line"},
        )
        bridged = make_bridged()
        result = invoke(bridged.app, "replay", str(dead), "--sink", "file-0")
        assert 1 == result.exit_code
        assert ["kept"] == [e["event"] for e in read_events(bridged.path)]
        assert "Error: replay incomplete: 3 records skipped" in result.output.splitlines()
        assert "!! line 2: not a dead-letter record, skipped" in result.output.splitlines()

    def test_default_needs_an_http_sink(self, make_bridged: Make, tmp_path: Path) -> None:
        """Without --sink the first http sink is used; none configured is a usage error."""
        dead = self.dead_letters(tmp_path / "dead.jsonl", {"line": '{"event": "x"}'})
        result = invoke(make_bridged().app, "replay", str(dead))
        assert 2 == result.exit_code
        assert "no http sink is configured; name a sink with --sink (file-0)" in result.output

    def test_dead_letters_go_back_to_the_http_sink(
        self, closing_bridges: list[SignalBridge], tmp_path: Path
    ) -> None:
        """Events the collector refused (dead-lettered by the http sink) are resent to the
        first http sink by default, with their original event ids."""
        dead = tmp_path / "dead.jsonl"
        sink = {
            "type": "http",
            "url": "",
            "dead_letter_path": str(dead),
            "batch_timeout": 0.05,
        }
        with Collector() as collector:
            sink["url"] = collector.url
            app = build_app(BRIDGE_SINKS=[{"type": "stdout", "stream": "stderr"}, sink])
            bridge = SignalBridge(app)
            closing_bridges.append(bridge)
            collector.plan(Reply(400, body=b"mapping error"))
            for n in range(3):
                bridge.emitter(app).emit("s", "order.paid", "info", {"n": n})
            assert bridge.flush(timeout=20.0)
            refused = [json.loads(x)["event_id"] for x in read_dead_lines(dead)]
            assert 3 == len(refused)
            assert [] == collector.event_ids()

            result = invoke(app, "replay", str(dead))
            assert 0 == result.exit_code, result.output
            assert (
                f"resent 3 of 3 events to http-1\nremoved 3 delivered records from {dead}\n"
            ) == result.output
            assert refused == collector.event_ids()

    def test_refused_again(self, closing_bridges: list[SignalBridge], tmp_path: Path) -> None:
        """Events the collector refuses again are dead-lettered again, and replay exits 1."""
        dead = self.dead_letters(tmp_path / "dead.jsonl", {"line": '{"event": "x"}'})
        again = tmp_path / "again.jsonl"
        with Collector() as collector:
            sink = {"type": "http", "url": collector.url, "dead_letter_path": str(again)}
            app = build_app(BRIDGE_SINKS=[sink])
            closing_bridges.append(SignalBridge(app))
            collector.plan(Reply(422))
            result = invoke(app, "replay", str(dead))
        assert 1 == result.exit_code
        assert "1 were refused again and dead-lettered" in result.output.splitlines()
        assert "Error: replay incomplete: 1 dead-lettered again" in result.output.splitlines()
        assert ['{"event": "x"}'] == read_dead_lines(again)

    def test_unknown_sink(self, make_bridged: Make, tmp_path: Path) -> None:
        """An unknown --sink name is a usage error listing the sinks."""
        dead = self.dead_letters(tmp_path / "dead.jsonl", {"line": '{"event": "x"}'})
        result = invoke(make_bridged().app, "replay", str(dead), "--sink", "nope")
        assert 2 == result.exit_code
        assert "no sink named 'nope'; sinks: file-0" in result.output

"""The examples run the way a user runs them: through the Flask test client, and `make demo`
(examples/demo.py: the login example under a real gunicorn) end to end in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML: installed with `responses`, a dev dependency
from flask import Flask

from bridge import SignalBridge
from examples import demo
from examples.builtin_signals.app import create_app as create_builtin_app
from examples.login_log.app import create_app as create_login_app
from examples.login_log.app import login_signal
from tests.conftest import read_events
from tests.contract import ENVELOPE, REQUEST_KEYS, RFC3339, UUID7

ROOT = Path(__file__).resolve().parent.parent


class BridgedExample:
    """An example app with its sinks pointed at one file in tmp_path."""

    def __init__(self, app: Flask, path: Path) -> None:
        self.app = app
        self.path = path
        self.bridge: SignalBridge = app.extensions["bridge"]
        self.client = app.test_client()

    def events(self) -> list[dict[str, Any]]:
        assert self.bridge.flush(timeout=10.0)
        return read_events(self.path)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event"] == event]


@pytest.fixture
def login(tmp_path: Path) -> Iterator[BridgedExample]:
    """The login example, configured by its bridge.toml except for the sinks."""
    path = tmp_path / "login-audit.jsonl"
    example = BridgedExample(
        create_login_app({"BRIDGE_SINKS": [{"type": "file", "path": str(path)}]}), path
    )
    yield example
    example.bridge.close(timeout=5.0)


@pytest.fixture
def builtin(tmp_path: Path) -> Iterator[BridgedExample]:
    path = tmp_path / "events.jsonl"
    example = BridgedExample(
        create_builtin_app({"BRIDGE_SINKS": [{"type": "file", "path": str(path)}]}), path
    )
    yield example
    example.bridge.close(timeout=5.0)


def assert_schema(event: dict[str, Any]) -> None:
    """The envelope, and the request keys of an event inside a request (docs/architecture.md)."""
    assert set() == (ENVELOPE | REQUEST_KEYS) - set(event)
    assert RFC3339.match(event["timestamp"])
    assert UUID7.match(event["event_id"])
    assert event["level"] in ("debug", "info", "warning", "error")


class TestLoginExample:
    def test_good_login_is_audited(self, login: BridgedExample) -> None:
        """A good login sends user-login with the user's id and name, then flashes."""
        response = login.client.post(
            "/login",
            data={"username": "ada", "password": "lovelace"},
            headers={"X-Request-ID": "good-1"},
        )
        assert 303 == response.status_code
        (event,) = login.named("user-login")
        assert_schema(event)
        expected = {
            "event": "user-login",
            "signal": "user-login",
            "level": "info",
            "service.name": "login-example",
            "request_id": "good-1",
            "url.path": "/login",
            "http.route": "/login",
            "http.request.method": "POST",
            "user_id": 1,
            "username": "ada",
            "success": True,
            "reason": None,
        }
        assert expected == {key: event[key] for key in expected}
        (flashed,) = login.named("message.flashed")
        assert ("Welcome back, ada!", "good-1") == (flashed["message"], flashed["request_id"])

    @pytest.mark.parametrize(
        ("username", "password", "reason"),
        [("ada", "not-lovelace", "bad_password"), ("mallory", "hunter2", "unknown_user")],
    )
    def test_failed_login_is_audited(
        self, login: BridgedExample, username: str, password: str, reason: str
    ) -> None:
        """A failed login is a 401 and a user-login event with success false and why."""
        response = login.client.post("/login", data={"username": username, "password": password})
        assert 401 == response.status_code
        (event,) = login.named("user-login")
        assert_schema(event)
        expected = {"username": username, "success": False, "reason": reason, "user_id": None}
        assert expected == {key: event[key] for key in expected}
        (finished,) = login.named("request.finished")
        assert (401, "warning") == (finished["http.response.status_code"], finished["level"])

    def test_password_is_never_written(self, login: BridgedExample) -> None:
        """The passwords typed into the form appear nowhere in the audit file."""
        for password in ("lovelace", "not-lovelace"):
            login.client.post("/login", data={"username": "ada", "password": password})
        login.events()  # flushed
        raw = login.path.read_bytes()
        assert 2 == raw.count(b'"event":"user-login"')
        assert (b"lovelace" in raw) is False

    def test_password_argument_is_redacted(self, login: BridgedExample) -> None:
        """A careless send(password=...) is written as [REDACTED], and so is bridge.toml's otp."""
        with login.app.app_context():
            login_signal.send(login.app, username="ada", password="hunter2", otp="123456")
        (event,) = login.named("user-login")
        expected = {"username": "ada", "password": "[REDACTED]", "otp": "[REDACTED]"}
        assert expected == {key: event[key] for key in expected}
        assert (b"hunter2" in login.path.read_bytes()) is False

    def test_crash_is_a_request_exception(self, login: BridgedExample) -> None:
        """The route that raises gives a request.exception event at level error."""
        assert 500 == login.client.get("/crash", headers={"X-Request-ID": "crash-1"}).status_code
        (event,) = login.named("request.exception")
        assert_schema(event)
        expected = {
            "level": "error",
            "exception.type": "ZeroDivisionError",
            "request_id": "crash-1",
        }
        assert expected == {key: event[key] for key in expected}
        assert "ZeroDivisionError" in event["exception.stacktrace"]

    def test_logout_flashes(self, login: BridgedExample) -> None:
        """Logging out flashes a message, which becomes a message.flashed event."""
        assert 303 == login.client.post("/logout").status_code
        (event,) = login.named("message.flashed")
        assert ("You have been logged out.", "info") == (event["message"], event["category"])

    def test_bridge_toml_sinks_write_file_and_stdout(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """Unchanged, bridge.toml writes logs/login-audit.jsonl (relative) and stdout alike."""
        monkeypatch.chdir(tmp_path)
        app = create_login_app()
        bridge: SignalBridge = app.extensions["bridge"]
        try:
            app.test_client().post("/login", data={"username": "ada", "password": "nope"})
            assert bridge.flush(timeout=10.0)
        finally:
            bridge.close(timeout=5.0)
        in_file = read_events(tmp_path / "logs" / "login-audit.jsonl")
        on_stdout = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
        assert ["user-login", "request.finished"] == [e["event"] for e in in_file]
        assert in_file == on_stdout


class TestBuiltinSignalsExample:
    @pytest.mark.parametrize(
        ("path", "status", "expected"),
        [
            (
                "/",
                200,
                {
                    "event": "template.rendered",
                    "level": "info",
                    "template.name": "hello.html",
                    "template.context_keys": ["card_number", "g", "items", "name", "request"],
                },
            ),
            (
                "/flash",
                200,
                {
                    "event": "message.flashed",
                    "message": "Your basket was saved.",
                    "category": "success",
                },
            ),
            (
                "/fail",
                500,
                {
                    "event": "request.exception",
                    "level": "error",
                    "exception.type": "ValueError",
                    "exception.message": "the basket service is down",
                },
            ),
        ],
    )
    def test_route_emits_its_signal(
        self, builtin: BridgedExample, path: str, status: int, expected: dict[str, Any]
    ) -> None:
        """Each route produces exactly its built-in signal's event, and nothing else."""
        assert status == builtin.client.get(path, headers={"X-Request-ID": "r-1"}).status_code
        (event,) = builtin.events()
        assert_schema(event)
        assert ("builtin-signals-example", "r-1") == (event["service.name"], event["request_id"])
        assert expected == {key: event[key] for key in expected}

    def test_template_values_are_never_written(self, builtin: BridgedExample) -> None:
        """Only the template context's keys are logged: the card number's value is not."""
        builtin.client.get("/")
        builtin.events()
        assert (b"4111" in builtin.path.read_bytes()) is False


class TestDemo:
    @pytest.mark.slow
    def test_make_demo_runs_end_to_end(self, tmp_path: Path) -> None:
        """examples/demo.py serves the login app with gunicorn, drives it, passes its checks and
        ends with `flask bridge tail -n 5` showing the audit file's last five events."""
        result = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "demo.py"), "--dir", str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")},
        )
        assert 0 == result.returncode, result.stdout + result.stderr
        assert "Demo OK" in result.stdout
        for where in ("file", "stdout", "collector"):
            assert f"ok   every request's events are in {where} exactly once" in result.stdout
        (run_dir,) = tmp_path.iterdir()
        audit = read_events(run_dir / "logs" / "login-audit.jsonl")
        logins = sorted(
            (e for e in audit if e["event"] == "user-login"),
            key=lambda e: int(e["request_id"].rsplit("-", 1)[1]),  # demo-<run>-<step>
        )
        for event in logins:
            assert_schema(event)
        expected = [("ada", True), ("ada", False), ("mallory", False), ("ada", True)]
        assert expected == [(e["username"], e["success"]) for e in logins]
        raw = (run_dir / "logs" / "login-audit.jsonl").read_bytes()
        assert [] == [p for p in demo.PASSWORDS if p.encode() in raw]
        assert "ok   flask bridge tail shows the file's last 5 events" in result.stdout
        heading = "== The last 5 events, as `flask bridge tail logs/login-audit.jsonl -n 5`"
        tail = result.stdout.split(heading, 1)[1].split("\n== ", 1)[0]
        event_lines = [line for line in tail.splitlines()[1:] if line[2:3].strip()]
        expected = [(e["event"], f"request_id={e['request_id']}") for e in audit[-5:]]
        assert expected == [tuple(line.split()[2:4]) for line in event_lines]

    def test_demo_reports_missing_events(self) -> None:
        """The demo's exactly-once check fails when the events are not there."""
        report = demo.Report()
        demo.check_expected(report, "nowhere", [])
        assert 1 == len(report.failures)

    def test_demo_reports_torn_lines(self) -> None:
        """The demo's parser names a line that is not JSON and a missing final newline."""
        events, problems = demo.parse_lines(b'{"event":"a"}\n{"event":"b"}{"ev\n{"event"')
        assert [{"event": "a"}] == events
        assert 3 == len(problems)


class TestDeployment:
    def test_compose_file_is_valid_yaml(self) -> None:
        """docker-compose.yml parses and runs the login example built from examples/Dockerfile."""
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        login_service = compose["services"]["login"]
        assert {"context": ".", "dockerfile": "examples/Dockerfile"} == login_service["build"]
        assert (ROOT / login_service["build"]["dockerfile"]).is_file()
        assert [
            "audit-logs:/app/logs",
            "./config/bridge/bridge.toml:/etc/bridge/bridge.toml:ro",
        ] == login_service["volumes"]
        assert "audit-logs" in compose["volumes"]

    def test_dockerfile_serves_the_wsgi_app_with_gunicorn(self) -> None:
        """The image's command is gunicorn on the same WSGI path the demo and tests use."""
        dockerfile = (ROOT / "examples" / "Dockerfile").read_text()
        cmd = next(line for line in dockerfile.splitlines() if line.startswith("CMD"))
        assert cmd.startswith('CMD ["gunicorn"')
        assert "examples.login_log.app:app" in dockerfile
        assert demo.APP == "examples.login_log.app:app"

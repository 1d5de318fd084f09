"""A new user's walk through the README: Flask-Login, structlog, correlation and the CLI."""

import importlib
import json
import os
import subprocess
import sys

import pytest
import structlog

APP = """
import sys
import structlog
from flask import Flask
from flask_login import LoginManager, UserMixin, login_required, login_user
from bridge import SignalBridge, StructlogBridge
structlog.configure(
    processors=[
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
        StructlogBridge(),  # the README's one line
        structlog.processors.JSONRenderer(),
    ],
    logger_factory=structlog.PrintLoggerFactory(sys.stdout),
)
class User(UserMixin):
    def __init__(self, uid: str) -> None:
        self.id = uid
app = Flask("walkapp")
app.secret_key = "not-a-real-key"
login_manager = LoginManager(app)
login_manager.user_loader(User)
bridge = SignalBridge(app)
@app.post("/login")
def login() -> str:
    login_user(User("7"))
    return "welcome"
@app.get("/orders")
@login_required
def orders() -> str:
    app.logger.warning("orders listed")
    structlog.get_logger().bind(logger="walkapp.orders").info("orders", count=3)
    return "ok"
@app.get("/boom")
def boom() -> str:
    return str(1 / 0)
"""

CONFIG = """signals = ["default", "flask_login.signals:user_logged_in",
           "flask_login.signals:user_unauthorized"]
loggers = ["walkapp"]
[[sinks]]
type = "file"
path = "{path}"
"""
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def walk(tmp_path, monkeypatch):
    """The user's app, imported from its own module with a TOML configuration."""
    (tmp_path / "walkapp.py").write_text(APP)
    log = tmp_path / "events.jsonl"
    (tmp_path / "bridge.toml").write_text(CONFIG.format(path=log))
    monkeypatch.setenv("BRIDGE_CONFIG", str(tmp_path / "bridge.toml"))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("walkapp")
    yield module, log
    module.bridge.close()
    sys.modules.pop("walkapp", None)
    structlog.reset_defaults()


def events(module, log):
    module.bridge.flush()
    return [json.loads(line) for line in log.read_text().splitlines()]


def orders(module, log, headers):
    client = module.app.test_client()
    client.post("/login")
    response = client.get("/orders", headers=headers)
    rid = response.headers["X-Request-ID"]
    return rid, [e for e in events(module, log) if e.get("request_id") == rid]


def flask_cli(tmp_path, *args):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "flask", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


class TestWalkthrough:
    def test_one_request_correlates(self, walk):
        """Signal, app.logger and structlog events of one request share request_id and user.id."""
        module, log = walk
        rid, mine = orders(module, log, {})
        by_signal = {e["signal"]: e for e in mine}
        assert [rid] * 3 == [e["request_id"] for e in by_signal.values()]
        assert {"logging", "structlog", "request-finished"} == set(by_signal)
        assert ["7", "7", "7"] == [e.get("user.id") for e in by_signal.values()]
        (logged_in,) = [e for e in events(module, log) if e["event"] == "user.logged_in"]
        assert "7" == logged_in["user.id"]

    def test_traceparent(self, walk):
        """A traceparent puts trace_id/span_id on the events; without one there are none."""
        module, log = walk
        _, traced = orders(module, log, {"traceparent": TRACEPARENT})
        assert {("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")} == {
            (e.get("trace_id"), e.get("span_id")) for e in traced
        }
        _, plain = orders(module, log, {})
        assert [] == [e for e in plain if "trace_id" in e or "span_id" in e]

    def test_structlog_keys_once(self, walk):
        """The structlog event has log.logger only, no args.level nor args.timestamp."""
        module, log = walk
        _, mine = orders(module, log, {})
        (event,) = [e for e in mine if e["signal"] == "structlog"]
        assert "walkapp.orders" == event["log.logger"]
        assert (3, "info") == (event["count"], event["level"])
        assert [] == [k for k in event if k == "logger" or k.startswith("args.")]

    def test_stacktrace_once(self, walk):
        """An exception in a view has its stack trace written exactly once."""
        module, log = walk
        assert 500 == module.app.test_client().get("/boom").status_code
        stacks = [e for e in events(module, log) if "exception.stacktrace" in e]
        assert ["request.exception"] == [e["event"] for e in stacks]
        (record,) = [e for e in events(module, log) if e["signal"] == "logging"]
        assert ("ZeroDivisionError", "request.exception") == (
            record["exception.type"],
            record["exception.stacktrace_in"],
        )
        assert stacks[0]["request_id"] == record["request_id"]
        assert 1 == log.read_text().count("Traceback")

    def test_cli(self, walk, tmp_path):
        """bridge check passes a good config, names a wrong key, tail prints readable lines."""
        module, log = walk
        orders(module, log, {})
        good = flask_cli(tmp_path, "--app", "walkapp", "bridge", "check")
        assert 0 == good.returncode, good.stdout + good.stderr
        (tmp_path / "bridge.toml").write_text("colour = true\n" + CONFIG.format(path=log))
        bad = flask_cli(tmp_path, "--app", "walkapp", "bridge", "check")
        assert 1 == bad.returncode
        assert "colour" in bad.stdout + bad.stderr
        tail = flask_cli(tmp_path, "bridge", "tail", str(log), "-n", "5")
        assert 0 == tail.returncode, tail.stderr
        lines = tail.stdout.splitlines()
        assert 5 == len(lines) and "request.finished" in lines[-1], tail.stdout
        assert [] == [line for line in lines if line.lstrip().startswith("{")]

"""Shared fixtures: real Flask apps with a bridge writing to a real file in tmp_path, and a
real collector on 127.0.0.1 with http sinks that are closed at teardown."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blinker
import pytest
import responses
from flask import Flask

from bridge import SignalBridge
from bridge.sinks.http import HttpSink
from tests.collector import Collector
from tests.delivery.helpers import fast_settings

LOGIN_SIGNAL = blinker.signal("user-login")  # defined before any init_app, as apps do


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON-lines file, parsed; fails the test on a torn or invalid line."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), "the file must end with a complete line"
    return [json.loads(line) for line in raw.splitlines()]


class BridgedApp:
    """A Flask app, its bridge and the file its events land in."""

    def __init__(self, app: Flask, bridge: SignalBridge, path: Path) -> None:
        self.app = app
        self.bridge = bridge
        self.path = path
        self.client = app.test_client()

    def events(self, *, flush: bool = True) -> list[dict[str, Any]]:
        if flush:
            assert self.bridge.flush(timeout=10.0)
        return read_events(self.path)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event"] == event]


def build_app(name: str = "shop", **config: Any) -> Flask:
    """A small shop app with the routes the tests drive."""
    from flask import current_app, flash, render_template_string

    app = Flask(name)
    app.secret_key = "test-secret"
    for key, value in config.items():
        app.config[key] = value

    @app.route("/")
    def index() -> str:
        return "ok"

    @app.route("/login", methods=["POST"])
    def login() -> str:
        LOGIN_SIGNAL.send(current_app._get_current_object(), user_id=7, username="ada")
        flash("welcome", "info")
        return render_template_string("{% for i in items %}{{ i }}{% endfor %}", items=[1, 2])

    @app.route("/items/<int:item_id>")
    def item(item_id: int) -> str:
        return str(item_id)

    @app.route("/boom")
    def boom() -> str:
        raise RuntimeError("kaboom")

    return app


@pytest.fixture
def make_bridged(tmp_path: Path) -> Iterator[Callable[..., BridgedApp]]:
    """Factory: `make_bridged(signals=[...], name=..., **extra_config)`; closed at teardown."""
    made: list[BridgedApp] = []

    def make(name: str = "shop", signals: list[str] | None = None, **config: Any) -> BridgedApp:
        path = tmp_path / f"{name}-{len(made)}" / "events.jsonl"
        config.setdefault("BRIDGE_SINKS", [{"type": "file", "path": str(path)}])
        if signals is not None:
            config["BRIDGE_SIGNALS"] = signals
        app = build_app(name, **config)
        bridged = BridgedApp(app, SignalBridge(app), path)
        made.append(bridged)
        return bridged

    yield make
    for bridged in made:
        bridged.bridge.close(timeout=5.0)


@pytest.fixture(autouse=True)
def _no_bridge_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Tests configure through app.config unless they set BRIDGE_* themselves."""
    import os

    for key in list(os.environ):
        if key.startswith("BRIDGE_"):
            monkeypatch.delenv(key)
    # Every bridged app publishes its counters for `flask bridge stats`: into the test's own
    # directory, never the system temp dir.
    monkeypatch.setenv("BRIDGE_STATS_DIR", str(tmp_path_factory.mktemp("stats")))


MakeSink = Callable[..., HttpSink]
_sink_names = itertools.count()


@pytest.fixture
def collector() -> Iterator[Collector]:
    """A real collector on 127.0.0.1 that tests can tell to fail, stall or reset."""
    with Collector() as running:
        yield running


@pytest.fixture
def make_sink() -> Iterator[MakeSink]:
    """Factory: `make_sink(url, **settings)` builds an http sink; all are closed at teardown."""
    made: list[HttpSink] = []

    def make(url: str, **overrides: Any) -> HttpSink:
        overrides.setdefault("name", f"http-{next(_sink_names)}")
        sink = HttpSink(fast_settings(url, **overrides))
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close(0.2)  # tests that need delivery flush first


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    """Requests answered by `responses` (exact bytes and headers); unused replies are fine."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def sinks() -> Iterator[list[HttpSink]]:
    """Http sinks a test appends here are closed at teardown."""
    made: list[HttpSink] = []
    yield made
    for sink in made:
        sink.close(0.5)

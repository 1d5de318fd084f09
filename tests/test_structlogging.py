"""structlog through `StructlogBridge`: the user's own configuration, one processor added."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from flask import Flask

from bridge import SignalBridge
from bridge.structlogging import StructlogBridge
from tests.conftest import read_events

# Keys structlog adds that the bridge's event already has under its own name.
DUPLICATES = {"logger", "logger_name", "log_level", "exc_info", "exception"} | {
    f"args.{key}" for key in ("level", "timestamp", "event", "logger", "exception")
}


def make_app(tmp_path: Path, name: str = "shop", **config: Any) -> Flask:
    """A bridged app writing to tmp_path/<name>.jsonl, with a view that logs with structlog."""
    app = Flask(name)
    app.config["BRIDGE_SINKS"] = [{"type": "file", "path": str(tmp_path / f"{name}.jsonl")}]
    for key, value in config.items():
        app.config[f"BRIDGE_{key.upper()}"] = value

    @app.route("/pay")
    def pay() -> str:
        structlog.get_logger("shop.payments").info("paid", order_id=7)
        return "ok"

    SignalBridge(app)
    return app


def events_of(app: Flask, tmp_path: Path) -> list[dict[str, Any]]:
    assert app.extensions["bridge"].flush(timeout=10.0)
    return read_events(tmp_path / f"{app.name}.jsonl")


def close(*apps: Flask) -> None:
    for app in apps:
        app.extensions["bridge"].close(timeout=5.0)


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """The user's own structlog configuration (stdlib loggers, level, logger name, ISO time,
    JSON) with `StructlogBridge()` before the renderer; what structlog renders lands in the
    returned buffer. structlog's defaults are restored afterwards."""
    rendered = io.StringIO()
    handler = logging.StreamHandler(rendered)
    logger = logging.getLogger("shop")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            StructlogBridge(),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    yield rendered
    structlog.reset_defaults()
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


class TestStructlogBridge:
    def test_keys_are_mapped_once(self, output: io.StringIO, tmp_path: Path) -> None:
        """event, level and logger become the bridge's event, level and log.logger; the
        timestamp is the envelope's; nothing structlog added is repeated."""
        app = make_app(tmp_path)
        try:
            with app.app_context():
                structlog.get_logger("shop.payments").warning("refund", order_id=7, amount=1.5)
            [event] = events_of(app, tmp_path)
        finally:
            close(app)
        assert ("refund", "warning", "structlog", "shop.payments") == (
            event["event"],
            event["level"],
            event["signal"],
            event["log.logger"],
        )
        assert (7, 1.5) == (event["order_id"], event["amount"])
        assert set() == DUPLICATES & set(event)
        assert event["timestamp"].endswith("Z")

    def test_user_output_stays_theirs(self, output: io.StringIO, tmp_path: Path) -> None:
        """The chain's own renderer gets the event dict unchanged."""
        app = make_app(tmp_path)
        try:
            with app.app_context():
                structlog.get_logger("shop.payments").info("paid", order_id=7)
        finally:
            close(app)
        rendered = json.loads(output.getvalue())
        assert {"event", "level", "logger", "timestamp", "order_id"} == set(rendered)
        assert ("paid", "info", "shop.payments", 7) == (
            rendered["event"],
            rendered["level"],
            rendered["logger"],
            rendered["order_id"],
        )

    def test_drop_sends_to_the_bridge_only(self, tmp_path: Path) -> None:
        """With drop=True the bridge gets the event and the chain stops (DropEvent)."""
        rendered = io.StringIO()
        app = make_app(tmp_path)
        structlog.configure(
            processors=[StructlogBridge(drop=True), structlog.processors.JSONRenderer()],
            logger_factory=structlog.PrintLoggerFactory(rendered),
            cache_logger_on_first_use=False,
        )
        try:
            with app.app_context():
                structlog.get_logger().error("gone", sku="s-1")
            events = events_of(app, tmp_path)
        finally:
            structlog.reset_defaults()
            close(app)
        assert "" == rendered.getvalue()
        assert [("gone", "error", "s-1")] == [(e["event"], e["level"], e["sku"]) for e in events]

    def test_inside_a_request_shares_the_request_id(
        self, output: io.StringIO, tmp_path: Path
    ) -> None:
        """An event logged in a view carries the request's fields and the same request_id as
        the request's signal events."""
        app = make_app(tmp_path)
        try:
            assert 200 == app.test_client().get("/pay?token=abc").status_code
            events = events_of(app, tmp_path)
        finally:
            close(app)
        assert ["paid", "request.finished"] == [e["event"] for e in events]
        paid, finished = events
        assert paid["request_id"] == finished["request_id"]
        assert paid["request_id"]
        assert ("/pay", "token=[REDACTED]", 7) == (
            paid["url.path"],
            paid["url.query"],
            paid["order_id"],
        )

    def test_bound_request_id_is_not_repeated(self, output: io.StringIO, tmp_path: Path) -> None:
        """A request_id the app binds with bind_contextvars, equal to the request's, is
        written once; a different one is kept as args.request_id."""
        app = make_app(tmp_path)

        @app.route("/bound/<value>")
        def bound(value: str) -> str:
            with structlog.contextvars.bound_contextvars(request_id=value):
                structlog.get_logger("shop").info("bound")
            return "ok"

        client = app.test_client()
        try:
            for value in ("req-1", "other"):
                client.get(f"/bound/{value}", headers={"X-Request-ID": "req-1"})
            events = [e for e in events_of(app, tmp_path) if e["event"] == "bound"]
        finally:
            close(app)
        assert [("req-1", None), ("req-1", "other")] == [
            (e["request_id"], e.get("args.request_id")) for e in events
        ]

    @pytest.mark.parametrize("bridge_first", [True, False])
    def test_exception_fields_once(self, tmp_path: Path, bridge_first: bool) -> None:
        """exc_info (or format_exc_info's text, with the bridge after it) becomes
        exception.type, .message and .stacktrace, and no other key."""
        app = make_app(tmp_path)
        chain: list[Any] = [structlog.processors.format_exc_info]
        chain.insert(0 if bridge_first else 1, StructlogBridge())
        structlog.configure(
            processors=[*chain, structlog.processors.JSONRenderer()],
            logger_factory=structlog.PrintLoggerFactory(io.StringIO()),
            cache_logger_on_first_use=False,
        )
        try:
            with app.app_context():
                try:
                    raise KeyError("sku-9")
                except KeyError:
                    structlog.get_logger().exception("lookup failed")
            [event] = events_of(app, tmp_path)
        finally:
            structlog.reset_defaults()
            close(app)
        assert ("error", "KeyError", "'sku-9'") == (
            event["level"],
            event["exception.type"],
            event["exception.message"],
        )
        assert 'raise KeyError("sku-9")' in event["exception.stacktrace"]
        assert set() == DUPLICATES & set(event)

    def test_secrets_are_redacted(self, output: io.StringIO, tmp_path: Path) -> None:
        """Arguments take the bridge's redaction like a signal's."""
        app = make_app(tmp_path)
        try:
            with app.app_context():
                structlog.get_logger("shop").info("login", password="hunter2", user="ada")
            [event] = events_of(app, tmp_path)
        finally:
            close(app)
        assert ("[REDACTED]", "ada") == (event["password"], event["user"])


class TestRouting:
    def test_outside_any_app_every_bridge(self, output: io.StringIO, tmp_path: Path) -> None:
        """An event logged outside any app goes to every bridged app."""
        one, two = make_app(tmp_path, "one"), make_app(tmp_path, "two")
        try:
            structlog.get_logger("shop.jobs").info("nightly")
            assert [["nightly"], ["nightly"]] == [
                [e["event"] for e in events_of(app, tmp_path)] for app in (one, two)
            ]
        finally:
            close(one, two)

    def test_inside_an_app_that_app_only(self, output: io.StringIO, tmp_path: Path) -> None:
        """An event logged inside one app goes to that app's bridge only."""
        one, two = make_app(tmp_path, "one"), make_app(tmp_path, "two")
        try:
            with two.app_context():
                structlog.get_logger("shop.jobs").info("job")
            assert [[], ["job"]] == [
                [e["event"] for e in events_of(app, tmp_path)] for app in (one, two)
            ]
        finally:
            close(one, two)

    def test_pinned_to_one_app(self, tmp_path: Path) -> None:
        """StructlogBridge(app) sends events logged outside apps, or in that app, to it only."""
        one, two = make_app(tmp_path, "one"), make_app(tmp_path, "two")
        structlog.configure(
            processors=[StructlogBridge(one), structlog.processors.JSONRenderer()],
            logger_factory=structlog.PrintLoggerFactory(io.StringIO()),
            cache_logger_on_first_use=False,
        )
        try:
            structlog.get_logger().info("outside")
            with two.app_context():
                structlog.get_logger().info("in two")
            with one.app_context():
                structlog.get_logger().info("in one")
            assert [["outside", "in one"], []] == [
                [e["event"] for e in events_of(app, tmp_path)] for app in (one, two)
            ]
        finally:
            structlog.reset_defaults()
            close(one, two)

    def test_bridge_threads_are_ignored(self, output: io.StringIO, tmp_path: Path) -> None:
        """Events from the bridge's own threads (named bridge-...) are not sent."""
        app = make_app(tmp_path)
        try:
            log = structlog.get_logger("shop")
            thread = threading.Thread(target=log.info, args=("inner",), name="bridge-sink-x")
            thread.start()
            thread.join(timeout=10.0)
            assert not thread.is_alive()
            assert [] == events_of(app, tmp_path)
        finally:
            close(app)

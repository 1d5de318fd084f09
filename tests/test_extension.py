"""SignalBridge through real Flask apps and the test client."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blinker
import pytest
from flask import Flask

from bridge import ConfigError, SignalBridge
from tests.conftest import LOGIN_SIGNAL, BridgedApp, build_app, read_events
from tests.contract import (
    ENVELOPE,
    PROTECTED_REQUEST_KEYS,
    REQUEST_KEYS,
    RFC3339,
    STATS_COUNTERS,
    UUID7,
)

Make = Callable[..., BridgedApp]


class TestInitApp:
    def test_registers_in_app_extensions(self, make_bridged: Make) -> None:
        """init_app registers the extension under app.extensions["bridge"]."""
        bridged = make_bridged()
        assert bridged.app.extensions["bridge"] is bridged.bridge

    def test_second_init_app_raises(self, make_bridged: Make) -> None:
        """A second init_app on the same app is a clear RuntimeError."""
        bridged = make_bridged()
        with pytest.raises(RuntimeError, match="already initialized"):
            bridged.bridge.init_app(bridged.app)

    def test_factory_pattern(self, tmp_path: Path) -> None:
        """SignalBridge() then init_app(app) works like SignalBridge(app)."""
        bridge = SignalBridge()
        path = tmp_path / "e.jsonl"
        app = build_app(BRIDGE_SINKS=[{"type": "file", "path": str(path)}])
        bridge.init_app(app)
        try:
            app.test_client().get("/")
            assert bridge.flush()
            assert ["request.finished"] == [e["event"] for e in read_events(path)]
        finally:
            bridge.close()

    def test_bad_config_fails_at_init_app(self, tmp_path: Path) -> None:
        """A wrong value fails at init_app with the key, the value and the expectation."""
        app = build_app(BRIDGE_MAX_LINE_BYTES="big")
        with pytest.raises(ConfigError) as info:
            SignalBridge(app)
        assert "max_line_bytes" in str(info.value)
        assert "'big'" in str(info.value)
        assert "bridge" not in app.extensions

    def test_unknown_signal_fails_at_init_app(self) -> None:
        """A misspelt built-in is refused with a suggestion."""
        app = build_app(BRIDGE_SIGNALS=["request_finishd"], BRIDGE_SINKS=[{"type": "stdout"}])
        with pytest.raises(ConfigError, match="did you mean 'request_finished'"):
            SignalBridge(app)

    def test_unwritable_path_fails_at_init_app(self, tmp_path: Path) -> None:
        """A file sink whose path cannot be created names sinks[i].path."""
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("")
        app = build_app(BRIDGE_SINKS=[{"type": "file", "path": str(blocker / "x.jsonl")}])
        with pytest.raises(ConfigError, match=r"sinks\[0\]\.path"):
            SignalBridge(app)


class TestBuiltinSignals:
    def test_default_set(self, make_bridged: Make) -> None:
        """By default: request.finished, request.exception and message.flashed only."""
        bridged = make_bridged(signals=None)
        bridged.client.post("/login")
        assert ["message.flashed", "request.finished"] == [e["event"] for e in bridged.events()]

    def test_every_builtin_event(self, make_bridged: Make) -> None:
        """ "builtin" captures all ten signals with their catalogue names."""
        bridged = make_bridged(signals=["builtin"])
        bridged.client.post("/login")
        names = [e["event"] for e in bridged.events()]
        assert [
            "appcontext.pushed",
            "request.started",
            "message.flashed",
            "template.rendering",
            "template.rendered",
            "request.finished",
            "request.teardown",
            "appcontext.teardown",
            "appcontext.popped",
        ] == names
        bridged.client.get("/boom")
        assert 1 == len(bridged.named("request.exception"))

    def test_envelope_and_request_context(self, make_bridged: Make) -> None:
        """Every request event has the envelope and the request context, flat keys."""
        bridged = make_bridged(signals=["builtin"])
        bridged.client.get(
            "/items/3?q=1", headers={"X-Request-ID": "req-1", "User-Agent": "pytest-agent"}
        )
        for event in bridged.events():
            assert ENVELOPE <= event.keys()
            assert RFC3339.match(event["timestamp"])
            assert UUID7.match(event["event_id"])
            assert "shop" == event["service.name"]
            if event["event"].startswith("request."):
                assert REQUEST_KEYS <= event.keys()
                assert "req-1" == event["request_id"]
                assert "/items/<int:item_id>" == event["http.route"]
                assert "/items/3" == event["url.path"]
                assert "q=1" == event["url.query"]
                assert "pytest-agent" == event["user_agent.original"]

    def test_request_finished_fields(self, make_bridged: Make) -> None:
        """request.finished carries status, duration and body size."""
        bridged = make_bridged()
        bridged.client.get("/items/42")
        (finished,) = bridged.named("request.finished")
        assert 200 == finished["http.response.status_code"]
        assert 2 == finished["http.response.body.size"]
        assert isinstance(finished["duration_ms"], float)
        assert finished["duration_ms"] >= 0
        assert "info" == finished["level"]

    def test_generated_request_id_is_shared_by_the_request(self, make_bridged: Make) -> None:
        """Without X-Request-ID, one id is generated and shared by every event of a request."""
        bridged = make_bridged(signals=["builtin"])
        bridged.client.post("/login")
        bridged.client.post("/login")
        ids = [e["request_id"] for e in bridged.events() if "request_id" in e]
        assert 2 == len(set(ids))

    def test_exception_then_finished_500(self, make_bridged: Make) -> None:
        """A raising view: request.exception (error, with stack) then request.finished 500."""
        bridged = make_bridged()
        assert 500 == bridged.client.get("/boom").status_code
        exc, finished = bridged.events()
        assert ("request.exception", "error") == (exc["event"], exc["level"])
        assert "RuntimeError" == exc["exception.type"]
        assert "kaboom" == exc["exception.message"]
        assert "Traceback" in exc["exception.stacktrace"]
        assert "/boom" == exc["url.path"]
        assert (500, "error") == (finished["http.response.status_code"], finished["level"])

    def test_propagating_exception_keeps_request_context(self, make_bridged: Make) -> None:
        """In testing mode the exception propagates: no request.finished, context kept."""
        bridged = make_bridged(TESTING=True)
        with pytest.raises(RuntimeError):
            bridged.client.get("/boom", headers={"X-Request-ID": "r-9"})
        (exc,) = bridged.events()
        assert "request.exception" == exc["event"]
        assert ("r-9", "/boom") == (exc["request_id"], exc["url.path"])

    def test_template_context_keys_only(self, make_bridged: Make) -> None:
        """Template events list context keys, never values."""
        bridged = make_bridged(signals=["template_rendered"])
        bridged.client.post("/login")
        (rendered,) = bridged.events()
        assert "items" in rendered["template.context_keys"]
        assert "[1, 2]" not in str(rendered)

    def test_flash_fields(self, make_bridged: Make) -> None:
        """message.flashed carries the message and its category."""
        bridged = make_bridged(signals=["message_flashed"])
        bridged.client.post("/login")
        (flashed,) = bridged.events()
        assert ("welcome", "info") == (flashed["message"], flashed["category"])

    def test_rename(self, make_bridged: Make) -> None:
        """`rename` maps a signal to another event name."""
        bridged = make_bridged(
            signals=["request_finished"], BRIDGE_RENAME={"request_finished": "http.access"}
        )
        bridged.client.get("/")
        assert ["http.access"] == [e["event"] for e in bridged.events()]

    def test_sensitive_query_parameters_are_redacted(self, make_bridged: Make) -> None:
        """Query parameters with sensitive names never reach the log."""
        bridged = make_bridged()
        bridged.client.get("/?api_key=s3cr3t&page=2&session_id=abc")
        (finished,) = bridged.events()
        assert "api_key=[REDACTED]&page=2&session_id=[REDACTED]" == finished["url.query"]
        assert "s3cr3t" not in bridged.path.read_text()


class TestIsolation:
    def test_two_apps_never_see_each_others_events(self, make_bridged: Make) -> None:
        """Built-in signals are connected per app."""
        shop = make_bridged("shop", signals=["builtin", "user-login"])
        admin = make_bridged("admin", signals=["builtin", "user-login"])
        shop.client.post("/login")
        admin.client.get("/")
        assert {"shop"} == {e["service.name"] for e in shop.events()}
        assert {"admin"} == {e["service.name"] for e in admin.events()}
        assert 1 == len(shop.named("user-login"))
        assert [] == admin.named("user-login")

    def test_receivers_survive_garbage_collection(self, make_bridged: Make) -> None:
        """Blinker holds the receivers strongly: a gc pass silences no built-in or custom signal."""
        bridged = make_bridged(signals=["request_finished", "user-login"])
        gc.collect()
        bridged.client.post("/login")
        assert ["user-login", "request.finished"] == [e["event"] for e in bridged.events()]

    def test_close_disconnects(self, make_bridged: Make) -> None:
        """After close(), no receiver of the bridge runs."""
        bridged = make_bridged(signals=["builtin", "user-login"])
        bridged.bridge.close()
        bridged.client.post("/login")
        LOGIN_SIGNAL.send(user_id=1)
        assert [] == read_events(bridged.path)
        assert "bridge" not in bridged.app.extensions


class TestCustomSignals:
    def test_sent_with_the_app_as_sender(self, make_bridged: Make) -> None:
        """Every keyword argument becomes a field; the request context is attached."""
        bridged = make_bridged(signals=["user-login"])
        bridged.client.post("/login")
        (login,) = bridged.events()
        assert ("user-login", "user-login", "info") == (
            login["event"],
            login["signal"],
            login["level"],
        )
        assert (7, "ada", "/login") == (login["user_id"], login["username"], login["url.path"])

    def test_sent_without_sender_outside_any_app(self, make_bridged: Make) -> None:
        """A script's `send(user_id=7)` reaches every bridge configured for the signal."""
        one = make_bridged("one", signals=["user-login"])
        two = make_bridged("two", signals=["user-login"])
        other = make_bridged("other", signals=["default"])
        LOGIN_SIGNAL.send(user_id=7)
        assert [7] == [e["user_id"] for e in one.events()]
        assert [7] == [e["user_id"] for e in two.events()]
        assert [] == other.events()

    def test_routed_to_the_current_app(self, make_bridged: Make) -> None:
        """Sent without sender inside an app context: only that app's bridge logs it."""
        one = make_bridged("one", signals=["user-login"])
        two = make_bridged("two", signals=["user-login"])
        with two.app.app_context():
            LOGIN_SIGNAL.send(user_id=8)
        assert [] == one.events()
        assert [8] == [e["user_id"] for e in two.events()]

    def test_sender_app_wins(self, make_bridged: Make) -> None:
        """The sender app's bridge logs the event even inside another app's context."""
        one = make_bridged("one", signals=["user-login"])
        two = make_bridged("two", signals=["user-login"])
        with two.app.app_context():
            LOGIN_SIGNAL.send(one.app, user_id=9)
        assert [9] == [e["user_id"] for e in one.events()]
        assert [] == two.events()

    def test_unbridged_app_context_is_not_logged_elsewhere(self, make_bridged: Make) -> None:
        """A send inside a bridged-less app's context is not some other app's event."""
        bridged = make_bridged("one", signals=["user-login"])
        plain = build_app("plain")
        with plain.app_context():
            LOGIN_SIGNAL.send(user_id=10)
        LOGIN_SIGNAL.send(plain, user_id=11)
        assert [] == bridged.events()

    def test_envelope_cannot_be_overwritten(self, make_bridged: Make) -> None:
        """A signal argument named like an envelope key is kept under args.<key>."""
        bridged = make_bridged(signals=["user-login"])
        LOGIN_SIGNAL.send(event="forged", level="debug", timestamp="yesterday")
        (login,) = bridged.events()
        assert ("user-login", "info") == (login["event"], login["level"])
        assert ("forged", "debug") == (login["args.event"], login["args.level"])

    def test_import_path_signal(self, make_bridged: Make) -> None:
        """A signal in a private namespace is found by "module:attribute"."""
        bridged = make_bridged(signals=["tests.signals_fixture:order_placed"])
        from tests.signals_fixture import order_placed

        order_placed.send(order_id=12, total=3.5)
        (order,) = bridged.events()
        assert ("order-placed", 12, 3.5) == (order["event"], order["order_id"], order["total"])

    def test_receiver_failure_never_reaches_the_request(self, make_bridged: Make) -> None:
        """A processor that raises is counted; the request still succeeds."""

        def broken(logger: Any, method: str, event_dict: Any) -> Any:
            raise ValueError("processor bug")

        app = build_app(BRIDGE_SINKS=[{"type": "stdout"}])
        bridge = SignalBridge(app, processors=[broken])
        try:
            assert 200 == app.test_client().get("/").status_code
            assert 1 == bridge.stats()["receiver_errors"]
        finally:
            bridge.close()


FORGED = {key: f"FORGED-{key}" for key in PROTECTED_REQUEST_KEYS}
FORGED.update({"request_id": "FORGED-RID", "client.address": "6.6.6.6"})
REAL_CLIENT = {"REMOTE_ADDR": "10.1.2.3"}


def forged_log(app: Flask) -> None:
    """Log a record whose `extra` names every request-context key, through `loggers`."""
    import logging

    logging.getLogger("shop.forging").warning("forged", extra=FORGED)


def forged_signal(app: Flask) -> None:
    """Send the custom signal with every request-context key as an argument."""
    LOGIN_SIGNAL.send(app, **FORGED)


class TestContextForging:
    @pytest.mark.parametrize("send", [forged_signal, forged_log], ids=["signal", "logging"])
    @pytest.mark.parametrize("with_processor", [False, True], ids=["plain", "user-processor"])
    def test_request_context_cannot_be_forged(
        self, tmp_path: Path, send: Callable[[Flask], None], with_processor: bool
    ) -> None:
        """Signal args and log extra named like request-context keys stay args.<key>, always."""
        seen: list[dict[str, Any]] = []

        def spy(logger: Any, method: str, event_dict: Any) -> Any:
            seen.append(dict(event_dict))
            return event_dict

        path = tmp_path / "e.jsonl"
        app = build_app(
            BRIDGE_SIGNALS=["user-login"],
            BRIDGE_LOGGERS=["shop.forging"],
            BRIDGE_SINKS=[{"type": "file", "path": str(path)}],
        )
        bridge = SignalBridge(app, processors=[spy] if with_processor else [])
        try:
            with app.test_request_context(
                "/real?page=1", headers={"X-Request-ID": "real-rid"}, environ_base=REAL_CLIENT
            ):
                send(app)
            assert bridge.flush()
        finally:
            bridge.close()
        (event,) = read_events(path)
        assert ("real-rid", "10.1.2.3", "/real", "page=1") == (
            event["request_id"],
            event["client.address"],
            event["url.path"],
            event["url.query"],
        )
        for key in ("trace_id", "span_id", "user.id", "http.route"):
            assert key not in event
        assert {f"args.{key}": value for key, value in FORGED.items()} == {
            key: value for key, value in event.items() if key.startswith("args.")
        }
        if with_processor:
            (processed,) = seen
            assert "real-rid" == processed["request_id"]
            assert "FORGED-RID" == processed["args.request_id"]

    def test_outside_a_request_too(self, make_bridged: Make) -> None:
        """Outside any request the keys are protected all the same: no forged request_id."""
        bridged = make_bridged(signals=["user-login"])
        LOGIN_SIGNAL.send(bridged.app, **FORGED)
        (event,) = bridged.events()
        assert not set(PROTECTED_REQUEST_KEYS) & event.keys()
        assert "6.6.6.6" == event["args.client.address"]

    def test_a_user_processor_may_add_context(self, tmp_path: Path) -> None:
        """The user's own processors are trusted: one that adds trace_id keeps it."""

        def add_trace(logger: Any, method: str, event_dict: Any) -> Any:
            event_dict["trace_id"] = "4bf92f3577b34da6a3ce929d0e0e4736"
            return event_dict

        path = tmp_path / "e.jsonl"
        app = build_app(
            BRIDGE_SIGNALS=["user-login"], BRIDGE_SINKS=[{"type": "file", "path": str(path)}]
        )
        bridge = SignalBridge(app, processors=[add_trace])
        try:
            LOGIN_SIGNAL.send(app, user_id=1)
            assert bridge.flush()
        finally:
            bridge.close()
        (event,) = read_events(path)
        assert "4bf92f3577b34da6a3ce929d0e0e4736" == event["trace_id"]

    def test_bridge_fields_cannot_be_forged(self, make_bridged: Make) -> None:
        """A log record's extra cannot replace a field the bridge wrote (log.logger)."""
        import logging

        bridged = make_bridged(signals=["default"], BRIDGE_LOGGERS=["shop.forging"])
        logging.getLogger("shop.forging").warning("x", extra={"log.logger": "forged"})
        (event,) = bridged.events()
        assert ("shop.forging", "forged") == (event["log.logger"], event["args.log.logger"])


class TestFlaskLogin:
    def test_user_logged_in(self, make_bridged: Make) -> None:
        """Flask-Login's user_logged_in becomes user.logged_in with user.id, no attributes."""
        flask_login = pytest.importorskip("flask_login")
        bridged = make_bridged(
            signals=["flask_login.signals:user_logged_in", "flask_login.signals:user_logged_out"]
        )
        manager = flask_login.LoginManager(bridged.app)

        class User(flask_login.UserMixin):
            def __init__(self, user_id: str) -> None:
                self.id = user_id
                self.password_hash = "pbkdf2:do-not-log"

        manager.user_loader(lambda user_id: User(user_id))

        @bridged.app.route("/flask-login")
        def do_login() -> str:
            flask_login.login_user(User("42"))
            flask_login.logout_user()
            return "ok"

        bridged.client.get("/flask-login")
        logged_in, logged_out = bridged.events()
        assert ("user.logged_in", "42") == (logged_in["event"], logged_in["user.id"])
        assert ("user.logged_out", "42") == (logged_out["event"], logged_out["user.id"])
        assert "do-not-log" not in bridged.path.read_text()


class TestStatsAndFlush:
    def test_stats_shape(self, make_bridged: Make) -> None:
        """stats() has every counter the README names, per sink name."""
        bridged = make_bridged()
        bridged.client.get("/")
        assert bridged.bridge.flush()
        stats = bridged.bridge.stats()
        assert 0 == stats["receiver_errors"]
        counters = stats["sinks"]["file-0"]
        for key in STATS_COUNTERS:
            assert key in counters
        assert (1, 1, 0) == (counters["enqueued"], counters["delivered"], counters["dropped"])

    def test_stats_after_close_says_so(self, make_bridged: Make) -> None:
        """stats() on a closed bridge says it has no open app, not that it has several."""
        bridged = make_bridged()
        assert bridged.bridge.close()
        with pytest.raises(RuntimeError, match="no open app"):
            bridged.bridge.stats()

    def test_named_sinks(self, make_bridged: Make, tmp_path: Path) -> None:
        """A sink's `name` is its key in stats()."""
        path = tmp_path / "audit.jsonl"
        bridged = make_bridged(BRIDGE_SINKS=[{"type": "file", "path": str(path), "name": "audit"}])
        assert ["audit"] == list(bridged.bridge.stats()["sinks"])


def test_several_apps_need_app_for_stats(make_bridged: Make) -> None:
    """With several apps on one SignalBridge, stats() asks which app outside a context."""
    bridge = SignalBridge()
    apps: list[Flask] = []
    try:
        for name in ("a", "b"):
            app = build_app(name, BRIDGE_SINKS=[{"type": "stdout"}])
            bridge.init_app(app)
            apps.append(app)
        with pytest.raises(RuntimeError, match="pass app="):
            bridge.stats()
        assert 0 == bridge.stats(app=apps[0])["receiver_errors"]
        with apps[1].app_context():
            assert ["stdout-0"] == list(bridge.stats()["sinks"])
    finally:
        bridge.close()


def test_signal_defined_after_init_app_is_refused() -> None:
    """A custom name that is not a defined signal fails at init_app, not silently later."""
    app = build_app(BRIDGE_SIGNALS=["never-defined-signal"], BRIDGE_SINKS=[{"type": "stdout"}])
    with pytest.raises(ConfigError, match="never-defined-signal"):
        SignalBridge(app)
    assert "never-defined-signal" not in blinker.default_namespace


def test_loggers_key_routes_stdlib_records(make_bridged: Make) -> None:
    """`loggers` sends those stdlib loggers' records through the sinks, until close()."""
    import logging

    bridged = make_bridged(signals=["default"], BRIDGE_LOGGERS=["shop.payments"])
    logger = logging.getLogger("shop.payments")
    logger.setLevel(logging.INFO)
    with bridged.app.test_request_context("/pay", headers={"X-Request-ID": "pay-1"}):
        logger.warning("card declined", extra={"order_id": 7, "card_number": "4111"})
    (event,) = bridged.events()
    assert ("card declined", "warning", "logging") == (
        event["event"],
        event["level"],
        event["signal"],
    )
    assert (7, "[REDACTED]", "pay-1") == (
        event["order_id"],
        event["card_number"],
        event["request_id"],
    )
    bridged.bridge.close()
    logger.warning("after close")
    assert 1 == len(read_events(bridged.path))


def test_http_sink_errors_name_the_sink_position() -> None:
    """An http sink mistake found when building it names sinks[i]."""
    app = build_app(BRIDGE_SINKS=[{"type": "stdout"}, {"type": "http", "url": "ftp://127.0.0.1/"}])
    with pytest.raises(ConfigError) as info:
        SignalBridge(app)
    assert info.value.key.startswith("sinks[1].")


@pytest.mark.parametrize("proxyfix_first", [True, False])
def test_client_address_after_proxyfix(tmp_path: Path, proxyfix_first: bool) -> None:
    """client.address is the forwarded client, whether ProxyFix wraps before or after."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    path = tmp_path / "e.jsonl"
    app = build_app(BRIDGE_SINKS=[{"type": "file", "path": str(path)}])
    if proxyfix_first:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    bridge = SignalBridge(app)
    if not proxyfix_first:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    try:
        app.test_client().get("/", headers={"X-Forwarded-For": "203.0.113.9"})
        assert bridge.flush()
        (event,) = read_events(path)
        assert "203.0.113.9" == event["client.address"]
    finally:
        bridge.close()

"""Request ids and trace context: one id per request in its events, log lines, response and
`bridge.request_id()`; W3C `traceparent` and the active OpenTelemetry span as trace ids."""

from __future__ import annotations

import contextvars
import logging
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask, current_app
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import bridge
from bridge import ConfigError, SignalBridge
from bridge.correlation import trace_context
from tests.conftest import LOGIN_SIGNAL, BridgedApp

MakeBridged = Callable[..., BridgedApp]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def add_view(app: Flask, seen: list[Any]) -> None:
    @app.route("/who")
    def who() -> str:
        seen.append(bridge.request_id())
        LOGIN_SIGNAL.send(current_app._get_current_object(), user_id=1)
        return "ok"


class TestRequestId:
    def test_one_id_in_the_events_the_response_and_the_accessor(
        self, make_bridged: MakeBridged
    ) -> None:
        """The id a view reads with `bridge.request_id()` is every event's `request_id` and
        the response's `X-Request-ID`."""
        bridged = make_bridged(signals=["default", "user-login"])
        seen: list[Any] = []
        add_view(bridged.app, seen)
        response = bridged.client.get("/who")
        events = bridged.events()
        assert re.fullmatch(r"[0-9a-f]{32}", seen[0])
        assert seen[0] == response.headers["X-Request-ID"]
        assert {seen[0]} == {event["request_id"] for event in events}
        assert 2 == len(events)

    def test_an_incoming_id_is_kept_and_echoed(self, make_bridged: MakeBridged) -> None:
        """A load balancer's X-Request-ID is the request's id."""
        bridged = make_bridged(signals=["user-login"])
        seen: list[Any] = []
        add_view(bridged.app, seen)
        response = bridged.client.get("/who", headers={"X-Request-ID": "lb-42.a:b/c"})
        assert ["lb-42.a:b/c"] == seen
        assert "lb-42.a:b/c" == response.headers["X-Request-ID"]
        assert ["lb-42.a:b/c"] == [event["request_id"] for event in bridged.events()]

    @pytest.mark.parametrize(
        "hostile",
        ["has space", 'quote"d', "x" * 129, "", "semi;colon", "ünïcode"],
        ids=["space", "quote", "too long", "empty", "semicolon", "non-ascii"],
    )
    def test_an_unsafe_incoming_id_is_replaced(
        self, make_bridged: MakeBridged, hostile: str
    ) -> None:
        """An id that is not safe to echo or index is never used: a new one is made."""
        bridged = make_bridged(signals=["user-login"])
        seen: list[Any] = []
        add_view(bridged.app, seen)
        response = bridged.client.get("/who", headers={"X-Request-ID": hostile})
        assert re.fullmatch(r"[0-9a-f]{32}", seen[0])
        assert seen[0] == response.headers["X-Request-ID"]

    def test_configured_headers_are_tried_in_order(self, make_bridged: MakeBridged) -> None:
        """`request_id_from`: the first header with a valid id wins."""
        bridged = make_bridged(
            signals=["user-login"], BRIDGE_REQUEST_ID_FROM=["X-Correlation-ID", "X-Request-ID"]
        )
        seen: list[Any] = []
        add_view(bridged.app, seen)
        bridged.client.get("/who", headers={"X-Correlation-ID": "corr-1", "X-Request-ID": "req-1"})
        bridged.client.get("/who", headers={"X-Correlation-ID": "bad id", "X-Request-ID": "req-2"})
        assert ["corr-1", "req-2"] == seen

    def test_the_echo_can_be_switched_off_and_never_overrides_the_app(
        self, make_bridged: MakeBridged
    ) -> None:
        """`request_id_echo = ""` echoes nothing; a header the app set stays."""
        quiet = make_bridged(signals=["user-login"], BRIDGE_REQUEST_ID_ECHO="")
        add_view(quiet.app, [])
        assert "X-Request-ID" not in quiet.client.get("/who").headers
        loud = make_bridged(name="loud", signals=["user-login"])

        @loud.app.route("/own")
        def own() -> tuple[str, int, dict[str, str]]:
            return "ok", 200, {"X-Request-ID": "the-app-s"}

        assert ["the-app-s"] == loud.client.get("/own").headers.getlist("X-Request-ID")

    def test_a_log_record_and_a_thread_of_the_request_carry_its_id(
        self, make_bridged: MakeBridged
    ) -> None:
        """A stdlib record logged in the view, and an event sent from a thread started with
        the request's context, carry the request's id."""
        bridged = make_bridged(signals=["user-login"], BRIDGE_LOGGERS=["shop.correlation"])
        app = bridged.app
        seen: list[Any] = []

        @app.route("/work")
        def work() -> str:
            seen.append(bridge.request_id())
            logging.getLogger("shop.correlation").warning("charging the card")
            context = contextvars.copy_context()
            thread = threading.Thread(
                target=context.run, args=(LOGIN_SIGNAL.send, app), kwargs={"user_id": 3}
            )
            thread.start()
            thread.join(10.0)
            return "ok"

        bridged.client.get("/work")
        events = bridged.events()
        assert {"charging the card", "user-login"} == {event["event"] for event in events}
        assert {seen[0]} == {event["request_id"] for event in events}

    def test_outside_a_request_there_is_no_id(self) -> None:
        """`bridge.request_id()` is None in a script."""
        assert bridge.request_id() is None

    def test_a_bad_header_name_fails_at_start_up(self) -> None:
        """A header name with a space is refused, naming the key and the value."""
        app = Flask("bad-header")
        app.config["BRIDGE_REQUEST_ID_FROM"] = ["X Request"]
        with pytest.raises(ConfigError) as raised:
            SignalBridge(app)
        assert "request_id_from='X Request'" in str(raised.value)


class TestTraceContext:
    def test_a_traceparent_gives_trace_and_span_ids(self, make_bridged: MakeBridged) -> None:
        """W3C `traceparent`: its trace id and parent id become `trace_id` and `span_id`."""
        bridged = make_bridged(signals=["user-login"])
        add_view(bridged.app, [])
        bridged.client.get("/who", headers={"traceparent": f"00-{TRACE}-{SPAN}-01"})
        [event] = bridged.events()
        assert (TRACE, SPAN) == (event["trace_id"], event["span_id"])

    @pytest.mark.parametrize(
        "header",
        [
            f"00-{TRACE.upper()}-{SPAN}-01",
            f"00-{'0' * 32}-{SPAN}-01",
            f"00-{TRACE}-{'0' * 16}-01",
            f"ff-{TRACE}-{SPAN}-01",
            f"00-{TRACE}-{SPAN}-01-extra",
            f"00-{TRACE[:-1]}-{SPAN}-01",
            "garbage",
        ],
        ids=["uppercase", "zero trace", "zero span", "version ff", "00 with more", "short", "junk"],
    )
    def test_an_invalid_traceparent_is_ignored(self, header: str) -> None:
        """Anything the W3C rules refuse gives no trace ids."""
        assert trace_context({"HTTP_TRACEPARENT": header}) is None

    def test_a_later_version_may_append_fields(self) -> None:
        """Version 01 with a field more is read (forward compatible, as the spec asks)."""
        assert (TRACE, SPAN) == trace_context({"HTTP_TRACEPARENT": f"01-{TRACE}-{SPAN}-01-x"})

    def test_the_active_opentelemetry_span_wins(self, make_bridged: MakeBridged) -> None:
        """With a span active in the request, its ids are the event's, not the header's."""
        bridged = make_bridged(signals=["user-login"])
        app = bridged.app
        span_context = SpanContext(
            trace_id=int("a" * 32, 16),
            span_id=int("b" * 16, 16),
            is_remote=False,
            trace_flags=TraceFlags(1),
        )

        @app.route("/traced")
        def traced() -> str:
            with trace.use_span(NonRecordingSpan(span_context)):
                LOGIN_SIGNAL.send(app, user_id=2)
            return "ok"

        bridged.client.get("/traced", headers={"traceparent": f"00-{TRACE}-{SPAN}-01"})
        [event] = bridged.events()
        assert ("a" * 32, "b" * 16) == (event["trace_id"], event["span_id"])


class FakeUser:
    """A Flask-Login user; counts `get_id()` calls."""

    def __init__(self, user_id: str, *, expired: bool = False) -> None:
        self.id = user_id
        self.calls = 0
        self.is_authenticated = True
        self.is_active = True
        self.is_anonymous = False
        if expired:  # what SQLAlchemy keeps on an instance whose attributes expired
            self._sa_instance_state = type("State", (), {"expired_attributes": {"id"}})()

    def get_id(self) -> str:
        self.calls += 1
        return self.id


def login_app(make_bridged: MakeBridged, users: dict[str, FakeUser], **config: Any) -> BridgedApp:
    """A bridged app with Flask-Login; `loads` counts how often it loaded a user."""
    from flask_login import LoginManager, login_required, login_user, logout_user

    bridged = make_bridged(name="login", signals=["default", "user-login"], **config)
    app = bridged.app
    manager = LoginManager(app)
    loads: list[str] = []

    @manager.user_loader
    def load(user_id: str) -> FakeUser | None:
        loads.append(user_id)
        return users.get(user_id)

    @app.post("/in/<user_id>")
    def sign_in(user_id: str) -> str:
        login_user(users[user_id])
        return "in"

    @app.get("/private")
    @login_required
    def private() -> str:
        LOGIN_SIGNAL.send(app, note="seen")
        return "private"

    @app.get("/public")
    def public() -> str:
        LOGIN_SIGNAL.send(app, note="public")
        return "public"

    @app.post("/out")
    def sign_out() -> str:
        logout_user()
        return "out"

    @app.post("/about/<user_id>")
    @login_required
    def about(user_id: str) -> str:
        LOGIN_SIGNAL.send(app, user=users[user_id])
        return "ok"

    app.config["loads"] = loads
    return bridged


class TestUserId:
    def test_a_loaded_user_is_on_the_request_s_events(self, make_bridged: MakeBridged) -> None:
        """Once Flask-Login loaded the user (here: login_required), the request's events carry
        `user.id`."""
        users = {"7": FakeUser("7")}
        bridged = login_app(make_bridged, users)
        bridged.client.post("/in/7")
        bridged.client.get("/private")
        private = [e for e in bridged.events() if e.get("url.path") == "/private"]
        assert {"7"} == {event["user.id"] for event in private}
        assert 2 == len(private)

    def test_no_user_is_loaded_for_it(self, make_bridged: MakeBridged) -> None:
        """A request that never asked for the user gets no `user.id`, and no user load."""
        users = {"7": FakeUser("7")}
        bridged = login_app(make_bridged, users)
        bridged.client.post("/in/7")
        loads_before = list(bridged.app.config["loads"])
        bridged.client.get("/public")
        public = [e for e in bridged.events() if e.get("url.path") == "/public"]
        assert all("user.id" not in event for event in public)
        assert loads_before == bridged.app.config["loads"]

    def test_the_signal_s_own_user_wins(self, make_bridged: MakeBridged) -> None:
        """Logged in as 7, an event about user 9 (`user=` argument) keeps 9; the request's
        other events carry 7. One `user.id` per line."""
        users = {"7": FakeUser("7"), "9": FakeUser("9")}
        bridged = login_app(make_bridged, users)
        bridged.client.post("/in/7")
        bridged.client.post("/about/9")
        about = {e["event"]: e for e in bridged.events() if e.get("url.path") == "/about/9"}
        assert ("9", "7") == (about["user-login"]["user.id"], about["request.finished"]["user.id"])
        assert all(line.count(b'"user.id"') <= 1 for line in bridged.path.read_bytes().splitlines())

    def test_it_can_be_switched_off(self, make_bridged: MakeBridged) -> None:
        """`log_user_id = false`: no `user.id` from Flask-Login."""
        users = {"7": FakeUser("7")}
        bridged = login_app(make_bridged, users, BRIDGE_LOG_USER_ID=False)
        bridged.client.post("/in/7")
        bridged.client.get("/private")
        assert all("user.id" not in event for event in bridged.events())

    def test_an_expired_orm_user_is_left_alone(self, make_bridged: MakeBridged) -> None:
        """A SQLAlchemy instance whose attributes expired would query the database to answer
        `get_id()`: the bridge does not ask."""
        users = {"7": FakeUser("7", expired=True)}
        bridged = login_app(make_bridged, users)
        bridged.client.post("/in/7")
        calls_before = users["7"].calls
        bridged.client.get("/private")
        private = [e for e in bridged.events() if e.get("url.path") == "/private"]
        assert all("user.id" not in event for event in private)
        assert calls_before == users["7"].calls

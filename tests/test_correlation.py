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

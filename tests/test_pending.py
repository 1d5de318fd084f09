"""A request's events are captured on its thread and written once, when the request ends.

Driven through real Flask apps (test client and raw WSGI calls) with a real file sink; the
`submit_many` spies count how many times a sink was handed lines.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask, current_app, g, request
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder

import bridge.eventlines
from bridge import SignalBridge, capture_events
from bridge.eventlines import PROTECTED_KEYS, EventLines
from bridge.events import HOST_NAME
from bridge.pending import MAX_EVENTS, current, ship
from bridge.processors import LineEncoder, MakeJsonSafe
from bridge.redaction import SensitiveKeys
from tests.conftest import LOGIN_SIGNAL, BridgedApp, read_events
from tests.forks import run_in_child

MakeBridged = Callable[..., BridgedApp]


def spy_on_submits(bridged: BridgedApp) -> list[list[bytes]]:
    """Every `submit_many` call the app's first sink gets, as the list of lines it got."""
    sink: Any = bridged.bridge.emitter().sinks[0]
    calls: list[list[bytes]] = []
    real = sink.submit_many

    def spy(lines: list[bytes]) -> int:
        calls.append(list(lines))
        return int(real(lines))

    sink.submit_many = spy
    return calls


class TestOneWritePerRequest:
    def test_three_events_reach_the_sink_in_one_submit(self, make_bridged: MakeBridged) -> None:
        """A request's events are handed to a sink together: one `submit_many` per request."""
        bridged = make_bridged(signals=["default", "user-login"])
        calls = spy_on_submits(bridged)
        assert 200 == bridged.client.post("/login").status_code
        assert 1 == len(calls)
        assert ["user-login", "message.flashed", "request.finished"] == [
            orjson.loads(line)["event"] for line in calls[0]
        ]

    def test_events_are_written_before_the_app_returns_the_response(
        self, make_bridged: MakeBridged
    ) -> None:
        """When the WSGI call returns (before the server reads a byte of the body) every event
        of the request is in the file."""
        bridged = make_bridged(signals=["default", "user-login"])
        environ = EnvironBuilder(path="/login", method="POST").get_environ()
        body = bridged.app(environ, lambda status, headers, exc_info=None: None)
        seen_before_body = [event["event"] for event in read_events(bridged.path)]
        list(body)
        assert ["user-login", "message.flashed", "request.finished"] == seen_before_body

    def test_nothing_of_the_request_is_written_while_it_runs(
        self, make_bridged: MakeBridged
    ) -> None:
        """Inside the view, the event just captured is not in the file yet (it is written,
        with the rest, when the request ends)."""
        bridged = make_bridged(signals=["user-login"])
        seen: list[int] = []

        @bridged.app.route("/count")
        def count() -> str:
            LOGIN_SIGNAL.send(current_app._get_current_object(), user_id=1)
            seen.append(len(read_events(bridged.path)))
            return "ok"

        bridged.client.get("/count")
        assert [0] == seen
        assert 1 == len(bridged.events())

    def test_events_keep_their_capture_times_and_order(self, make_bridged: MakeBridged) -> None:
        """Timestamps are the moments of capture, and ids sort in capture order."""
        bridged = make_bridged(signals=["builtin", "user-login"])
        bridged.client.post("/login")
        events = bridged.events()
        assert len(events) >= 8
        assert [e["timestamp"] for e in events] == sorted(e["timestamp"] for e in events)
        assert [e["event_id"] for e in events] == sorted(e["event_id"] for e in events)
        assert len({e["event_id"] for e in events}) == len(events)

    def test_a_request_sending_many_signals_ships_them_in_rounds(
        self, make_bridged: MakeBridged
    ) -> None:
        """A list never holds more than MAX_EVENTS: a request sending 300 signals is written
        in rounds, every event once, in order."""
        bridged = make_bridged(signals=["user-login"])
        calls = spy_on_submits(bridged)

        @bridged.app.route("/many")
        def many() -> str:
            for number in range(300):
                LOGIN_SIGNAL.send(current_app._get_current_object(), number=number)
            return "ok"

        bridged.client.get("/many")
        assert all(len(lines) <= MAX_EVENTS for lines in calls)
        assert list(range(300)) == [event["number"] for event in bridged.events()]

    def test_the_request_of_a_propagated_exception_still_writes_its_events(
        self, make_bridged: MakeBridged
    ) -> None:
        """With PROPAGATE_EXCEPTIONS the exception leaves the WSGI call; the request's events
        (the exception's among them) are written all the same."""
        bridged = make_bridged(signals=["default", "user-login"], PROPAGATE_EXCEPTIONS=True)

        @bridged.app.route("/fail")
        def fail() -> str:
            LOGIN_SIGNAL.send(current_app._get_current_object(), user_id=3)
            raise RuntimeError("late failure")

        with pytest.raises(RuntimeError):
            bridged.client.get("/fail")
        assert ["user-login", "request.exception"] == [e["event"] for e in bridged.events()]


class TestWhatARequestSees:
    def test_flush_inside_the_view_writes_the_events_so_far(
        self, make_bridged: MakeBridged
    ) -> None:
        """`flush()` inside a request sees the request's events captured so far, as before."""
        bridged = make_bridged(signals=["user-login"])
        seen: list[list[str]] = []

        @bridged.app.route("/audit")
        def audit() -> str:
            LOGIN_SIGNAL.send(current_app._get_current_object(), user_id=5)
            assert bridged.bridge.flush(timeout=5.0)
            seen.append([event["event"] for event in read_events(bridged.path)])
            return "ok"

        bridged.client.get("/audit")
        assert [["user-login"]] == seen
        assert 1 == len(bridged.events())

    def test_capture_events_sees_what_the_sink_got(self, make_bridged: MakeBridged) -> None:
        """`capture_events()` gets the same events, as dicts, as the file gets as lines."""
        bridged = make_bridged(signals=["default", "user-login"])
        with capture_events(bridged.bridge) as captured:
            bridged.client.post("/login")
        assert bridged.events() == captured

    def test_user_processors_run_inside_the_request(self, tmp_path: Path) -> None:
        """A processor may read the request and `g`: it runs when the event is captured."""
        path = tmp_path / "events.jsonl"
        app = Flask("processors")
        app.config["BRIDGE_SIGNALS"] = ["user-login"]
        app.config["BRIDGE_SINKS"] = [{"type": "file", "path": str(path)}]

        def add_tenant(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
            event["tenant"] = g.tenant
            event["path_seen"] = request.path
            return event

        bridge = SignalBridge(app, processors=[add_tenant])

        @app.route("/t")
        def tenant() -> str:
            g.tenant = "acme"
            LOGIN_SIGNAL.send(app, user_id=1)
            g.tenant = "changed after the send"
            return "ok"

        try:
            app.test_client().get("/t")
            assert bridge.flush(5.0)
            [event] = read_events(path)
            assert ("acme", "/t") == (event["tenant"], event["path_seen"])
        finally:
            bridge.close(5.0)

    def test_an_exception_argument_is_scrubbed_of_its_request_secrets(
        self, make_bridged: MakeBridged
    ) -> None:
        """An exception passed as a signal argument is made safe when the request is over,
        and its text still loses the request's sensitive values."""
        bridged = make_bridged(signals=["user-login"])

        @bridged.app.route("/reset")
        def reset() -> str:
            token = request.args["token"]
            LOGIN_SIGNAL.send(
                current_app._get_current_object(), error=ValueError(f"bad token {token}")
            )
            return "ok"

        bridged.client.get("/reset?token=s3cr3t-value")
        raw = bridged.path.read_bytes()
        assert b"bad token" in raw
        assert b"s3cr3t-value" not in raw


class TestOtherThreadsAndProcesses:
    def test_a_thread_that_inherited_the_context_emits_at_once(
        self, make_bridged: MakeBridged
    ) -> None:
        """A thread started with the request's context (copy_context) does not append to the
        request's list (it may outlive it): its event is written on its own."""
        bridged = make_bridged(signals=["user-login"])
        app = bridged.app
        done = threading.Event()

        @app.route("/spawn")
        def spawn() -> str:
            context = contextvars.copy_context()

            def later() -> None:
                assert current() is None  # the request's list is not this thread's
                LOGIN_SIGNAL.send(app, user_id=9)
                done.set()

            thread = threading.Thread(target=context.run, args=(later,))
            thread.start()
            thread.join(10.0)
            return "ok"

        bridged.client.get("/spawn")
        assert done.is_set()
        assert [9] == [event["user_id"] for event in bridged.events()]

    def test_an_async_view_s_events_are_written(self, make_bridged: MakeBridged) -> None:
        """An async view runs on asgiref's thread: its events are written, none lost."""
        bridged = make_bridged(signals=["default", "user-login"])
        app = bridged.app

        @app.route("/async")
        async def async_view() -> str:
            LOGIN_SIGNAL.send(app, user_id=11)
            return "ok"

        assert 200 == bridged.client.get("/async").status_code
        events = bridged.events()
        assert {"user-login", "request.finished"} == {event["event"] for event in events}

    def test_a_child_forked_in_a_request_never_ships_the_parent_s_events(
        self, make_bridged: MakeBridged
    ) -> None:
        """A process forked inside a request inherits its list; shipping it there writes
        nothing (the parent writes them), so no event is written twice."""
        bridged = make_bridged(signals=["user-login"])
        app = bridged.app
        results: list[Any] = []

        @app.route("/fork")
        def fork() -> str:
            LOGIN_SIGNAL.send(app, user_id=21)

            def in_child() -> int:
                pending = current()
                assert pending is not None
                ship(pending)
                return len(read_events(bridged.path))

            results.append(run_in_child(in_child, deadline=20.0))
            return "ok"

        bridged.client.get("/fork")
        assert [0] == results
        assert [21] == [event["user_id"] for event in bridged.events()]


ENVELOPE = {"service.name": "svc", "host.name": HOST_NAME, "process.pid": os.getpid()}
STAMP = ("2026-12-07T02:00:00.123456Z", "019af232-b200-7005-a8a1-4587aefdffe7")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
# An event's own keys never take an envelope or request-context name (the emitter renames such
# arguments `args.<key>`, and the bridge's fields use none): the splice's precondition.
own_fields = st.dictionaries(
    st.text(min_size=1, max_size=12).filter(lambda key: key not in PROTECTED_KEYS),
    json_values,
    max_size=6,
)


class TestSplicedLines:
    @settings(max_examples=200, deadline=None)
    @given(
        own=own_fields,
        context=st.dictionaries(st.sampled_from(["request_id", "url.path"]), st.text(max_size=8)),
        names=st.tuples(
            st.text(max_size=10), st.text(max_size=10), st.sampled_from(["info", "error"])
        ),
    )
    def test_a_spliced_line_is_the_dict_s_encoding(
        self, own: dict[str, Any], context: dict[str, Any], names: tuple[str, str, str]
    ) -> None:
        """Byte for byte what orjson gives for the whole event dict, in the same key order."""
        signal, event, level = names
        lines = EventLines("svc", 1 << 20, MakeJsonSafe(SensitiveKeys(()), 16384))
        real = bridge.eventlines.timestamp_and_id
        bridge.eventlines.timestamp_and_id = lambda now_ns: STAMP  # type: ignore[assignment]
        try:
            line = lines.line(0, signal, event, level, own, lines.context_fragment(context))
        finally:
            bridge.eventlines.timestamp_and_id = real
        whole = {
            "timestamp": STAMP[0],
            "level": level,
            "event": event,
            "signal": signal,
            "event_id": STAMP[1],
            **ENVELOPE,
            **context,
            **own,
        }
        assert orjson.dumps(whole, option=LineEncoder.OPTIONS) == line

    def test_a_line_over_the_limit_is_left_to_the_encoder(self) -> None:
        """Too long to splice within `max_line_bytes`: None, and the dict way shrinks it."""
        lines = EventLines("svc", 300, MakeJsonSafe(SensitiveKeys(()), 16384))
        assert None is lines.line(0, "s", "e", "info", {"big": "x" * 400}, b"")

    def test_a_value_orjson_refuses_is_left_to_the_encoder(self) -> None:
        """An int beyond 64 bits in a field: None, so the safe walk can turn it into text."""
        lines = EventLines("svc", 1 << 20, MakeJsonSafe(SensitiveKeys(()), 16384))
        assert None is lines.line(0, "s", "e", "info", {"huge": 2**70}, b"")

    def test_an_oversized_event_of_a_request_is_still_one_valid_line(
        self, make_bridged: MakeBridged
    ) -> None:
        """An event too large for the splice goes the dict way: shrunk, marked, one line."""
        bridged = make_bridged(signals=["user-login"], BRIDGE_MAX_LINE_BYTES=2048)
        app = bridged.app

        @app.route("/big")
        def big() -> str:
            LOGIN_SIGNAL.send(app, user_id=1, **{f"note{i}": "n" * 500 for i in range(20)})
            return "ok"

        bridged.client.get("/big")
        [event] = bridged.events()
        assert event["bridge.truncated"] is True
        assert 1 == event["user_id"]
        assert len(bridged.path.read_bytes()) <= 2048


class TestOutsideARequest:
    def test_a_script_s_event_is_written_at_once(self, make_bridged: MakeBridged) -> None:
        """Outside any request there is no list: the event is in the file when send returns."""
        bridged = make_bridged(signals=["user-login"])
        with bridged.app.app_context():
            LOGIN_SIGNAL.send(bridged.app, user_id=4)
            assert [4] == [event["user_id"] for event in read_events(bridged.path)]


plain_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=30),
)


class TestPlainArguments:
    @settings(max_examples=200, deadline=None)
    @given(arguments=st.dictionaries(st.text(min_size=1, max_size=20), plain_values, max_size=8))
    def test_arguments_passed_as_they_are_are_what_the_walk_gives(
        self, arguments: dict[str, Any]
    ) -> None:
        """Whenever `plain` lets arguments through untouched, the safe walk would have left
        them equal (sensitive keys never pass: they are redacted by the walk)."""
        make_safe = MakeJsonSafe(SensitiveKeys(("password", "token")), 16384)
        if make_safe.plain(arguments) is not None:
            assert make_safe.convert_mapping(arguments) == arguments

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("x" * 20_000, "x" * 16384 + "...[truncated]"),
            ("bad \ud800 text", "bad \ufffd text"),
            (2**70, str(2**70)),
        ],
        ids=["string over the limit", "lone surrogate", "int beyond 64 bits"],
    )
    def test_what_only_the_walk_can_fix_is_still_fixed_in_a_request(
        self, make_bridged: MakeBridged, value: Any, expected: str
    ) -> None:
        """A plain-looking argument the encoder or the length check refuses goes the walk:
        cut, its surrogate replaced, its huge int written as text."""
        bridged = make_bridged(signals=["user-login"])
        app = bridged.app

        @app.route("/odd")
        def odd() -> str:
            LOGIN_SIGNAL.send(app, note=value, user_id=2)
            return "ok"

        bridged.client.get("/odd")
        [event] = bridged.events()
        assert expected == event["note"]
        assert 2 == event["user_id"]

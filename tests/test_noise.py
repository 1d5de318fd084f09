"""Noise control as configuration, through real apps: excluded paths, a level floor, sampling
decided once per request, errors and logins never sampled away, identical exceptions' stack
traces rate-limited and counted."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import pytest
from flask import Response, current_app

from bridge import ConfigError
from bridge.config import load_settings
from bridge.noisesettings import DEFAULT_ALWAYS_KEEP, ExceptionRate, SampleRule
from tests.conftest import LOGIN_SIGNAL, BridgedApp

MakeBridged = Callable[..., BridgedApp]


def add_routes(bridged: BridgedApp) -> None:
    app = bridged.app

    @app.route("/healthz")
    def healthz() -> str:
        LOGIN_SIGNAL.send(current_app._get_current_object(), user_id=1)
        logging.getLogger("noise.test").warning("health checked")
        return "ok"

    @app.route("/note")
    def note() -> str:
        logging.getLogger("noise.test").info("noted")
        logging.getLogger("noise.test").warning("careful")
        return "ok"

    @app.route("/sign-in")
    def sign_in() -> str:
        LOGIN_SIGNAL.send(current_app._get_current_object(), user_id=7)
        return "ok"


def by_request(events: list[dict[str, Any]]) -> list[list[str]]:
    """Event names per request: a request's events are written together, in order, from
    its `appcontext.pushed` (sent before the request context, so without `request_id`)."""
    grouped: list[list[str]] = []
    for event in events:
        if event["event"] == "appcontext.pushed" or not grouped:
            grouped.append([])
        grouped[-1].append(event["event"])
    ids = [{e["request_id"] for e in events if "request_id" in e}]
    assert len(grouped) == len(ids[0])
    return grouped


def noise_of(bridged: BridgedApp) -> Any:
    return bridged.bridge.emitter().noise


class TestExcludePaths:
    def test_an_excluded_path_writes_no_event(self, make_bridged: MakeBridged) -> None:
        """/healthz writes nothing at all: its signals and log records are not captured."""
        bridged = make_bridged(
            signals=["builtin", "user-login"],
            BRIDGE_EXCLUDE_PATHS=["/healthz", "/static/*"],
            BRIDGE_LOGGERS=["noise.test"],
        )
        add_routes(bridged)
        assert 200 == bridged.client.get("/healthz").status_code
        assert [] == bridged.events()
        assert 0 < bridged.bridge.stats()["suppressed"]["excluded"]

    def test_a_glob_excludes_a_whole_tree(self, make_bridged: MakeBridged) -> None:
        """`/static/*` excludes every path under /static/, and other paths are written."""
        bridged = make_bridged(BRIDGE_EXCLUDE_PATHS=["/static/*"])
        bridged.client.get("/static/css/site.css")
        bridged.client.get("/items/3")
        assert ["/items/3"] == [event["url.path"] for event in bridged.events()]

    def test_a_path_is_not_a_prefix(self, make_bridged: MakeBridged) -> None:
        """ "/healthz" excludes that path only, not /healthz-report."""
        bridged = make_bridged(BRIDGE_EXCLUDE_PATHS=["/healthz"])
        bridged.client.get("/healthz-report")
        assert ["/healthz-report"] == [event["url.path"] for event in bridged.events()]

    def test_a_request_context_pushed_by_hand(self, make_bridged: MakeBridged) -> None:
        """Without the WSGI wrapper (a request context pushed by hand) the path still rules."""
        bridged = make_bridged(signals=["user-login"], BRIDGE_EXCLUDE_PATHS=["/healthz"])
        with bridged.app.test_request_context("/healthz"):
            LOGIN_SIGNAL.send(bridged.app, user_id=1)
        with bridged.app.test_request_context("/login"):
            LOGIN_SIGNAL.send(bridged.app, user_id=2)
        assert ["/login"] == [event["url.path"] for event in bridged.events()]

    def test_nothing_configured_costs_no_policy(self, make_bridged: MakeBridged) -> None:
        """Without noise keys the emitter has no policy and stats() has no `suppressed`."""
        bridged = make_bridged()
        assert noise_of(bridged) is None
        assert "suppressed" not in bridged.bridge.stats()

    def test_a_streamed_response_under_a_prefix_is_excluded(
        self, make_bridged: MakeBridged
    ) -> None:
        """An app mounted under /api: a streamed excluded path writes nothing, as a plain one
        (its request.finished, written after the request, follows the request's answer)."""
        bridged = make_bridged(BRIDGE_EXCLUDE_PATHS=["/stream", "/items/*"])

        @bridged.app.route("/stream")
        def stream() -> Response:
            return Response(iter([b"a", b"b"]))

        mounted = {"SCRIPT_NAME": "/api"}
        bridged.client.get("/items/3", environ_overrides=mounted)
        assert b"ab" == bridged.client.get("/stream", environ_overrides=mounted).get_data()
        assert [] == [(event["event"], event["url.path"]) for event in bridged.events()]


class TestMinLevel:
    def test_events_below_the_floor_are_dropped(self, make_bridged: MakeBridged) -> None:
        """With min_level = "warning", a 200's request.finished is dropped, a 404's kept."""
        bridged = make_bridged(BRIDGE_MIN_LEVEL="warning")
        bridged.client.get("/")
        bridged.client.get("/missing")
        events = bridged.events()
        assert [("request.finished", 404)] == [
            (event["event"], event["http.response.status_code"]) for event in events
        ]
        assert 1 == bridged.bridge.stats()["suppressed"]["level"]

    def test_log_records_below_the_floor_are_dropped(self, make_bridged: MakeBridged) -> None:
        """A logger's info record is dropped under min_level = "warning", its warning kept."""
        bridged = make_bridged(
            signals=["got_request_exception"],
            BRIDGE_MIN_LEVEL="warning",
            BRIDGE_LOGGERS=["noise.test"],
        )
        add_routes(bridged)
        bridged.client.get("/note")
        assert ["careful"] == [event["event"] for event in bridged.events()]

    def test_errors_pass_an_error_floor(self, make_bridged: MakeBridged) -> None:
        """With min_level = "error", a failing request still writes its exception and 500."""
        bridged = make_bridged(BRIDGE_MIN_LEVEL="error")
        bridged.client.get("/boom")
        assert ["request.exception", "request.finished"] == [
            event["event"] for event in bridged.events()
        ]


def sampled_app(make_bridged: MakeBridged, rate: float, **config: Any) -> BridgedApp:
    rule = {"event": "request.finished", "status_below": 400, "rate": rate}
    bridged = make_bridged(signals=["builtin", "user-login"], BRIDGE_SAMPLE=[rule], **config)
    add_routes(bridged)
    return bridged


class TestSampling:
    def test_rate_zero_drops_the_whole_request(self, make_bridged: MakeBridged) -> None:
        """Rate 0 for request.finished < 400: the request writes none of its events."""
        bridged = sampled_app(make_bridged, 0.0)
        bridged.client.get("/items/1")
        assert [] == bridged.events()
        assert 0 < bridged.bridge.stats()["suppressed"]["sampled"]

    def test_rate_one_keeps_the_whole_request(self, make_bridged: MakeBridged) -> None:
        """Rate 1: every event of the request is written."""
        bridged = sampled_app(make_bridged, 1.0)
        bridged.client.get("/items/1")
        names = [event["event"] for event in bridged.events()]
        assert "request.started" in names and "appcontext.popped" in names
        assert 0 == bridged.bridge.stats()["suppressed"]["sampled"]

    def test_a_rule_matches_only_its_status_range(self, make_bridged: MakeBridged) -> None:
        """A 404 is outside `status_below = 400`: rate 0 does not touch it."""
        bridged = sampled_app(make_bridged, 0.0)
        bridged.client.get("/missing")
        assert 404 == bridged.named("request.finished")[0]["http.response.status_code"]

    def test_half_of_the_requests_each_whole_or_nothing(self, make_bridged: MakeBridged) -> None:
        """Seeded rate 0.5 over 200 requests: about half are kept, each with ALL its events
        (every event of a rate-1 request), the others with none, and the count of sampled
        events is exactly what the dropped requests held."""
        whole = sampled_app(make_bridged, 1.0)
        whole.client.get("/items/1")
        full = sorted(by_request(whole.events())[0])
        bridged = sampled_app(make_bridged, 0.5)
        noise_of(bridged).random = random.Random(20261207).random
        for number in range(200):
            bridged.client.get(f"/items/{number}")
        grouped = by_request(bridged.events())
        assert 60 < len(grouped) < 140
        assert all(full == sorted(names) for names in grouped)
        dropped = (200 - len(grouped)) * len(full)
        assert dropped == bridged.bridge.stats()["suppressed"]["sampled"]

    def test_the_same_seed_gives_the_same_requests(self, make_bridged: MakeBridged) -> None:
        """An injected random source makes sampling reproducible."""
        kept = []
        for _ in range(2):
            bridged = sampled_app(make_bridged, 0.5)
            noise_of(bridged).random = random.Random(7).random
            for number in range(20):
                bridged.client.get(f"/items/{number}")
            kept.append([event["url.path"] for event in bridged.named("request.finished")])
        assert kept[0] == kept[1]

    def test_errors_are_never_sampled_away(self, make_bridged: MakeBridged) -> None:
        """A rule keeping none of any request still writes a failing request whole."""
        bridged = make_bridged(BRIDGE_SAMPLE=[{"rate": 0}])
        bridged.client.get("/boom")
        bridged.client.get("/")
        assert ["request.exception", "request.finished"] == [
            event["event"] for event in bridged.events()
        ]

    def test_logins_are_never_sampled_away(self, make_bridged: MakeBridged) -> None:
        """A request with a `user-login` event (an always_keep name) is written whole."""
        bridged = sampled_app(make_bridged, 0.0)
        bridged.client.get("/sign-in")
        names = [event["event"] for event in bridged.events()]
        assert "user-login" in names and "request.finished" in names

    def test_always_keep_is_configurable(self, make_bridged: MakeBridged) -> None:
        """With always_keep = [], a login request is sampled like any other."""
        bridged = sampled_app(make_bridged, 0.0, BRIDGE_ALWAYS_KEEP=[])
        bridged.client.get("/sign-in")
        assert [] == bridged.events()

    def test_a_path_rule(self, make_bridged: MakeBridged) -> None:
        """A rule with `path` samples only requests under it."""
        bridged = make_bridged(BRIDGE_SAMPLE=[{"path": "/items/*", "rate": 0}])
        bridged.client.get("/items/1")
        bridged.client.get("/")
        assert ["/"] == [event["url.path"] for event in bridged.events()]

    def test_outside_a_request_each_event_is_decided(self, make_bridged: MakeBridged) -> None:
        """A custom signal sent outside any request is sampled on its own: rate 0 drops it,
        unless its name is an always_keep one."""
        bridged = make_bridged(
            signals=["user-login"], BRIDGE_SAMPLE=[{"rate": 0}], BRIDGE_ALWAYS_KEEP=[]
        )
        LOGIN_SIGNAL.send(bridged.app, user_id=1)
        assert [] == bridged.events()
        assert 1 == bridged.bridge.stats()["suppressed"]["sampled"]


class TestExceptionRate:
    def test_stack_traces_past_the_limit_are_dropped_and_counted(
        self, make_bridged: MakeBridged
    ) -> None:
        """With max = 2, the third identical exception is written without its stack trace."""
        bridged = make_bridged(BRIDGE_EXCEPTION_RATE={"max": 2, "per_seconds": 60})
        for _ in range(4):
            bridged.client.get("/boom")
        exceptions = bridged.named("request.exception")
        assert [True, True, False, False] == [
            "exception.stacktrace" in event for event in exceptions
        ]
        assert {"RuntimeError"} == {event["exception.type"] for event in exceptions}
        assert 2 == bridged.bridge.stats()["suppressed"]["stacktrace"]

    def test_the_next_window_says_how_many_were_suppressed(self, make_bridged: MakeBridged) -> None:
        """Once the interval is over, the next stack trace carries suppressed_since_last."""
        bridged = make_bridged(BRIDGE_EXCEPTION_RATE={"max": 1, "per_seconds": 60})
        for _ in range(3):
            bridged.client.get("/boom")
        noise = noise_of(bridged)
        for seen in noise._seen.values():  # the interval is over
            seen[0] -= 61
        bridged.client.get("/boom")
        last = bridged.named("request.exception")[-1]
        assert "exception.stacktrace" in last
        assert 2 == last["exception.suppressed_since_last"]


class TestConfig:
    def test_keys_are_read_and_defaulted(self) -> None:
        """Every noise key parses to typed settings; the defaults control nothing."""
        settings = load_settings(
            {
                "BRIDGE_EXCLUDE_PATHS": ["/healthz"],
                "BRIDGE_MIN_LEVEL": "info",
                "BRIDGE_SAMPLE": [{"event": "request.finished", "status_below": 400, "rate": 0.1}],
                "BRIDGE_EXCEPTION_RATE": {"max": 10, "per_seconds": 60},
            },
            {},
        )
        assert ("/healthz",) == settings.exclude_paths
        assert "info" == settings.min_level
        assert (SampleRule(0.1, "request.finished", None, None, 400),) == settings.sample
        assert ExceptionRate(10, 60.0) == settings.exception_rate
        assert DEFAULT_ALWAYS_KEEP == settings.always_keep
        defaults = load_settings({}, {})
        assert ((), "debug", (), None) == (
            defaults.exclude_paths,
            defaults.min_level,
            defaults.sample,
            defaults.exception_rate,
        )

    @pytest.mark.parametrize(
        ("config", "key", "value", "expected"),
        [
            ({"BRIDGE_MIN_LEVEL": "verbose"}, "min_level", "verbose", "one of 'debug'"),
            ({"BRIDGE_EXCLUDE_PATHS": ["healthz"]}, "exclude_paths", ["healthz"], 'with "/"'),
            ({"BRIDGE_SAMPLE": [{"rate": 2}]}, "sample[0].rate", 2, "from 0 (keep none)"),
            ({"BRIDGE_SAMPLE": [{"event": "x"}]}, "sample[0].rate", None, "needs `rate`"),
            ({"BRIDGE_SAMPLE": [{"rate": 1, "odds": 1}]}, "sample[0].odds", 1, "a known key"),
            ({"BRIDGE_SAMPLE": {"rate": 1}}, "sample", {"rate": 1}, "[[sample]]"),
            (
                {"BRIDGE_SAMPLE": [{"rate": 1, "status_from": 500, "status_below": 400}]},
                "sample[0].status_below",
                400,
                "above status_from",
            ),
            (
                {"BRIDGE_SAMPLE": [{"rate": 1, "status_below": 1000}]},
                "sample[0].status_below",
                1000,
                "from 100 to 600",
            ),
            (
                {"BRIDGE_EXCEPTION_RATE": {"max": 0, "per_seconds": 60}},
                "exception_rate.max",
                0,
                ">= 1",
            ),
            (
                {"BRIDGE_EXCEPTION_RATE": {"max": 10}},
                "exception_rate",
                {"max": 10},
                "per_seconds",
            ),
            ({"BRIDGE_ALWAYS_KEEP": "user-login"}, "always_keep", "user-login", "list"),
        ],
    )
    def test_mistakes_name_key_value_and_expectation(
        self, config: dict[str, Any], key: str, value: Any, expected: str
    ) -> None:
        """A wrong noise key fails init with its key, its value and what was expected."""
        with pytest.raises(ConfigError) as raised:
            load_settings(config, {})
        problems = [(p.key, p.value) for p in raised.value.problems]
        assert [(key, value)] == problems
        assert expected in raised.value.problems[0].expected

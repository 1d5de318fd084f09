"""bridge.signals: the catalogue of Flask's built-in signals, Flask-Login's event names, and
custom signals resolved by blinker name or import path, driven through real Flask apps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import blinker
import flask.signals
import pytest
from flask import Flask, current_app, render_template
from jinja2 import DictLoader

from bridge.errors import ConfigError, ConfigProblem
from bridge.signals import (
    BUILTIN_SIGNALS,
    DEFAULT_SIGNALS,
    expand_signal_names,
    resolve_signals,
)
from tests.conftest import BridgedApp
from tests.contract import ENVELOPE, PROTECTED_REQUEST_KEYS

Make = Callable[..., BridgedApp]

MAX_LINE = 16 * 1024
STACK = "<a traceback>"  # stands for an `exception.stacktrace` that starts with "Traceback"
DURATION = "<milliseconds>"  # stands for a `duration_ms` that is a non-negative float


def own_fields(event: dict[str, Any]) -> dict[str, Any]:
    """What the signal added: the event without its envelope and request context, with the
    values that change from run to run replaced by what they stand for."""
    own = {k: v for k, v in event.items() if k not in ENVELOPE | PROTECTED_REQUEST_KEYS}
    if str(own.get("exception.stacktrace", "")).startswith("Traceback"):
        own["exception.stacktrace"] = STACK
    duration = own.get("duration_ms")
    if isinstance(duration, float) and duration >= 0:
        own["duration_ms"] = DURATION
    return own


def app_object() -> Flask:
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    return app


KABOOM = {
    "exception.type": "RuntimeError",
    "exception.message": "kaboom",
    "exception.stacktrace": STACK,
}


@dataclass(frozen=True)
class Builtin:
    """One built-in signal, the request that sends it, and the event it must become."""

    name: str
    method: str
    path: str
    event: str
    signal: str
    level: str
    fields: dict[str, Any] = field(default_factory=dict)
    in_request: bool = True  # the event carries the request context


BUILTINS = [
    Builtin("request_started", "GET", "/", "request.started", "request-started", "info"),
    Builtin(
        "request_finished",
        "GET",
        "/items/42",
        "request.finished",
        "request-finished",
        "info",
        {"http.response.status_code": 200, "http.response.body.size": 2, "duration_ms": DURATION},
    ),
    Builtin(
        "got_request_exception",
        "GET",
        "/boom",
        "request.exception",
        "got-request-exception",
        "error",
        KABOOM,
    ),
    Builtin(
        "request_tearing_down",
        "GET",
        "/boom",
        "request.teardown",
        "request-tearing-down",
        "info",
        KABOOM,
    ),
    Builtin(
        "appcontext_pushed",
        "GET",
        "/",
        "appcontext.pushed",
        "appcontext-pushed",
        "debug",
        in_request=False,
    ),
    Builtin(
        "appcontext_popped",
        "GET",
        "/",
        "appcontext.popped",
        "appcontext-popped",
        "debug",
        in_request=False,
    ),
    Builtin(
        "appcontext_tearing_down",
        "GET",
        "/boom",
        "appcontext.teardown",
        "appcontext-tearing-down",
        "debug",
        KABOOM,
        in_request=False,
    ),
    Builtin(
        "before_render_template",
        "GET",
        "/page",
        "template.rendering",
        "before-render-template",
        "debug",
        {"template.name": "page.html", "template.context_keys": ["g", "items", "request"]},
    ),
    Builtin(
        "template_rendered",
        "GET",
        "/page",
        "template.rendered",
        "template-rendered",
        "info",
        {"template.name": "page.html", "template.context_keys": ["g", "items", "request"]},
    ),
    Builtin(
        "message_flashed",
        "POST",
        "/login",
        "message.flashed",
        "message-flashed",
        "info",
        {"message": "welcome", "category": "info"},
    ),
]


def with_page(bridged: BridgedApp) -> BridgedApp:
    """Add `/page`, rendering the file template `page.html` (the shop's own is a string)."""
    bridged.app.jinja_env.loader = DictLoader({"page.html": "{{ items | length }}"})

    @bridged.app.route("/page")
    def page() -> str:
        return render_template("page.html", items=["secret-item"])

    return bridged


class TestBuiltinCatalogue:
    def test_every_flask_signal_is_catalogued(self) -> None:
        """The catalogue has exactly the signals flask.signals defines, no more, no fewer."""
        defined = {
            name
            for name, value in vars(flask.signals).items()
            if isinstance(value, blinker.NamedSignal)
        }
        assert defined == set(BUILTIN_SIGNALS)
        assert set(BUILTIN_SIGNALS) == {row.name for row in BUILTINS}

    @pytest.mark.parametrize("row", BUILTINS, ids=[row.name for row in BUILTINS])
    def test_event_level_and_fields(self, make_bridged: Make, row: Builtin) -> None:
        """Each built-in signal gives one event: its name, level, signal and exactly its fields."""
        bridged = with_page(make_bridged(signals=[row.name], BRIDGE_MAX_LINE_BYTES=MAX_LINE))
        bridged.client.open(row.path, method=row.method)
        (event,) = bridged.events()
        assert (row.event, row.level, row.signal) == (
            event["event"],
            event["level"],
            event["signal"],
        )
        assert row.fields == own_fields(event)
        assert row.in_request == (event.get("url.path") == row.path)
        assert "secret-item" not in bridged.path.read_text()

    @pytest.mark.parametrize("name", ["request_tearing_down", "appcontext_tearing_down"])
    def test_teardown_without_an_exception_has_no_exception_fields(
        self, make_bridged: Make, name: str
    ) -> None:
        """A teardown after a request that did not fail carries no exception fields."""
        bridged = make_bridged(signals=[name])
        bridged.client.get("/")
        (event,) = bridged.events()
        assert {} == own_fields(event)

    def test_string_template_has_no_name(self, make_bridged: Make) -> None:
        """A template rendered from a string has no name: only its context keys are given."""
        bridged = make_bridged(signals=["template_rendered"])
        bridged.client.post("/login")
        (event,) = bridged.events()
        assert ["template.context_keys"] == list(own_fields(event))


class TestExpandSignalNames:
    @pytest.mark.parametrize(
        ("names", "expanded"),
        [
            ([], ()),
            (["default"], DEFAULT_SIGNALS),
            (["builtin"], tuple(BUILTIN_SIGNALS)),
            (
                ["user-login", "default", "request_finished"],
                ("user-login", *DEFAULT_SIGNALS),
            ),
            (
                ["default", "builtin"],
                (*DEFAULT_SIGNALS, *(n for n in BUILTIN_SIGNALS if n not in DEFAULT_SIGNALS)),
            ),
            (
                ["message_flashed", "default"],
                ("message_flashed", "request_finished", "got_request_exception"),
            ),
            (["user-login", "user-login"], ("user-login",)),
        ],
        ids=[
            "nothing",
            "default",
            "builtin",
            "repeat-dropped",
            "groups-merged",
            "order-kept",
            "custom-repeat",
        ],
    )
    def test_groups_expand_in_order_without_repeats(
        self, names: list[str], expanded: tuple[str, ...]
    ) -> None:
        """Groups "default" and "builtin" stand for their signals; order kept, repeats dropped."""
        assert expanded == expand_signal_names(names)

    def test_default_is_finished_exception_and_flash(self) -> None:
        """The default set is request_finished, got_request_exception and message_flashed."""
        assert ("request_finished", "got_request_exception", "message_flashed") == DEFAULT_SIGNALS

    def test_builtin_keeps_the_catalogue_order(self) -> None:
        """Group "builtin" is the ten signals in the catalogue's order, request_started first."""
        assert [
            "request_started",
            "request_finished",
            "got_request_exception",
            "request_tearing_down",
            "appcontext_pushed",
            "appcontext_popped",
            "appcontext_tearing_down",
            "before_render_template",
            "template_rendered",
            "message_flashed",
        ] == list(expand_signal_names(["builtin"]))


ORDER = "tests.signals_fixture:order_placed"
STOCK = "tests.signals_fixture:stock_changed"


class TestEventName:
    @pytest.mark.parametrize(
        ("spec", "rename", "event"),
        [
            ("request_finished", {}, "request.finished"),
            ("request_finished", {"request_finished": "by-name"}, "by-name"),
            ("request_finished", {"request-finished": "by-blinker-name"}, "by-blinker-name"),
            ("request_finished", {"request-finished": "b", "request_finished": "a"}, "a"),
            ("request_finished", {"request.finished": "not-a-key"}, "request.finished"),
            ("user-login", {}, "user-login"),
            ("user-login", {"user-login": "auth.login"}, "auth.login"),
            (ORDER, {}, "order-placed"),
            (ORDER, {"order-placed": "by-blinker-name"}, "by-blinker-name"),
            (ORDER, {"order-placed": "b", ORDER: "a"}, "a"),
            (ORDER, {"order_placed": "not-a-key"}, "order-placed"),
            (STOCK, {}, "stock_changed"),
            (STOCK, {"stock_changed": "by-attribute"}, "by-attribute"),
            (STOCK, {STOCK: "by-path"}, "by-path"),
        ],
    )
    def test_rename_by_configured_name_then_blinker_name(
        self, spec: str, rename: dict[str, str], event: str
    ) -> None:
        """`rename` by the configured name wins over the blinker name; else the catalogue's."""
        builtins, customs = resolve_signals([spec], rename)
        assert [event] == [b.event for b in builtins] + [c.event for c in customs]

    def test_builtin_renamed_by_blinker_name_in_a_real_app(self, make_bridged: Make) -> None:
        """A built-in renamed by its blinker name is written under the new name."""
        bridged = make_bridged(
            signals=["request_started"], BRIDGE_RENAME={"request-started": "http.begin"}
        )
        bridged.client.get("/")
        assert [("http.begin", "request-started")] == [
            (e["event"], e["signal"]) for e in bridged.events()
        ]

    def test_anonymous_signal_in_a_real_app(self, make_bridged: Make) -> None:
        """A signal without a name, found by import path, is named after its attribute."""
        bridged = make_bridged(signals=[STOCK], BRIDGE_RENAME={STOCK: "stock.changed"})
        from tests.signals_fixture import stock_changed

        with bridged.app.app_context():
            stock_changed.send(sku="A-1", left=3)
        (event,) = bridged.events()
        assert ("stock.changed", "stock_changed", "A-1", 3) == (
            event["event"],
            event["signal"],
            event["sku"],
            event["left"],
        )


class TestResolveSignals:
    def test_builtins_and_customs_apart_in_order(self) -> None:
        """Built-ins and custom signals come back apart, each in the configured order."""
        from tests.conftest import LOGIN_SIGNAL
        from tests.signals_fixture import order_placed

        builtins, customs = resolve_signals(
            [ORDER, "message_flashed", "user-login", "request_started"], {}
        )
        assert ["message_flashed", "request_started"] == [spec.name for spec in builtins]
        expected = [
            (ORDER, order_placed, "order-placed"),
            ("user-login", LOGIN_SIGNAL, "user-login"),
        ]
        assert expected == [(c.spec, c.signal, c.signal_name) for c in customs]

    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            (
                "no_such_module_here:signal",
                'an importable "module.path:attribute" naming a blinker signal (import failed: '
                "No module named 'no_such_module_here')",
            ),
            (
                "tests.signals_fixture:missing",
                'an importable "module.path:attribute" naming a blinker signal '
                "(missing is nothing)",
            ),
            (
                "tests.signals_fixture:not_a_signal",
                'an importable "module.path:attribute" naming a blinker signal '
                "(not_a_signal is str)",
            ),
            (
                "template_renderd",
                'a built-in signal name, "default", "builtin", a signal already defined with '
                "blinker.signal('template_renderd') before init_app, or \"module:attribute\" "
                "(did you mean 'template_rendered'?)",
            ),
            (
                "defualt",
                'a built-in signal name, "default", "builtin", a signal already defined with '
                "blinker.signal('defualt') before init_app, or \"module:attribute\" "
                "(did you mean 'default'?)",
            ),
            (
                "zz-never-defined-zz",
                'a built-in signal name, "default", "builtin", a signal already defined with '
                "blinker.signal('zz-never-defined-zz') before init_app, or \"module:attribute\"",
            ),
        ],
        ids=["import-failed", "no-attribute", "not-a-signal", "misspelt", "group", "unknown"],
    )
    def test_a_name_that_resolves_to_nothing_is_explained(self, name: str, expected: str) -> None:
        """A name naming no signal is a ConfigError under `signals`, with what was expected."""
        with pytest.raises(ConfigError) as caught:
            resolve_signals(["request_finished", name], {})
        assert [ConfigProblem("signals", name, expected)] == caught.value.problems

    def test_an_unknown_name_is_not_created(self) -> None:
        """Looking a name up never defines it in blinker's namespace (a later send is lost)."""
        with pytest.raises(ConfigError):
            resolve_signals(["zz-looked-up-only-zz"], {})
        assert "zz-looked-up-only-zz" not in blinker.default_namespace

    def test_every_failing_name_in_one_error(self) -> None:
        """One ConfigError lists every name that fails, in order; the valid ones are not in it."""
        with pytest.raises(ConfigError) as caught:
            resolve_signals(
                ["zz-one-zz", "default", "tests.signals_fixture:missing", "user-login", "zz-two"],
                {},
            )
        assert ["zz-one-zz", "tests.signals_fixture:missing", "zz-two"] == [
            problem.value for problem in caught.value.problems
        ]
        assert {"signals"} == {problem.key for problem in caught.value.problems}


# --- Flask-Login ---------------------------------------------------------------------------------

# Every signal of flask_login.signals: (attribute, its blinker name, the event it becomes).
FLASK_LOGIN = [
    ("user_logged_in", "logged-in", "user.logged_in"),
    ("user_logged_out", "logged-out", "user.logged_out"),
    ("user_login_confirmed", "login-confirmed", "user.login_confirmed"),
    ("user_unauthorized", "unauthorized", "user.unauthorized"),
    ("user_needs_refresh", "needs-refresh", "user.needs_refresh"),
    ("user_accessed", "accessed", "user.accessed"),
    ("user_loaded_from_cookie", "loaded-from-cookie", "user.loaded_from_cookie"),
    ("user_loaded_from_request", "loaded-from-request", "user.loaded_from_request"),
    ("_user_loaded_from_header", "loaded-from-header", "user.loaded_from_header"),
    ("session_protected", "session-protected", "session.protected"),
]


@pytest.fixture
def login_signals() -> Any:
    """flask_login.signals (the tests need Flask-Login installed)."""
    return pytest.importorskip("flask_login.signals")


class TestFlaskLogin:
    def test_every_flask_login_signal_has_a_catalogue_name(self, login_signals: Any) -> None:
        """Each signal Flask-Login defines is in the table below, under its blinker name."""
        defined = {
            attribute: value.name
            for attribute, value in vars(login_signals).items()
            if isinstance(value, blinker.NamedSignal)
        }
        assert {attribute: name for attribute, name, _ in FLASK_LOGIN} == defined

    @pytest.mark.parametrize(
        ("attribute", "blinker_name", "event"), FLASK_LOGIN, ids=[row[0] for row in FLASK_LOGIN]
    )
    def test_sent_by_the_app_becomes_its_catalogue_event(
        self,
        make_bridged: Make,
        login_signals: Any,
        attribute: str,
        blinker_name: str,
        event: str,
    ) -> None:
        """Sent during a request, each Flask-Login signal is its catalogue event, level info."""
        bridged = make_bridged(signals=[f"flask_login.signals:{attribute}"])
        signal = getattr(login_signals, attribute)

        @bridged.app.route("/auth")
        def auth() -> str:
            signal.send(app_object())
            return "ok"

        bridged.client.get("/auth")
        (sent,) = bridged.events()
        assert (event, blinker_name, "info", "/auth") == (
            sent["event"],
            sent["signal"],
            sent["level"],
            sent["url.path"],
        )

    @pytest.mark.parametrize(
        ("rename", "event"),
        [
            ({"flask_login.signals:user_logged_in": "auth.in"}, "auth.in"),
            ({"logged-in": "auth.blinker"}, "auth.blinker"),
        ],
        ids=["by-path", "by-blinker-name"],
    )
    def test_rename_wins_over_the_catalogue(
        self, login_signals: Any, rename: dict[str, str], event: str
    ) -> None:
        """`rename` by import path or blinker name replaces the catalogue's name."""
        _, customs = resolve_signals(["flask_login.signals:user_logged_in"], rename)
        assert [event] == [custom.event for custom in customs]


# --- hostile payloads ----------------------------------------------------------------------------


class Unprintable(Exception):
    """An exception whose str() and repr() both raise."""

    def __str__(self) -> str:
        raise RuntimeError("str exploded")

    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")


class NoText:
    """A value whose str() and repr() both raise."""

    def __str__(self) -> str:
        raise RuntimeError("str exploded")

    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")


class NameRaises:
    """A template object whose `name` raises something else than AttributeError."""

    @property
    def name(self) -> str:
        raise RuntimeError("no name today")


def raise_unprintable() -> None:
    raise Unprintable


def raise_huge() -> None:
    raise ValueError("x" * 1_000_000)


def raise_cause_cycle() -> None:
    first, second = ValueError("first"), KeyError("second")
    first.__cause__, second.__cause__ = second, first
    raise first


def flash_unprintable() -> None:
    loop: list[Any] = []
    loop.append(loop)
    flask.signals.message_flashed.send(app_object(), message=NoText(), category=loop)


def flash_huge() -> None:
    flask.signals.message_flashed.send(app_object(), message="y" * 10_000_000, category="info")


def render_with_unprintable_key() -> None:
    context = {NoText(): 1, "items": 2}
    flask.signals.template_rendered.send(app_object(), template=None, context=context)


def render_nameless() -> None:
    flask.signals.template_rendered.send(app_object(), template=NameRaises(), context={"a": 1})


def report_a_non_exception() -> None:
    flask.signals.got_request_exception.send(app_object(), exception="not an exception")


@dataclass(frozen=True)
class Hostile:
    """A view doing something hostile to the bridge, and what the event must still say."""

    id: str
    act: Callable[[], None]
    status: int
    event: str
    fields: dict[str, Any]


HOSTILE = [
    Hostile(
        "unprintable-exception",
        raise_unprintable,
        500,
        "request.exception",
        {
            "exception.type": "tests.test_signals.Unprintable",
            "exception.message": "<Unprintable: str() failed>",
        },
    ),
    Hostile(
        "huge-exception-message",
        raise_huge,
        500,
        "request.exception",
        {"exception.type": "ValueError", "exception.message": "x" * 4096},
    ),
    Hostile(
        "exception-cause-cycle",
        raise_cause_cycle,
        500,
        "request.exception",
        {"exception.type": "ValueError", "exception.message": "first"},
    ),
    Hostile(
        "unprintable-flash-with-a-cycle",
        flash_unprintable,
        200,
        "message.flashed",
        {"message": "<tests.test_signals.NoText>", "category": ["<cycle>"]},
    ),
    Hostile(
        "ten-megabyte-flash",
        flash_huge,
        200,
        "message.flashed",
        {"category": "info"},
    ),
    Hostile(
        "unprintable-context-key",
        render_with_unprintable_key,
        200,
        "template.rendered",
        {"template.context_keys": ["<tests.test_signals.NoText>", "items"]},
    ),
    Hostile(
        "template-name-raises",
        render_nameless,
        200,
        "template.rendered",
        {"template.context_keys": ["a"]},
    ),
    Hostile(
        "exception-that-is-not-one",
        report_a_non_exception,
        200,
        "request.exception",
        {},
    ),
]


class TestHostileArguments:
    @pytest.mark.parametrize("case", HOSTILE, ids=[case.id for case in HOSTILE])
    def test_one_valid_line_and_the_request_unharmed(
        self, make_bridged: Make, case: Hostile
    ) -> None:
        """Whatever a built-in signal carries, its event is one valid line within the limit,
        no receiver fails, and the request ends as the view decided."""
        bridged = make_bridged(signals=["builtin"], BRIDGE_MAX_LINE_BYTES=MAX_LINE)

        @bridged.app.route("/hostile")
        def hostile() -> str:
            case.act()
            return "ok"

        assert case.status == bridged.client.get("/hostile").status_code
        events = bridged.named(case.event)  # read_events fails on a torn or invalid line
        assert 1 == len(events)
        (event,) = events
        assert case.fields == {key: event.get(key) for key in case.fields}
        assert "/hostile" == event["url.path"]
        assert 0 == bridged.bridge.stats()["receiver_errors"]
        assert all(len(line) < MAX_LINE for line in bridged.path.read_bytes().splitlines())

    def test_huge_flash_is_cut_with_a_marker(self, make_bridged: Make) -> None:
        """A ten-megabyte flashed message is truncated, and says so."""
        bridged = make_bridged(signals=["message_flashed"], BRIDGE_MAX_LINE_BYTES=MAX_LINE)

        @bridged.app.route("/hostile")
        def hostile() -> str:
            flash_huge()
            return "ok"

        bridged.client.get("/hostile")
        (event,) = bridged.events()
        assert event["message"].startswith("yyy")
        assert event["message"].endswith("...[truncated]")

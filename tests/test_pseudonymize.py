"""Pseudonymization as a user configures it: no raw address or e-mail anywhere in the file.

A real Flask app (Flask-Login, a custom signal, a flashed message, an exception, app.logger
with `extra`, structlog through the bridge) is driven through the test client from an IPv4
and an IPv6 client; the file the file sink wrote is then searched for the raw bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blinker
import orjson
import pytest
import structlog
from flask import Flask, current_app, flash
from flask_login import LoginManager, UserMixin, login_user
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import SignalBridge, StructlogBridge
from bridge.config import load_settings
from bridge.emitter import Emitter
from bridge.errors import ConfigError
from bridge.pseudonyms import Pseudonymizer, truncate_ip
from bridge.testing import capture_events
from tests.conftest import read_events
from tests.test_logging import ListSink

ACCOUNT = blinker.signal("account-changed")  # defined before init_app, as apps do
KEY = "pseudonym-key-one-0123456789abcdef0123"
OTHER_KEY = "pseudonym-key-two-fedcba9876543210fedc"
IPV4 = "203.0.113.77"
IPV6 = "2001:db8:85a3:1234:5678:8a2e:370:7334"
EMAIL = "Alice.Secret@Example.org"
USER_ID = "uid-ada-4242"
FIELDS = ["client.address", "user.email", "email", "user.id"]
PSEUDONYM = re.compile(r"hmac:[0-9a-f]{8}:[0-9a-f]{32}")
SIGNALS = ["default", "account-changed", "flask_login.signals:user_logged_in"]


class User(UserMixin):
    def __init__(self, uid: str) -> None:
        self.id = uid


def shop(name: str, path: Path, **config: Any) -> Flask:
    """An app whose login view sends everything a field can travel in."""
    app = Flask(name)
    app.secret_key = "test-secret"
    app.config.update(
        BRIDGE_SINKS=[{"type": "file", "path": str(path)}],
        BRIDGE_SIGNALS=SIGNALS,
        BRIDGE_LOGGERS=[name],
        **{f"BRIDGE_{key.upper()}": value for key, value in config.items()},
    )
    login_manager = LoginManager(app)
    login_manager.user_loader(User)

    @app.post("/login")
    def login() -> str:
        login_user(User(USER_ID))
        ACCOUNT.send(
            current_app._get_current_object(),
            email=EMAIL,
            user={"email": EMAIL, "plan": "pro"},
            contacts=[{"email": EMAIL.upper()}, {"email": None}],
            **{"user.email": EMAIL, "client.address": IPV4},  # the last kept as args.*
        )
        flash("welcome back", "info")
        current_app.logger.warning("signed in", extra={"email": EMAIL, "user.email": EMAIL})
        structlog.get_logger().info("signed in", email=EMAIL, user={"email": EMAIL})
        return "ok"

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("checkout failed")

    return app


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., tuple[Flask, SignalBridge, Path]]]:
    """Factory of bridged shops writing to their own file; structlog sends to the bridge."""
    structlog.configure(
        processors=[structlog.processors.add_log_level, StructlogBridge(drop=True)],
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    made: list[SignalBridge] = []

    def make(name: str = "shop", **config: Any) -> tuple[Flask, SignalBridge, Path]:
        path = tmp_path / f"{name}-{len(made)}.jsonl"
        app = shop(name, path, **config)
        bridge = SignalBridge(app)
        made.append(bridge)
        return app, bridge, path

    yield make
    for bridge in made:
        bridge.close(timeout=5.0)
    structlog.reset_defaults()


def visit(app: Flask, bridge: SignalBridge, address: str) -> None:
    """One login and one failing request from `address`."""
    client = app.test_client()
    base = {"REMOTE_ADDR": address}
    assert 200 == client.post("/login", environ_base=base).status_code
    assert 500 == client.get("/boom", environ_base=base).status_code
    assert bridge.flush(timeout=10.0)


def raw_forms(*values: str) -> list[bytes]:
    """Each value as it could be written: as typed, case-folded, and JSON-escaped."""
    forms = []
    for value in values:
        for text in (value, value.casefold(), value.upper()):
            forms += [text.encode(), orjson.dumps(text)[1:-1]]
    return forms


def leaks(path: Path, *values: str) -> list[bytes]:
    data = path.read_bytes()
    return [form for form in raw_forms(*values) if form in data]


def email_values(event: dict[str, Any]) -> list[Any]:
    """Every value written under an e-mail key, at any depth."""
    found: list[Any] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for inner, item in value.items():
                walk(item, inner)
        elif isinstance(value, list):
            for item in value:
                walk(item, key)
        elif key.endswith("email"):
            found.append(value)

    walk(event, "")
    return found


class TestNoRawValue:
    def test_raw_address_email_and_user_id_appear_nowhere(self, make_app: Any) -> None:
        """With the fields listed, the file holds no raw IPv4, IPv6, e-mail or user id."""
        app, bridge, path = make_app(pseudonymize=FIELDS, pseudonymize_key=KEY)
        visit(app, bridge, IPV4)
        visit(app, bridge, IPV6)
        signals = {event["signal"] for event in read_events(path)}
        assert {"account-changed", "message-flashed", "logging", "structlog"} <= signals
        assert {"got-request-exception", "logged-in", "request-finished"} <= signals
        assert [] == leaks(path, IPV4, IPV6, EMAIL, USER_ID)

    def test_without_pseudonymize_the_raw_values_are_written(self, make_app: Any) -> None:
        """The control: the same app without the setting writes every raw value."""
        app, bridge, path = make_app()
        visit(app, bridge, IPV4)
        visit(app, bridge, IPV6)
        data = path.read_bytes()
        assert [True] * 4 == [raw.encode() in data for raw in (IPV4, IPV6, EMAIL, USER_ID)]

    def test_every_event_of_a_request_carries_the_address_pseudonym(self, make_app: Any) -> None:
        """client.address is the pseudonym on access log, exception, signal and log events."""
        app, bridge, path = make_app(pseudonymize=FIELDS, pseudonymize_key=KEY)
        visit(app, bridge, IPV4)
        expected = Pseudonymizer(FIELDS, KEY).pseudonym(IPV4)
        events = read_events(path)
        assert len(events) >= 8
        assert {expected} == {event["client.address"] for event in events}
        (account,) = [event for event in events if event["signal"] == "account-changed"]
        assert expected == account["args.client.address"]

    def test_every_email_place_holds_a_pseudonym(self, make_app: Any) -> None:
        """Flat, nested, bare, in a list, in `extra` and in structlog: each a pseudonym."""
        app, bridge, path = make_app(pseudonymize=FIELDS, pseudonymize_key=KEY)
        visit(app, bridge, IPV4)
        events = read_events(path)
        (account,) = [event for event in events if event["signal"] == "account-changed"]
        (record,) = [event for event in events if event["signal"] == "logging"][:1]
        (logged,) = [event for event in events if event["signal"] == "structlog"]
        found = email_values(account) + email_values(record) + email_values(logged)
        assert 9 == len(found)
        assert [None] == [value for value in found if value is None]
        assert [] == [v for v in found if v is not None and not PSEUDONYM.fullmatch(v)]
        assert "pro" == account["user"]["plan"]

    def test_user_id_may_be_listed(self, make_app: Any) -> None:
        """`user.id` is a field like any other: the login event and the context hide it."""
        app, bridge, path = make_app(pseudonymize=FIELDS, pseudonymize_key=KEY)
        visit(app, bridge, IPV4)
        expected = Pseudonymizer(FIELDS, KEY).pseudonym(USER_ID)
        ids = {event["user.id"] for event in read_events(path) if "user.id" in event}
        assert {expected} == ids

    def test_capture_events_sees_what_the_file_gets(self, make_app: Any) -> None:
        """capture_events() lists the pseudonyms, never the raw values."""
        app, bridge, path = make_app(pseudonymize=FIELDS, pseudonymize_key=KEY)
        with capture_events(bridge, app=app) as captured:
            visit(app, bridge, IPV4)
        text = json.dumps(captured)
        assert [] == [raw for raw in (IPV4, EMAIL, USER_ID) if raw in text]
        assert captured == read_events(path)


class TestQueryString:
    def test_a_query_parameter_named_like_a_field_is_hidden(self, make_app: Any) -> None:
        """`?email=...` on any event's url.query is a pseudonym; other parameters stay."""
        app, bridge, path = make_app(pseudonymize=FIELDS, pseudonymize_key=KEY)
        client = app.test_client()
        query = {"email": EMAIL, "next": "/cart", "password": "hunter2"}
        assert 404 == client.get("/reset", query_string=query).status_code
        assert bridge.flush(timeout=10.0)
        [finished] = [e for e in read_events(path) if e["event"] == "request.finished"]
        params = dict(part.split("=", 1) for part in finished["url.query"].split("&"))
        assert PSEUDONYM.fullmatch(params["email"])
        assert "/cart" == params["next"]
        assert "[REDACTED]" == params["password"]
        assert [] == leaks(path, EMAIL, EMAIL.replace("@", "%40"))

    def test_the_same_address_in_the_query_and_a_field_links(self) -> None:
        """The query's pseudonym is the one a field with the same e-mail gets."""
        hide = Pseudonymizer(FIELDS, KEY)
        hidden = hide.apply({"url.query": "email=" + EMAIL.replace("@", "%40"), "email": EMAIL})
        assert hidden["url.query"] == "email=" + hidden["email"]


def url_shop(path: Path) -> Flask:
    """Routes whose URL variables carry an e-mail."""
    app = Flask("urls")
    app.config.update(
        BRIDGE_SINKS=[{"type": "file", "path": str(path)}],
        BRIDGE_PSEUDONYMIZE=FIELDS,
        BRIDGE_PSEUDONYMIZE_KEY=KEY,
    )

    @app.get("/users/<email>/orders/<int:number>")
    def orders(email: str, number: int) -> str:
        return "ok"

    @app.get("/files/<path:email>")
    def files(email: str) -> str:
        return "ok"

    return app


class TestUrlPath:
    @pytest.mark.parametrize("mount", ["", "/shop"])
    def test_a_url_variable_named_like_a_field_is_hidden_in_the_path(
        self, tmp_path: Path, mount: str
    ) -> None:
        """`/users/<email>/orders/<int:number>`: the e-mail segment is a pseudonym in
        url.path (under a mount prefix too), the route and the other segments stay."""
        path = tmp_path / "events.jsonl"
        app = url_shop(path)
        bridge = SignalBridge(app)
        try:
            client = app.test_client()
            url = f"/users/{EMAIL}/orders/7"
            base_url = f"http://localhost{mount}"
            assert 200 == client.get(url, base_url=base_url).status_code
            assert bridge.flush(timeout=10.0)
        finally:
            bridge.close(timeout=5.0)
        [finished] = read_events(path)
        prefix, users, hidden, orders, number = finished["url.path"].rsplit("/", 4)
        assert (mount, "users", "orders", "7") == (prefix, users, orders, number)
        assert PSEUDONYM.fullmatch(hidden)
        assert hidden == Pseudonymizer(FIELDS, KEY).pseudonym(EMAIL)
        assert "/users/<email>/orders/<int:number>" == finished["http.route"]
        assert [] == leaks(path, EMAIL, EMAIL.replace("@", "%40"))

    def test_a_variable_spanning_segments_is_left_as_documented(self, tmp_path: Path) -> None:
        """`<path:email>` may span segments: which are its value is not known, so url.path
        is written as it is (the README says so)."""
        path = tmp_path / "events.jsonl"
        app = url_shop(path)
        bridge = SignalBridge(app)
        try:
            assert 200 == app.test_client().get("/files/a/b").status_code
            assert bridge.flush(timeout=10.0)
        finally:
            bridge.close(timeout=5.0)
        [finished] = read_events(path)
        assert "/files/a/b" == finished["url.path"]


class TestLinking:
    def test_same_value_same_pseudonym_across_events_and_requests(self, make_app: Any) -> None:
        """One address and one e-mail give one pseudonym each, over four requests' events."""
        app, bridge, path = make_app(pseudonymize=FIELDS, pseudonymize_key=KEY)
        visit(app, bridge, IPV4)
        visit(app, bridge, IPV4)
        events = read_events(path)
        assert 4 == len({event["request_id"] for event in events if "request_id" in event})
        assert 1 == len({event["client.address"] for event in events})
        emails = {value for event in events for value in email_values(event) if value}
        assert 1 == len(emails)  # Alice.Secret@..., ALICE.SECRET@...: normalized alike

    def test_two_addresses_two_pseudonyms(self, make_app: Any) -> None:
        """IPv4 and IPv6 clients are told apart."""
        app, bridge, path = make_app(pseudonymize=FIELDS, pseudonymize_key=KEY)
        visit(app, bridge, IPV4)
        visit(app, bridge, IPV6)
        assert 2 == len({event["client.address"] for event in read_events(path)})

    def test_another_key_gives_other_pseudonyms(self, make_app: Any) -> None:
        """Rotation: the same values under a new key give new pseudonyms and a new key id."""
        app, bridge, path = make_app("one", pseudonymize=FIELDS, pseudonymize_key=KEY)
        app2, bridge2, path2 = make_app("two", pseudonymize=FIELDS, pseudonymize_key=OTHER_KEY)
        visit(app, bridge, IPV4)
        visit(app2, bridge2, IPV4)
        (first,) = {event["client.address"] for event in read_events(path)}
        (second,) = {event["client.address"] for event in read_events(path2)}
        assert first != second
        assert first.split(":")[1] != second.split(":")[1]


class TestTruncate:
    def test_truncated_networks_without_a_key(self, make_app: Any) -> None:
        """truncate mode writes the /24 and /48 network and needs no key for client.address."""
        app, bridge, path = make_app(pseudonymize=["client.address"], pseudonymize_ip="truncate")
        visit(app, bridge, IPV4)
        visit(app, bridge, IPV6)
        addresses = {event["client.address"] for event in read_events(path)}
        assert {"203.0.113.0", "2001:db8:85a3::"} == addresses
        assert [] == leaks(path, IPV4, IPV6)

    def test_truncate_ip_function(self) -> None:
        """IPv4-mapped IPv6 truncates as IPv4; text that is no address gives None."""
        assert ("10.1.2.0", "2001:db8:85a3::", None) == (
            truncate_ip("::ffff:10.1.2.3"),
            truncate_ip(IPV6),
            truncate_ip("unknown"),
        )


class TestStartup:
    def test_missing_key_fails_at_start_naming_it(self, tmp_path: Path) -> None:
        """pseudonymize without pseudonymize_key stops init_app with the key's name."""
        app = shop("nokey", tmp_path / "e.jsonl", pseudonymize=["user.email"])
        with pytest.raises(ConfigError) as raised:
            SignalBridge(app)
        assert "pseudonymize_key" in str(raised.value)

    def test_truncate_still_needs_a_key_for_other_fields(self, tmp_path: Path) -> None:
        """truncate covers IP fields only: user.email still needs the key."""
        app = shop("half", tmp_path / "e.jsonl", pseudonymize=FIELDS, pseudonymize_ip="truncate")
        with pytest.raises(ConfigError) as raised:
            SignalBridge(app)
        assert "pseudonymize_key" in str(raised.value)

    def test_nothing_configured_no_pseudonymizer(self) -> None:
        """Without pseudonymize the emitter holds none: one attribute test per line."""
        emitter = Emitter(load_settings({}, {}), [ListSink()])
        assert (None, None) == (emitter.pseudonyms, emitter.lines.pseudonyms)


class TestApply:
    def test_untouched_mapping_is_returned_itself(self) -> None:
        """No configured field: the very mapping comes back (no copy on the hot path)."""
        event = {"order": 42, "items": [{"sku": "a"}], "user": {"plan": "pro"}}
        assert event is Pseudonymizer(FIELDS, KEY).apply(event)

    def test_input_is_never_changed_in_place(self) -> None:
        """A hidden field yields a new dict; the caller's nested dicts stay as they were."""
        event = {"user": {"email": EMAIL}, "n": 1}
        hidden = Pseudonymizer(FIELDS, KEY).apply(event)
        assert {"user": {"email": EMAIL}, "n": 1} == event
        assert PSEUDONYM.fullmatch(hidden["user"]["email"])

    def test_redacted_pseudonyms_and_envelope_are_kept(self) -> None:
        """[REDACTED] stays, a pseudonym is not hashed twice, envelope keys are the bridge's."""
        hider = Pseudonymizer(["email", "event"], KEY)
        done = hider.field("email", EMAIL)
        event = {"event": "signed in", "email": done, "args": {"email": "[REDACTED]"}}
        assert event is hider.apply(event)

    def test_ip_truncation_applies_to_ip_fields_only(self) -> None:
        """truncate mode shortens client.address; another listed field is still hashed."""
        hider = Pseudonymizer(["client.address", "email"], KEY, "truncate")
        hidden = hider.apply({"client.address": IPV4, "email": IPV4})
        assert "203.0.113.0" == hidden["client.address"]
        assert PSEUDONYM.fullmatch(hidden["email"])


# --- the property: whatever the tree, a configured field's raw value never reaches a line ---

SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
TREES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
OBJECTS = st.dictionaries(st.text(max_size=12), TREES, max_size=4)


def plants(value: str) -> st.SearchStrategy[dict[str, Any]]:
    """Argument trees holding `value` under a configured name, flat, nested or bare, as deep
    as the tree goes, beside arbitrary siblings (in a dict or inside a list)."""
    leaf = st.sampled_from(
        [{"email": value}, {"user.email": value}, {"user": {"email": value}}, {"email": [value]}]
    )

    def wrap(parts: tuple[dict[str, Any], dict[str, Any], str, bool]) -> dict[str, Any]:
        inner, siblings, key, in_list = parts
        return {**siblings, key: [siblings, inner] if in_list else inner}

    return st.recursive(
        leaf,
        lambda deeper: st.tuples(deeper, OBJECTS, st.text(max_size=12), st.booleans()).map(wrap),
        max_leaves=6,
    )


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    value = "Secret-" + draw(st.text(min_size=1, max_size=20)) + "@example.org"
    return value, draw(plants(value))


class TestProperty:
    def test_raw_value_never_in_the_line(self) -> None:
        """Any JSON-able argument tree with a configured key somewhere: no raw value written,
        whether the line is spliced or built as a dict (a user processor)."""
        config = {"BRIDGE_PSEUDONYMIZE": FIELDS, "BRIDGE_PSEUDONYMIZE_KEY": KEY}
        spliced, built = ListSink(), ListSink()
        emitters = [
            Emitter(load_settings(config, {}), [spliced]),
            Emitter(load_settings(config, {}), [built], [lambda _l, _m, event: event]),
        ]

        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(cases())
        def check(case: tuple[str, dict[str, Any]]) -> None:
            value, tree = case
            for emitter, sink in zip(emitters, (spliced, built), strict=True):
                sink.lines.clear()
                emitter.emit("account-changed", "account-changed", "info", None, tree)
                (line,) = sink.lines
                assert [] == [form for form in raw_forms(value) if form in line]

        check()

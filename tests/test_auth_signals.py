"""`signals = ["auth"]`: every authentication signal, as a user sees it in the file written.

Real apps through the test client: a Flask-Login app (login, logout, a login_required page
while logged out, a failed login sending the app's own `user-login-failed`), and a real
Flask-Security-Too app on a small in-memory datastore (SQLAlchemy is not installed; a
datastore of one's own is what Flask-Security's `Datastore` / `UserDatastore` classes are for).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blinker
import flask_login.signals as login_signals
import flask_security.signals as security_signals
import pytest
from flask import Flask, request
from flask_login import LoginManager, login_required, login_user, logout_user
from flask_security import (
    RoleMixin,
    Security,
    UserDatastore,
    UserMixin,
    auth_required,
    hash_password,
)
from flask_security.datastore import Datastore

from bridge import SignalBridge
from bridge.auditsettings import AuthSettings
from bridge.errors import ConfigError
from bridge.pseudonyms import Pseudonymizer
from bridge.signals import auth_group
from tests.conftest import BridgedApp, read_events

# The app's own failure signal: defined at import, before any init_app, as apps do.
LOGIN_FAILED = blinker.signal("user-login-failed")
PSEUDONYM_KEY = "a-pseudonym-key-for-tests-0123456789"
HEADERS = {"User-Agent": "audit-test/1.0"}

Make = Callable[..., BridgedApp]


@dataclass(frozen=True)
class Member:
    """A user as Flask-Login needs one."""

    id: int
    username: str
    is_active: bool = True
    is_authenticated: bool = True
    is_anonymous: bool = False

    def get_id(self) -> str:
        return str(self.id)


MEMBERS = {"ada": Member(1, "ada")}


def with_flask_login(app: Flask) -> Flask:
    """Flask-Login and the views of a login page, on `app`."""
    manager = LoginManager(app)
    manager.user_loader(
        lambda user_id: next((m for m in MEMBERS.values() if m.get_id() == user_id), None)
    )

    @app.route("/signin", methods=["POST"])
    def signin() -> tuple[str, int]:
        name = request.form["username"]
        member = MEMBERS.get(name)
        if member is None or request.form["password"] != "lovelace":
            LOGIN_FAILED.send(
                app,
                username=name,
                reason=f"no such user: {name}",
                error=LookupError(f"unknown {name}"),
            )
            return "no", 401
        login_user(member)
        return "welcome", 200

    @app.route("/signout", methods=["POST"])
    def signout() -> str:
        logout_user()
        return "bye"

    @app.route("/private")
    @login_required
    def private() -> str:
        return "secret"

    return app


@pytest.fixture
def make_login(make_bridged: Make) -> Make:
    """Factory: a Flask-Login shop app bridged with `signals` (default: ["auth"])."""

    def make(signals: list[str] | None = None, **config: Any) -> BridgedApp:
        bridged = make_bridged(signals=signals or ["auth"], **config)
        with_flask_login(bridged.app)
        return bridged

    return make


def sign_in(bridged: BridgedApp, username: str = "ada", password: str = "lovelace") -> Any:
    return bridged.client.post(
        "/signin",
        data={"username": username, "password": password},
        headers=HEADERS,
    )


def by_event(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {event["event"]: event for event in events}


class TestFlaskLoginGroup:
    def test_login_logout_unauthorized_and_failure_are_written_with_their_fields(
        self, make_login: Make
    ) -> None:
        """Each auth event says category, outcome and action, the user, and its request."""
        bridged = make_login()
        denied = bridged.client.get("/private", headers=HEADERS)
        failed = sign_in(bridged, "mallory", "guess")
        sign_in(bridged)
        bridged.client.post("/signout", headers=HEADERS)
        events = [e for e in bridged.events() if e.get("event.category") == "authentication"]

        assert [
            ("user.unauthorized", "failure", "unauthorized", None),
            ("user-login-failed", "failure", "login_failed", None),
            ("user.logged_in", "success", "login", "1"),
            ("user.logged_out", "success", "logout", "1"),
        ] == [(e["event"], e["event.outcome"], e["event.action"], e.get("user.id")) for e in events]
        assert [("127.0.0.1", "audit-test/1.0")] * 4 == [
            (e["client.address"], e["user_agent.original"]) for e in events
        ]
        assert [
            denied.headers["X-Request-ID"],
            failed.headers["X-Request-ID"],
        ] == [events[0]["request_id"], events[1]["request_id"]]
        assert all(len(e["request_id"]) == 32 for e in events)

    def test_signal_name_and_level_are_kept(self, make_login: Make) -> None:
        """An auth event keeps its blinker signal name and the custom-signal level, info."""
        bridged = make_login()
        sign_in(bridged)
        (login,) = bridged.named("user.logged_in")
        assert ("logged-in", "info") == (login["signal"], login["level"])

    def test_user_accessed_is_not_in_the_group(self, make_login: Make) -> None:
        """`user_accessed` fires on every request: "auth" leaves it out."""
        bridged = make_login()
        sign_in(bridged)
        bridged.client.get("/private", headers=HEADERS)
        assert [] == bridged.named("user.accessed")

    def test_a_session_seen_from_another_browser_is_a_protected_session_event(
        self, make_login: Make
    ) -> None:
        """Session protection (another user agent on the session) is a failure event."""
        bridged = make_login()
        sign_in(bridged)
        bridged.client.get("/private", headers={"User-Agent": "elsewhere/2.0"})
        (protected,) = bridged.named("session.protected")
        assert ("failure", "session_protected", "elsewhere/2.0") == (
            protected["event.outcome"],
            protected["event.action"],
            protected["user_agent.original"],
        )

    def test_rename_applies_to_auth_events(self, make_login: Make) -> None:
        """`rename` names an auth event; it keeps its auth fields."""
        bridged = make_login(BRIDGE_RENAME={"user-login-failed": "login.failed"})
        sign_in(bridged, "mallory", "guess")
        (failed,) = bridged.named("login.failed")
        assert ("authentication", "failure") == (failed["event.category"], failed["event.outcome"])

    def test_group_members_are_plain_custom_signals_without_the_word(
        self, make_login: Make
    ) -> None:
        """Listed by name only (no "auth"), a Flask-Login signal is written as before."""
        bridged = make_login(["flask_login.signals:user_logged_in"])
        sign_in(bridged)
        (login,) = bridged.events()
        assert ("user.logged_in", None) == (login["event"], login.get("event.category"))


class TestNoDuplicates:
    @pytest.mark.parametrize(
        "signals",
        [
            ["auth", "user-login-failed", "flask_login.signals:user_logged_in"],
            ["user-login-failed", "flask_login.signals:user_logged_in", "auth"],
        ],
        ids=["auth-first", "auth-last"],
    )
    def test_a_signal_listed_by_auth_and_by_name_is_one_event(
        self, make_login: Make, signals: list[str]
    ) -> None:
        """Listing a member of the group by name too writes one event, with its auth fields."""
        bridged = make_login(signals)
        sign_in(bridged, "mallory", "guess")
        sign_in(bridged)
        events = bridged.events()
        assert ["user-login-failed", "user.logged_in"] == [e["event"] for e in events]
        assert ["failure", "success"] == [e["event.outcome"] for e in events]


class TestAttemptedUser:
    def test_omitted_by_default_and_quoted_nowhere(self, make_login: Make) -> None:
        """By default the name tried is dropped, and cut out of the other arguments."""
        bridged = make_login()
        sign_in(bridged, "Mallory", "guess")
        (failed,) = bridged.named("user-login-failed")
        assert "user.name" not in failed
        assert "username" not in failed
        assert "no such user: [REDACTED]" == failed["reason"]
        assert "mallory" not in bridged.path.read_text().lower()

    def test_pseudonymized_as_user_name(self, make_login: Make) -> None:
        """ "pseudonymize": `user.name` is the keyed pseudonym; the raw name is nowhere."""
        bridged = make_login(
            BRIDGE_AUTH={"attempted_user": "pseudonymize"}, BRIDGE_PSEUDONYMIZE_KEY=PSEUDONYM_KEY
        )
        sign_in(bridged, "Mallory", "guess")
        (failed,) = bridged.named("user-login-failed")
        expected = Pseudonymizer((), PSEUDONYM_KEY).pseudonym("Mallory")
        assert expected == failed["user.name"]
        assert "mallory" not in bridged.path.read_text().lower()

    def test_raw_writes_the_name_as_typed(self, make_login: Make) -> None:
        """ "raw": `user.name` is the name as typed, and the arguments stay as sent."""
        bridged = make_login(BRIDGE_AUTH={"attempted_user": "raw"})
        sign_in(bridged, "Mallory", "guess")
        (failed,) = bridged.named("user-login-failed")
        assert ("Mallory", "no such user: Mallory") == (failed["user.name"], failed["reason"])
        assert "username" not in failed

    def test_username_args_choose_the_arguments(self, make_login: Make) -> None:
        """Only the arguments named in `username_args` are taken as the name tried."""
        bridged = make_login(BRIDGE_AUTH={"attempted_user": "raw", "username_args": ["login"]})
        sign_in(bridged, "Mallory", "guess")
        (failed,) = bridged.named("user-login-failed")
        assert ("Mallory", None) == (failed["username"], failed.get("user.name"))


class TestCompleteness:
    @pytest.mark.parametrize(
        "config",
        [
            {"BRIDGE_MIN_LEVEL": "error"},
            {"BRIDGE_EXCLUDE_PATHS": ["/signin", "/signout", "/private"]},
            {"BRIDGE_SAMPLE": [{"rate": 0}], "BRIDGE_ALWAYS_KEEP": []},
            {
                "BRIDGE_SAMPLE": [{"rate": 0}],
                "BRIDGE_ALWAYS_KEEP": [],
                "BRIDGE_RENAME": {"logged-in": "in", "user-login-failed": "bad"},
            },
        ],
        ids=["min-level", "excluded-paths", "sampled-away", "sampled-renamed"],
    )
    def test_noise_control_never_drops_an_auth_event(
        self, make_login: Make, config: dict[str, Any]
    ) -> None:
        """min_level, exclude_paths and sampling drop no authentication event."""
        bridged = make_login(["auth", "default"], **config)
        bridged.client.get("/private", headers=HEADERS)
        sign_in(bridged, "mallory", "guess")
        sign_in(bridged)
        bridged.client.post("/signout", headers=HEADERS)
        actions = [e["event.action"] for e in bridged.events() if "event.action" in e]
        assert ["unauthorized", "login_failed", "login", "logout"] == actions

    def test_outside_a_request_an_auth_event_passes_min_level(self, make_login: Make) -> None:
        """Sent by a script (no request), a failure is written despite min_level, without
        request fields and without the name tried."""
        bridged = make_login(BRIDGE_MIN_LEVEL="error")
        LOGIN_FAILED.send(bridged.app, username="mallory", reason="locked")
        (failed,) = bridged.events()
        assert ("user-login-failed", "failure", "locked", None) == (
            failed["event"],
            failed["event.outcome"],
            failed["reason"],
            failed.get("request_id"),
        )
        assert "mallory" not in bridged.path.read_text()

    def test_a_failing_processor_never_raises_into_the_request(self, tmp_path: Path) -> None:
        """A processor that fails on an auth event is counted; the login still answers."""

        def explode(logger: Any, level: str, event: dict[str, Any]) -> dict[str, Any]:
            if event.get("event.category") == "authentication":
                raise RuntimeError("processor broke")
            return event

        app = with_flask_login(Flask("explode"))
        app.config.update(
            SECRET_KEY="test-secret",
            BRIDGE_SIGNALS=["auth"],
            BRIDGE_SINKS=[{"type": "file", "path": str(tmp_path / "e.jsonl")}],
        )
        bridge = SignalBridge(app, processors=[explode])
        try:
            response = app.test_client().post(
                "/signin", data={"username": "ada", "password": "lovelace"}
            )
            assert (200, 1) == (response.status_code, bridge.stats()["receiver_errors"])
        finally:
            bridge.close(5.0)


class TestConfig:
    @pytest.mark.parametrize("key", ["success", "failure", "logout"])
    def test_an_explicit_name_that_does_not_resolve_is_a_config_error(
        self, make_bridged: Make, key: str
    ) -> None:
        """A name the user set in [auth] must be a defined signal; the error names the key."""
        with pytest.raises(ConfigError) as caught:
            make_bridged(signals=["auth"], BRIDGE_AUTH={key: ["user-login-faild"]})
        (problem,) = caught.value.problems
        assert (f"auth.{key}", "user-login-faild") == (problem.key, problem.value)
        assert "blinker.signal('user-login-faild') before init_app" in problem.expected
        assert "did you mean 'user-login-failed'?" in problem.expected

    def test_an_explicit_import_path_that_does_not_resolve_names_the_key(
        self, make_bridged: Make
    ) -> None:
        """An import path in [auth] that names no signal is an error of `auth.<key>`."""
        with pytest.raises(ConfigError) as caught:
            make_bridged(signals=["auth"], BRIDGE_AUTH={"success": ["flask_login:nothing"]})
        assert ["auth.success"] == [problem.key for problem in caught.value.problems]

    def test_a_default_name_the_app_did_not_define_is_skipped(self, make_login: Make) -> None:
        """`user-logout` (a default) is not defined here: no error, and no such signal made."""
        bridged = make_login()
        sign_in(bridged)
        assert "user-logout" not in blinker.default_namespace
        assert ["user.logged_in"] == [e["event"] for e in bridged.events()]


# --- Flask-Security-Too ----------------------------------------------------------------------


class Role(RoleMixin):
    def __init__(self, **fields: Any) -> None:
        self.id = None
        self.permissions: list[str] = []
        self.__dict__.update(fields)


class Account(UserMixin):
    fs_uniquifier: str | None = None
    email: str | None = None
    password: str | None = None
    active = True

    def __init__(self, **fields: Any) -> None:
        self.id: int | None = None
        self.roles: list[Role] = []
        self.__dict__.update(fields)


class MemoryDatastore(Datastore, UserDatastore):
    """The smallest datastore Flask-Security runs on: users in a dict."""

    def __init__(self) -> None:
        Datastore.__init__(self, None)
        UserDatastore.__init__(self, Account, Role)
        self.users: dict[int, Account] = {}

    def put(self, model: Any) -> Any:
        if isinstance(model, Account):
            if model.id is None:
                model.id = len(self.users) + 1
            self.users[model.id] = model
        return model

    def delete(self, model: Any) -> None:
        self.users.pop(model.id, None)

    def commit(self) -> None:
        return None

    def find_user(self, case_insensitive: bool = False, **query: Any) -> Account | None:
        ((attribute, wanted),) = query.items()
        for user in self.users.values():
            value = getattr(user, attribute, None)
            if value == wanted or (
                case_insensitive and isinstance(value, str) and value.lower() == str(wanted).lower()
            ):
                return user
        return None

    def find_role(self, role: Any) -> None:
        return None


@pytest.fixture
def security_app(tmp_path: Path) -> Iterator[tuple[Flask, SignalBridge, Path, str]]:
    """A Flask-Security-Too app (JSON login, logout, change password), bridged with "auth"."""
    path = tmp_path / "security.jsonl"
    app = Flask("secured")
    app.config.update(
        SECRET_KEY="test-secret",
        SECURITY_PASSWORD_SALT="salt",
        SECURITY_PASSWORD_HASH="plaintext",  # the hashers need packages this venv lacks
        SECURITY_CHANGEABLE=True,
        SECURITY_SEND_PASSWORD_CHANGE_EMAIL=False,
        WTF_CSRF_ENABLED=False,
        BRIDGE_SIGNALS=["auth"],
        BRIDGE_SINKS=[{"type": "file", "path": str(path)}],
    )
    datastore = MemoryDatastore()
    Security(app, datastore)
    with app.app_context():
        ada = datastore.create_user(email="ada@example.com", password=hash_password("lovelace-1"))

    @app.route("/private")
    @auth_required()
    def private() -> str:
        return "secret"

    bridge = SignalBridge(app)
    yield app, bridge, path, ada.get_id()  # Flask-Security's user id: its fs_uniquifier
    bridge.close(5.0)


class TestFlaskSecurityGroup:
    def test_a_session_writes_every_authentication_event(
        self, security_app: tuple[Flask, SignalBridge, Path, str]
    ) -> None:
        """Failed password, unauthenticated page, login, password change and logout."""
        app, bridge, path, ada = security_app
        client = app.test_client()
        headers = {"User-Agent": "audit-test/1.0", "Accept": "application/json"}
        creds = {"email": "ada@example.com"}
        assert (
            400
            == client.post("/login", json={**creds, "password": "x"}, headers=headers).status_code
        )
        assert 401 == client.get("/private", headers=headers).status_code
        assert (
            200
            == client.post(
                "/login", json={**creds, "password": "lovelace-1"}, headers=headers
            ).status_code
        )
        changed = client.post(
            "/change",
            json={
                "password": "lovelace-1",
                "new_password": "babbage-2024",
                "new_password_confirm": "babbage-2024",
            },
            headers=headers,
        )
        assert 200 == changed.status_code
        assert 200 == client.post("/logout", json={}, headers=headers).status_code
        assert bridge.flush(10.0)
        events = read_events(path)
        assert [
            ("user.authentication_failed", "failure", "login_failed", ada),
            ("user.unauthenticated", "failure", "unauthorized", None),
            ("user.logged_in", "success", "login", ada),
            ("user.authenticated", "success", "login", ada),
        ] == [
            (e["event"], e["event.outcome"], e["event.action"], e.get("user.id"))
            for e in events[:4]
        ]
        # A password change logs the user in again (authn_via "change"), under a new id:
        # Flask-Security's get_id() is the fs_uniquifier, which the change rotates.
        assert [
            ("user.logged_in", "login"),
            ("user.authenticated", "login"),
            ("user.password_changed", "password_changed"),
            ("user.logged_out", "logout"),
        ] == [(e["event"], e["event.action"]) for e in events[4:]]
        assert ["change"] == events[5]["authn_via"]
        assert 1 == len({e["user.id"] for e in events[4:]}) and ada != events[4]["user.id"]
        assert {"authentication"} == {e["event.category"] for e in events}
        assert all(
            (e["client.address"], e["user_agent.original"]) == ("127.0.0.1", "audit-test/1.0")
            and len(e["request_id"]) == 32
            for e in events
        )
        failed = events[0]
        assert ("password", False) == (failed["auth_type"], failed["tfa"])
        assert ["password"] == events[3]["authn_via"]


# Every Flask-Security signal of the group, with the arguments Flask-Security 5 sends it.
SECURITY_SENDS = [
    ("user_authenticated", {"authn_via": ["password"]}, "user.authenticated", "success"),
    ("user_unauthenticated", {}, "user.unauthenticated", "failure"),
    (
        "user_failed_authn",
        {"auth_type": "password", "tfa": False},
        "user.authentication_failed",
        "failure",
    ),
    ("tf_code_confirmed", {"method": "authenticator"}, "user.second_factor_confirmed", "success"),
    ("password_changed", {}, "user.password_changed", "success"),
    ("password_reset", {}, "user.password_reset", "success"),
    ("tf_profile_changed", {"method": "sms"}, "user.second_factor_changed", "success"),
    ("tf_disabled", {}, "user.second_factor_disabled", "success"),
    (
        "us_profile_changed",
        {"methods": ["email"], "delete": False},
        "user.signin_methods_changed",
        "success",
    ),
    ("wan_registered", {"name": "my key"}, "user.passkey_registered", "success"),
    ("wan_deleted", {"name": "my key"}, "user.passkey_deleted", "success"),
]


class TestGroupMembers:
    def test_every_flask_login_signal_but_user_accessed_is_in_the_group(self) -> None:
        """The group holds Flask-Login's signals, without user_accessed and the deprecated
        header loader."""
        members, _ = auth_group(AuthSettings())
        in_group = {spec for spec, _, _ in members if spec.startswith("flask_login.")}
        defined = {
            f"flask_login.signals:{name}"
            for name, value in vars(login_signals).items()
            if isinstance(value, blinker.NamedSignal)
        }
        left_out = {
            "flask_login.signals:user_accessed",
            "flask_login.signals:_user_loaded_from_header",
        }
        assert defined - left_out == in_group

    @pytest.mark.parametrize(
        ("attribute", "arguments", "event", "outcome"),
        SECURITY_SENDS,
        ids=[row[0] for row in SECURITY_SENDS],
    )
    def test_each_flask_security_signal_is_its_event(
        self,
        make_bridged: Make,
        attribute: str,
        arguments: dict[str, Any],
        event: str,
        outcome: str,
    ) -> None:
        """Sent as Flask-Security sends it, each signal is its event, with the user's id."""
        bridged = make_bridged(signals=["auth"])
        signal = getattr(security_signals, attribute)
        user = None if attribute == "user_unauthenticated" else MEMBERS["ada"]

        @bridged.app.route("/security")
        def send() -> str:
            extra = {} if user is None else {"user": user}
            signal.send(bridged.app, _async_wrapper=bridged.app.ensure_sync, **extra, **arguments)
            return "ok"

        bridged.client.get("/security", headers=HEADERS)
        (sent,) = bridged.events()
        assert (event, outcome, "authentication", None if user is None else "1") == (
            sent["event"],
            sent["event.outcome"],
            sent["event.category"],
            sent.get("user.id"),
        )
        assert arguments == {key: sent[key] for key in arguments}

    def test_the_apps_own_success_signal_is_a_login(self, make_bridged: Make) -> None:
        """`user-login` (a default of [auth].success, defined by the app) is a login event."""
        bridged = make_bridged(signals=["auth"])
        bridged.client.post("/login", headers=HEADERS)
        (login,) = bridged.named("user-login")
        assert ("success", "login", 7, "ada") == (
            login["event.outcome"],
            login["event.action"],
            login["user_id"],
            login["username"],
        )

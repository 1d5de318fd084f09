"""Red-team attacks on the authentication group (`signals = ["auth"]`, `bridge.authsignals`):
an authentication event lost or written twice, through listing, renaming, `[auth]` names,
noise control, sends outside a request, hostile arguments and user names."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from bridge.errors import ConfigError
from bridge.pseudonyms import PSEUDONYM_PREFIX, Pseudonymizer
from tests.conftest import BridgedApp
from tests.test_auth_signals import (
    HEADERS,
    LOGIN_FAILED,
    PSEUDONYM_KEY,
    Make,
    sign_in,
    with_flask_login,
)

BY_PATH = "tests.test_auth_signals:LOGIN_FAILED"


@pytest.fixture
def make_login(make_bridged: Make) -> Make:
    """Factory: the Flask-Login shop of tests.test_auth_signals, bridged with `signals`."""

    def make(signals: list[str] | None = None, **config: Any) -> BridgedApp:
        bridged = make_bridged(signals=signals or ["auth"], **config)
        with_flask_login(bridged.app)
        return bridged

    return make


class Unprintable:
    """An argument whose text and repr both raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class TestListedTwice:
    @pytest.mark.parametrize(
        "signals",
        [
            ["auth", "user-login-failed", BY_PATH],
            [BY_PATH, "auth", "user-login-failed"],
            ["user-login-failed", BY_PATH, "auth"],
        ],
        ids=["auth-name-path", "path-auth-name", "name-path-auth"],
    )
    def test_by_auth_by_name_and_by_import_path_is_one_event(
        self, make_login: Make, signals: list[str]
    ) -> None:
        """The app's failure signal listed three ways is written once, as a failure."""
        bridged = make_login(signals)
        sign_in(bridged, "mallory", "guess")
        events = bridged.events()
        assert [("user-login-failed", "failure")] == [
            (e["event"], e["event.outcome"]) for e in events
        ]

    def test_a_renamed_auth_signal_keeps_its_fields_and_is_never_dropped(
        self, make_login: Make
    ) -> None:
        """Renamed by its import path and sampled, excluded and cut by level all at once:
        still written, with its authentication fields."""
        bridged = make_login(
            ["auth", "default", BY_PATH],
            BRIDGE_RENAME={BY_PATH: "login.bad"},
            BRIDGE_MIN_LEVEL="error",
            BRIDGE_EXCLUDE_PATHS=["/signin"],
            BRIDGE_SAMPLE=[{"rate": 0}],
            BRIDGE_ALWAYS_KEEP=[],
        )
        sign_in(bridged, "mallory", "guess")
        sign_in(bridged)
        assert [("login.bad", "login_failed"), ("user.logged_in", "login")] == [
            (e["event"], e["event.action"]) for e in bridged.events()
        ]


class TestAuthNames:
    def test_a_flask_builtin_signal_is_refused(self, make_login: Make) -> None:
        """`[auth]` naming Flask's request_finished (every request a login, written twice)
        fails at init_app, naming the key."""
        with pytest.raises(ConfigError, match=r"auth\.success"):
            make_login(
                ["default", "auth"], BRIDGE_AUTH={"success": ["flask.signals:request_finished"]}
            )

    def test_a_flask_login_signal_named_in_auth_is_one_event(self, make_login: Make) -> None:
        """Flask-Login's user_unauthorized named as `[auth]` failure: one event, as a failed
        login."""
        bridged = make_login(
            ["auth"], BRIDGE_AUTH={"failure": ["flask_login.signals:user_unauthorized"]}
        )
        bridged.client.get("/private", headers=HEADERS)
        assert [("user.unauthorized", "failure")] == [
            (e["event"], e["event.outcome"]) for e in bridged.events()
        ]


class TestTheNameTried:
    @pytest.mark.parametrize("order", [["email", "username"], ["username", "email"]])
    def test_the_first_configured_argument_is_the_name(
        self, make_login: Make, order: list[str]
    ) -> None:
        """A failure with both `username` and `email`: `user.name` is the pseudonym of the
        one listed first in `username_args`, in every process (not a set's order)."""
        bridged = make_login(
            BRIDGE_AUTH={"attempted_user": "pseudonymize", "username_args": order},
            BRIDGE_PSEUDONYMIZE_KEY=PSEUDONYM_KEY,
        )
        sent = {"username": "mallory", "email": "mallory@example.org"}
        LOGIN_FAILED.send(bridged.app, **sent)
        (failed,) = bridged.events()
        expected = Pseudonymizer((), PSEUDONYM_KEY).pseudonym(sent[order[0]])
        assert expected == failed["user.name"]


class TestOutsideARequest:
    def test_a_job_worker_thread_sends_a_failure(self, make_login: Make) -> None:
        """A failure sent from a worker thread, with a name dressed as a pseudonym: written
        once, the name a pseudonym of what was typed, never the typed text."""
        bridged = make_login(
            BRIDGE_AUTH={"attempted_user": "pseudonymize"},
            BRIDGE_PSEUDONYMIZE_KEY=PSEUDONYM_KEY,
            BRIDGE_PSEUDONYMIZE=["user.name"],
            BRIDGE_MIN_LEVEL="error",
        )
        hide = Pseudonymizer((), PSEUDONYM_KEY)
        dressed = f"{PSEUDONYM_PREFIX}{hide.kid}:{'0' * 32}"
        worker = threading.Thread(
            target=lambda: LOGIN_FAILED.send(bridged.app, username=dressed, reason="locked")
        )
        worker.start()
        worker.join(10)
        (failed,) = bridged.events()
        assert (hide.pseudonym(dressed), "locked") == (failed["user.name"], failed["reason"])
        assert dressed not in bridged.path.read_text()


class TestHostileArguments:
    def test_an_unprintable_argument_never_raises_into_the_request(self, make_login: Make) -> None:
        """A failure whose argument cannot be printed: the view answers, the event is written."""
        bridged = make_login()

        @bridged.app.post("/odd")
        def odd() -> tuple[str, int]:
            LOGIN_FAILED.send(bridged.app, username="mallory", detail=Unprintable())
            return "no", 401

        assert 401 == bridged.client.post("/odd").status_code
        (failed,) = bridged.events()
        assert "failure" == failed["event.outcome"]
        assert "mallory" not in bridged.path.read_text()

    def test_a_huge_user_name_is_not_searched_for_and_leaks_nowhere(self, make_login: Make) -> None:
        """A 2 MB name: the other text arguments are dropped rather than searched (no
        seconds of regex on the request thread); numbers are kept; the name is nowhere."""
        bridged = make_login()
        name = "mallory" * 300_000
        started = time.monotonic()
        LOGIN_FAILED.send(bridged.app, username=name, reason=f"no such user {name}", tries=3)
        elapsed = time.monotonic() - started
        (failed,) = bridged.events()
        assert (3, None) == (failed["tries"], failed.get("reason"))
        assert "mallory" not in bridged.path.read_text()
        assert elapsed < 2.0, elapsed

    def test_a_short_name_is_still_cut_out_of_the_other_arguments(self, make_login: Make) -> None:
        """Under the length limit the name is replaced where it is quoted, as before."""
        bridged = make_login()
        LOGIN_FAILED.send(bridged.app, username="x" * 1000, reason=f"no {'X' * 1000}!")
        (failed,) = bridged.events()
        assert "no [REDACTED]!" == failed["reason"]

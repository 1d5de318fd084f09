"""The authentication signal group: what `signals = ["auth"]` captures, and how each
authentication event is written.

`bridge.signals` expands the word "auth" into the signals listed here (and the app's own,
named in `[auth]`, `bridge.auditsettings`); each resolved signal carries an `AuthEvent`, and
`bridge.customroute` hands its sends to the app's `AuthWriter`, which adds the ECS fields
`event.category` ("authentication"), `event.outcome` ("success" / "failure") and
`event.action`, and decides what a failure says about the user name that was tried.

- Flask-Login (when importable): every signal but `user_accessed` (sent on every request)
  and the deprecated `_user_loaded_from_header`.
- Flask-Security(-Too) (when importable): the signals that report an authentication, its
  failure, or a change of the credentials an account authenticates with (PCI DSS asks that
  changes to authentication credentials be logged too). Left out: the `*_instructions_sent`
  and `*_token_sent` signals (an e-mail or code was sent, and their arguments carry the
  token), registration and confirmation (account life cycle), the refresh-token tracker,
  e-mail and user-name changes (their arguments hold the old values). Flask-Security logs
  users in and out through Flask-Login, so a login writes `user.logged_in` and
  `user.authenticated` (which adds `authn_via`); its `user.id` is the user's `get_id()`,
  the `fs_uniquifier`, which a password change rotates.
- The app's own, named in `[auth]`: `success` (action login), `failure` (login_failed) and
  `logout` (logout); they keep their signal names as event names.

Without the word "auth" in `signals`, a signal listed by name is written as any custom
signal, as before. An authentication event is never dropped by noise control (`bridge.noise`
keeps every event whose `event.category` is "authentication", whatever its name after
`rename`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import blinker

from bridge.auditsettings import AUTH_CATEGORY, AuthSettings
from bridge.pseudonyms import Pseudonymizer
from bridge.redaction import REDACTED

if TYPE_CHECKING:
    from bridge.emitter import Emitter

__all__ = [
    "AUTH_GROUP",
    "FLASK_LOGIN_AUTH",
    "FLASK_SECURITY_EVENTS",
    "OWN_SIGNAL_EVENTS",
    "AuthEvent",
    "AuthWriter",
    "library_signals",
]

AUTH_GROUP = "auth"  # the word in `signals`
# Longer than any user name: a name this long is not searched for in the other arguments (a
# pattern of a 500 KB name costs most of a second to compile, on the request thread); they are
# dropped instead, so nothing leaks.
_MAX_NAME_CHARS = 1024


@dataclass(frozen=True, slots=True)
class AuthEvent:
    """What kind of authentication event a signal is: its ECS action and outcome."""

    action: str
    outcome: str  # "success" or "failure"

    @property
    def fields(self) -> dict[str, str]:
        return {
            "event.category": AUTH_CATEGORY,
            "event.outcome": self.outcome,
            "event.action": self.action,
        }


def _success(action: str) -> AuthEvent:
    return AuthEvent(action, "success")


def _failure(action: str) -> AuthEvent:
    return AuthEvent(action, "failure")


# flask_login.signals attribute -> its kind (event names: `bridge.signals.FLASK_LOGIN_EVENTS`).
FLASK_LOGIN_AUTH: dict[str, AuthEvent] = {
    "user_logged_in": _success("login"),
    "user_logged_out": _success("logout"),
    "user_login_confirmed": _success("login_confirmed"),  # a fresh login after a stale one
    "user_unauthorized": _failure("unauthorized"),  # a login_required view, not logged in
    "user_needs_refresh": _failure("needs_refresh"),  # a fresh_login_required view, stale
    "user_loaded_from_cookie": _success("login_from_cookie"),  # "remember me"
    "user_loaded_from_request": _success("login_from_request"),  # a request_loader (API key)
    "session_protected": _failure("session_protected"),  # session identifier changed
}

# flask_security.signals attribute -> (event name, kind). Arguments as Flask-Security 5 sends
# them: `user` everywhere but user_unauthenticated (none), plus authn_via (authenticated),
# auth_type and tfa (failed_authn), method (tf_*), methods and delete (us_profile_changed),
# name (the passkey's, wan_*).
FLASK_SECURITY_EVENTS: dict[str, tuple[str, AuthEvent]] = {
    "user_authenticated": ("user.authenticated", _success("login")),
    "user_unauthenticated": ("user.unauthenticated", _failure("unauthorized")),
    "user_failed_authn": ("user.authentication_failed", _failure("login_failed")),
    "tf_code_confirmed": ("user.second_factor_confirmed", _success("second_factor")),
    "password_changed": ("user.password_changed", _success("password_changed")),
    "password_reset": ("user.password_reset", _success("password_reset")),
    "tf_profile_changed": ("user.second_factor_changed", _success("second_factor_changed")),
    "tf_disabled": ("user.second_factor_disabled", _success("second_factor_disabled")),
    "us_profile_changed": ("user.signin_methods_changed", _success("signin_methods_changed")),
    "wan_registered": ("user.passkey_registered", _success("passkey_registered")),
    "wan_deleted": ("user.passkey_deleted", _success("passkey_deleted")),
}

# `[auth]` key -> the kind of the app's own signals it names.
OWN_SIGNAL_EVENTS: dict[str, AuthEvent] = {
    "success": _success("login"),
    "failure": _failure("login_failed"),
    "logout": _success("logout"),
}


def _module(name: str) -> Any:
    """The module, or None when it (or a package it needs) cannot be imported."""
    try:
        return importlib.import_module(name)
    except Exception:  # not installed, or installed without what it needs
        return None


def library_signals() -> Iterator[tuple[str, blinker.Signal, AuthEvent]]:
    """(import path, signal, kind) of every library authentication signal importable here."""
    tables = (
        ("flask_login.signals", FLASK_LOGIN_AUTH),
        (
            "flask_security.signals",
            {name: kind for name, (_, kind) in FLASK_SECURITY_EVENTS.items()},
        ),
    )
    for module_name, table in tables:
        module = _module(module_name)
        if module is None:
            continue
        for attribute, kind in table.items():
            signal = getattr(module, attribute, None)
            if isinstance(signal, blinker.Signal):
                yield f"{module_name}:{attribute}", signal, kind


class AuthWriter:
    """One app's way of writing authentication events (`[auth]`, `pseudonymize_key`).

    A failure's arguments named in `username_args` never reach the event as they are: with
    `attempted_user = "omit"` they are dropped, with "pseudonymize" the name tried is written
    as `user.name` = its keyed pseudonym, with "raw" as typed. Unless raw, the name is also
    cut out of the failure's other arguments (a message or an exception quoting it).
    """

    __slots__ = ("mode", "pseudonymizer", "username_args", "username_order")

    def __init__(self, auth: AuthSettings, pseudonymizer: Pseudonymizer | None) -> None:
        self.mode = auth.attempted_user
        self.username_args = frozenset(auth.username_args)
        self.username_order = tuple(auth.username_args)  # the first given is the name tried
        self.pseudonymizer = pseudonymizer

    @classmethod
    def of(cls, settings: Any) -> AuthWriter:
        """From `Settings` (`auth`, and the pseudonymization keys)."""
        return cls(settings.auth, Pseudonymizer.of(settings))

    def emit(
        self, emitter: Emitter, signal: str, event: str, kind: AuthEvent, kwargs: Mapping[str, Any]
    ) -> None:
        """Write one authentication event; noise control lets it through (by its
        `event.category`, `bridge.noise`)."""
        fields = kind.fields
        arguments: Mapping[str, Any] = kwargs
        if kind.outcome == "failure" and not self.username_args.isdisjoint(kwargs):
            try:
                arguments = self._attempted(emitter, kwargs, fields)
            except Exception:  # fail closed: the event without its arguments, nothing leaks
                arguments = {}
        emitter.emit(signal, event, "info", fields, arguments)

    def _attempted(
        self, emitter: Emitter, kwargs: Mapping[str, Any], fields: dict[str, Any]
    ) -> dict[str, Any]:
        """The failure's arguments without the user name tried; `user.name` in `fields`."""
        # In the configured order, not a set's: the same failure gives the same `user.name`
        # in every process (a set's order follows the per-process string hash seed).
        names = [kwargs[key] for key in self.username_order if key in kwargs]
        tried = next((name for name in names if name is not None), None)
        rest = {key: value for key, value in kwargs.items() if key not in self.username_args}
        if tried is None:
            return rest
        if self.mode == "raw":
            fields["user.name"] = tried if isinstance(tried, str) else str(tried)
            return rest
        if self.mode == "pseudonymize" and self.pseudonymizer is not None:
            fields["user.name"] = self.pseudonymizer.pseudonym(tried)
        texts = {str(name).strip() for name in names if name is not None} - {""}
        if not texts:
            return rest
        if max(len(text) for text in texts) > _MAX_NAME_CHARS:
            return {key: value for key, value in rest.items() if _keeps_as_is(value)}
        pattern = re.compile(
            "|".join(re.escape(text) for text in sorted(texts, key=len, reverse=True)),
            re.IGNORECASE,
        )
        return {
            _cut(pattern, key): value
            if _keeps_as_is(value)
            else _scrubbed(pattern, emitter.make_safe.convert(value))
            for key, value in rest.items()
        }


def _keeps_as_is(value: Any) -> bool:
    """Values that cannot quote a name: numbers, None, and user objects (written as their id)."""
    if value is None or isinstance(value, bool | int | float):
        return True
    return not isinstance(value, str | bytes | Mapping) and callable(getattr(value, "get_id", None))


def _cut(pattern: re.Pattern[str], text: Any) -> Any:
    return pattern.sub(REDACTED, text) if isinstance(text, str) else text


def _scrubbed(pattern: re.Pattern[str], value: Any) -> Any:
    """`value` (made JSON-safe already) with every occurrence of the name replaced."""
    if isinstance(value, str):
        return _cut(pattern, value)
    if isinstance(value, dict):
        return {_cut(pattern, key): _scrubbed(pattern, item) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrubbed(pattern, item) for item in value]
    return value

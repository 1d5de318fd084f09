"""The audit-trail keys of the configuration: the `[auth]` table, pseudonymization, and the
audit file sink's own keys; their types, defaults and checkers.

A leaf of the configuration layer, like `bridge.noisesettings`: `bridge.config` checks the keys
with these; `bridge.authsignals`, `bridge.pseudonyms` and `bridge.audit` act on the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge import configvalues as v
from bridge.audit.chain import MIN_KEY_BYTES
from bridge.errors import ConfigError, ConfigProblem

__all__ = [
    "ATTEMPTED_USER_CHOICES",
    "AUDIT_EVENTS_DEFAULT",
    "AUTH_CATEGORY",
    "IP_FIELDS",
    "AuthSettings",
    "audit_fsync",
    "auth_table",
    "check_audit_sink",
    "check_keys_differ",
    "check_pseudonymize_key",
    "pseudonymize_fields",
    "secret_key",
]

# Fields that hold an IP address: `pseudonymize_ip = "truncate"` shortens them without a key.
IP_FIELDS = frozenset({"client.address", "client.ip", "source.address", "source.ip"})
# `event.category` of an authentication event (ECS): what `signals = ["auth"]` writes, what an
# audit sink's `events = ["auth"]` selects, and what noise control never drops.
AUTH_CATEGORY = "authentication"
ATTEMPTED_USER_CHOICES = ("omit", "pseudonymize", "raw")
# What an audit sink records unless told otherwise: every authentication event.
AUDIT_EVENTS_DEFAULT = ("auth",)


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """`[auth]`: the app's own authentication signals, and what a failure may say.

    Names listed by the user must resolve (a ConfigError otherwise); the defaults are taken
    only when the app defined such a signal before `init_app`.
    """

    success: tuple[str, ...] = ("user-login",)
    failure: tuple[str, ...] = ("user-login-failed",)
    logout: tuple[str, ...] = ("user-logout",)
    # A failed login's attempted user name: never written (omit), written as `user.name`
    # pseudonymized (needs pseudonymize_key), or written as typed (raw).
    attempted_user: str = "omit"
    # The arguments of a failure signal that may hold the name tried.
    username_args: tuple[str, ...] = ("username", "user_name", "login", "email")
    explicit: frozenset[str] = frozenset()  # the keys the user set (their names must resolve)


_AUTH_KEYS: dict[str, v.Checker] = {
    "success": v.string_list,
    "failure": v.string_list,
    "logout": v.string_list,
    "attempted_user": v.choice(*ATTEMPTED_USER_CHOICES),
    "username_args": v.string_list,
}


def auth_table(key: str, value: Any) -> AuthSettings:
    if not isinstance(value, Mapping):
        raise ConfigError(key, value, "a table ([auth] in TOML)")
    problems: list[ConfigProblem] = []
    values: dict[str, Any] = {}
    for name, item in value.items():
        checker = _AUTH_KEYS.get(name)
        if checker is None:
            known = ", ".join(sorted(_AUTH_KEYS))
            problems.append(ConfigProblem(f"{key}.{name}", item, f"a known key: {known}"))
            continue
        try:
            values[name] = checker(f"{key}.{name}", item)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError.of(problems)
    return AuthSettings(**values, explicit=frozenset(values))


def pseudonymize_fields(key: str, value: Any) -> tuple[str, ...]:
    """Field names (`client.address`, `user.email`, `email`), each non-empty."""
    names = v.string_list(key, value)
    for name in names:
        if not name or name != name.strip():
            raise ConfigError(key, value, "a list of field names such as client.address")
    return names


def secret_key(key: str, value: Any) -> str:
    """An HMAC key from the environment (`"${AUDIT_KEY}"`): at least MIN_KEY_BYTES bytes."""
    text = v.string(key, value)
    if len(text.encode()) < MIN_KEY_BYTES:
        raise ConfigError(
            key,
            value,
            f'a secret of at least {MIN_KEY_BYTES} bytes, such as "${{AUDIT_KEY}}" with '
            "AUDIT_KEY=$(openssl rand -hex 32)",
        )
    return text


def audit_fsync(key: str, value: Any) -> bool | float:
    """true (after every write: a request's records), false (never: the OS decides), or an
    interval in seconds (at most that long after a write)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value > 0 and value == value:
        return float(value)
    raise ConfigError(key, value, "true, false, or an interval in seconds > 0")


def check_audit_sink(
    where: str, raw: Mapping[str, Any], values: dict[str, Any], problems: v.Problems
) -> None:
    """An audit file sink writes before the response, needs its key, and may fsync on a
    timer; the audit keys mean nothing to a plain file sink."""
    if values.get("audit") is True:
        if "audit_key" not in raw:
            problems.add(
                f"{where}.audit_key",
                None,
                'a value: an audit sink signs with it (audit_key = "${AUDIT_KEY}")',
            )
        if raw.get("sync") is False:
            problems.add(
                f"{where}.sync",
                False,
                "true (or absent): an audit sink writes every record before the response",
            )
        values["sync"] = True
        values.setdefault("fsync", True)
        return
    for key in ("audit_key", "events"):
        if key in raw:
            problems.add(f"{where}.{key}", raw[key], "audit = true on this sink to use it")
    fsync = values.get("fsync")
    if fsync is not None and not isinstance(fsync, bool) and fsync is not v.INVALID:
        problems.add(
            f"{where}.fsync", raw["fsync"], "true or false (an interval needs audit = true)"
        )


def check_pseudonymize_key(values: Mapping[str, Any], problems: v.Problems) -> None:
    """A keyed pseudonym needs its key; with `pseudonymize_ip = "truncate"` an IP address
    field needs none (a value that is not an address still does)."""
    if "pseudonymize_key" in values:
        return
    needs = []
    fields = set(values["pseudonymize"])
    if values["pseudonymize_ip"] == "truncate":
        fields -= IP_FIELDS
    if fields:
        needs.append("pseudonymize")
    auth = values["auth"]
    if isinstance(auth, AuthSettings) and auth.attempted_user == "pseudonymize":
        needs.append('auth.attempted_user = "pseudonymize"')
    if needs:
        problems.add(
            "pseudonymize_key",
            None,
            f'a secret for {" and ".join(needs)} (pseudonymize_key = "${{PSEUDONYM_KEY}}")',
        )


def check_keys_differ(pseudonym_key: Any, sinks: Any, problems: v.Problems) -> None:
    """Whoever verifies an audit file holds its key; with the pseudonym key as well they could
    test guesses against every pseudonym. One key each."""
    if not pseudonym_key:
        return
    for index, sink in enumerate(sinks):
        if getattr(sink, "audit", False) and sink.audit_key == pseudonym_key:
            problems.add(
                f"sinks[{index}].audit_key",
                v.HIDDEN,
                "a key other than pseudonymize_key (an auditor verifying the file would hold "
                "the key to every pseudonym)",
            )

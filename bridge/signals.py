"""Which signals the bridge can capture: Flask's ten built-ins, and custom ones found by name.

The catalogue gives each built-in its event name and the fields it contributes (the README's
event table); exception fields come from `Emitter.exception_fields`, secrets scrubbed. Custom
signals are resolved from blinker's default namespace by name (`"user-login"`), or from an
import path (`"flask_login.signals:user_logged_in"`); Flask-Login's signals get catalogue
event names (`user.logged_in`, ...), Flask-Security's the names of `bridge.authsignals`.

The word "auth" stands for the authentication group (`bridge.authsignals`): Flask-Login's and
Flask-Security's authentication signals when they are importable, and the app's own named in
`[auth]`. Each signal of the group, listed by "auth" or by name as well, is resolved once and
carries its `AuthEvent`.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import blinker
import flask.signals

from bridge.auditsettings import AuthSettings
from bridge.authsignals import (
    AUTH_GROUP,
    FLASK_SECURITY_EVENTS,
    OWN_SIGNAL_EVENTS,
    AuthEvent,
    library_signals,
)
from bridge.errors import ConfigError, ConfigProblem

__all__ = [
    "BUILTIN_SIGNALS",
    "DEFAULT_SIGNALS",
    "BuiltinSignal",
    "CustomSignal",
    "auth_group",
    "event_name",
    "expand_signal_names",
    "resolve_signals",
]

# The exception fields of one exception, secrets scrubbed (`Emitter.exception_fields`).
DescribeFn = Callable[[BaseException], dict[str, Any]]
# A signal's keyword arguments -> the event's fields.
FieldsFn = Callable[[Mapping[str, Any], DescribeFn], dict[str, Any]]


def _no_fields(kwargs: Mapping[str, Any], describe: DescribeFn) -> dict[str, Any]:
    return {}


def _exception_if_any(kwargs: Mapping[str, Any], describe: DescribeFn) -> dict[str, Any]:
    exc = kwargs.get("exc")
    return describe(exc) if isinstance(exc, BaseException) else {}


def _exception(kwargs: Mapping[str, Any], describe: DescribeFn) -> dict[str, Any]:
    exc = kwargs.get("exception")
    return describe(exc) if isinstance(exc, BaseException) else {}


def _text(value: object) -> str:
    """`str(value)`, or the value's type tag when that fails: these fields skip the safe walk."""
    try:
        return str(value)
    except Exception:
        cls = type(value)
        return f"<{cls.__module__}.{cls.__qualname__}>"


def _template(kwargs: Mapping[str, Any], describe: DescribeFn) -> dict[str, Any]:
    template = kwargs.get("template")
    context = kwargs.get("context")
    fields: dict[str, Any] = {}
    try:
        name = getattr(template, "name", None)
    except Exception:  # a property that raises: the event is still worth having, nameless
        name = None
    if name is not None:
        fields["template.name"] = name if isinstance(name, str) else _text(name)
    if isinstance(context, Mapping):
        fields["template.context_keys"] = sorted(
            key if isinstance(key, str) else _text(key) for key in context
        )
    return fields


def _flash(kwargs: Mapping[str, Any], describe: DescribeFn) -> dict[str, Any]:
    return {"message": kwargs.get("message"), "category": kwargs.get("category")}


@dataclass(frozen=True, slots=True)
class BuiltinSignal:
    """One of Flask's built-in signals, with the event it becomes."""

    name: str
    signal: blinker.NamedSignal
    event: str
    level: str
    fields: FieldsFn
    carries_data: bool = False  # fields hold application values: they take the safe walk


@dataclass(frozen=True, slots=True)
class CustomSignal:
    """A signal the application defines (or a library such as Flask-Login), resolved."""

    spec: str
    signal: blinker.Signal
    signal_name: str
    event: str
    auth: AuthEvent | None = None  # a member of the authentication group ("auth")


# request_finished is built by the extension itself: it needs the response and the clock.
BUILTIN_SIGNALS: dict[str, BuiltinSignal] = {
    spec.name: spec
    for spec in (
        BuiltinSignal(
            "request_started", flask.signals.request_started, "request.started", "info", _no_fields
        ),
        BuiltinSignal(
            "request_finished",
            flask.signals.request_finished,
            "request.finished",
            "info",
            _no_fields,
        ),
        BuiltinSignal(
            "got_request_exception",
            flask.signals.got_request_exception,
            "request.exception",
            "error",
            _exception,
        ),
        BuiltinSignal(
            "request_tearing_down",
            flask.signals.request_tearing_down,
            "request.teardown",
            "info",
            _exception_if_any,
        ),
        BuiltinSignal(
            "appcontext_pushed",
            flask.signals.appcontext_pushed,
            "appcontext.pushed",
            "debug",
            _no_fields,
        ),
        BuiltinSignal(
            "appcontext_popped",
            flask.signals.appcontext_popped,
            "appcontext.popped",
            "debug",
            _no_fields,
        ),
        BuiltinSignal(
            "appcontext_tearing_down",
            flask.signals.appcontext_tearing_down,
            "appcontext.teardown",
            "debug",
            _exception_if_any,
        ),
        BuiltinSignal(
            "before_render_template",
            flask.signals.before_render_template,
            "template.rendering",
            "debug",
            _template,
        ),
        BuiltinSignal(
            "template_rendered",
            flask.signals.template_rendered,
            "template.rendered",
            "info",
            _template,
        ),
        BuiltinSignal(
            "message_flashed",
            flask.signals.message_flashed,
            "message.flashed",
            "info",
            _flash,
            carries_data=True,
        ),
    )
}
DEFAULT_SIGNALS = ("request_finished", "got_request_exception", "message_flashed")

FLASK_LOGIN_EVENTS = {
    "user_logged_in": "user.logged_in",
    "user_logged_out": "user.logged_out",
    "user_login_confirmed": "user.login_confirmed",
    "user_unauthorized": "user.unauthorized",
    "user_needs_refresh": "user.needs_refresh",
    "user_accessed": "user.accessed",
    "user_loaded_from_cookie": "user.loaded_from_cookie",
    "user_loaded_from_request": "user.loaded_from_request",
    "_user_loaded_from_header": "user.loaded_from_header",
    "session_protected": "session.protected",
}


def expand_signal_names(names: Iterable[str]) -> tuple[str, ...]:
    """Replace "default" and "builtin" by what they stand for; keep order, drop repeats."""
    expanded: list[str] = []
    for name in names:
        group = {"default": DEFAULT_SIGNALS, "builtin": tuple(BUILTIN_SIGNALS)}.get(name, (name,))
        expanded.extend(n for n in group if n not in expanded)
    return tuple(expanded)


def _catalogue_event(signal: blinker.Signal) -> str | None:
    tables = (
        ("flask_login.signals", FLASK_LOGIN_EVENTS),
        ("flask_security.signals", {name: ev for name, (ev, _) in FLASK_SECURITY_EVENTS.items()}),
    )
    for module_name, table in tables:
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for attribute, event in table.items():
            if module.__dict__.get(attribute) is signal:
                return event
    return None


def _import_signal(spec: str, key: str = "signals") -> blinker.Signal:
    module_name, _, attribute = spec.partition(":")
    expected = 'an importable "module.path:attribute" naming a blinker signal'
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(key, spec, f"{expected} (import failed: {exc})") from None
    signal = getattr(module, attribute, None)
    if not isinstance(signal, blinker.Signal):
        found = "nothing" if signal is None else type(signal).__name__
        raise ConfigError(key, spec, f"{expected} ({attribute} is {found})")
    return signal


def _named_signal(name: str) -> blinker.Signal:
    signal = blinker.default_namespace.get(name)
    if signal is not None:
        return signal
    close = difflib.get_close_matches(
        name,
        [*BUILTIN_SIGNALS, *blinker.default_namespace, "default", "builtin", AUTH_GROUP],
        n=1,
    )
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(
        "signals",
        name,
        'a built-in signal name, "default", "builtin", a signal already defined with '
        f'blinker.signal({name!r}) before init_app, or "module:attribute"{hint}',
    )


def event_name(spec: BuiltinSignal | CustomSignal, rename: Mapping[str, str]) -> str:
    """The event a signal becomes: `rename` by its configured name (`request_finished`,
    `"flask_login.signals:user_logged_in"`), else by its blinker name (`request-finished`),
    else the catalogue's name (a custom signal's own name if it has none)."""
    if isinstance(spec, BuiltinSignal):
        names = (spec.name, spec.signal.name)
    else:
        names = (spec.spec, spec.signal_name)
    for name in names:
        if name in rename:
            return rename[name]
    return spec.event


def _own_signal(key: str, name: str) -> blinker.Signal:
    """A signal `[auth]` names: by import path, or by name in blinker's namespace; never one
    of Flask's own (every request would be a login, and written twice)."""
    if ":" in name:
        imported = _import_signal(name, key)
        if any(spec.signal is imported for spec in BUILTIN_SIGNALS.values()):
            raise ConfigError(key, name, "an authentication signal, not one of Flask's own")
        return imported
    signal = blinker.default_namespace.get(name)
    if signal is None:
        close = difflib.get_close_matches(name, list(blinker.default_namespace), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            key,
            name,
            f"a signal defined with blinker.signal({name!r}) before init_app, "
            f'or "module:attribute"{hint}',
        )
    return signal


def auth_group(
    auth: AuthSettings, *, libraries: bool = True
) -> tuple[list[tuple[str, blinker.Signal, AuthEvent]], list[ConfigProblem]]:
    """(spec, signal, kind) of every member of the authentication group (the libraries' only
    when `libraries`: importing them costs), and the problems of the `[auth]` names the user
    set that do not resolve (a default name that does not is simply not the app's)."""
    members = list(library_signals()) if libraries else []
    problems: list[ConfigProblem] = []
    for key, kind in OWN_SIGNAL_EVENTS.items():
        for name in getattr(auth, key):
            try:
                members.append((name, _own_signal(f"auth.{key}", name), kind))
            except ConfigError as exc:
                if key in auth.explicit:
                    problems.extend(exc.problems)
    return members, problems


def resolve_signals(
    names: Iterable[str], rename: Mapping[str, str], auth: AuthSettings | None = None
) -> tuple[list[BuiltinSignal], list[CustomSignal]]:
    """Split the configured names into built-ins and resolved custom signals, each carrying
    the event it becomes (`event_name`); one ConfigError lists every name that fails, and
    every `[auth]` name the user set that does not resolve. A member of the authentication
    group ("auth") is resolved once, however often it is listed."""
    builtins: list[BuiltinSignal] = []
    customs: list[CustomSignal] = []
    names = tuple(names)
    grouped = AUTH_GROUP in names
    members, problems = auth_group(auth or AuthSettings(), libraries=grouped)
    kinds = {id(signal): kind for _, signal, kind in members}
    listed: dict[int, int] = {}  # id(signal) -> its place in customs, for group members
    for name in expand_signal_names(names):
        if name in BUILTIN_SIGNALS:
            spec = BUILTIN_SIGNALS[name]
            builtins.append(replace(spec, event=event_name(spec, rename)))
            continue
        if name == AUTH_GROUP:
            for spec_name, signal, kind in members:
                if id(signal) in listed:  # listed by name before "auth"
                    at = listed[id(signal)]
                    customs[at] = replace(customs[at], auth=kind)
                    continue
                listed[id(signal)] = len(customs)
                customs.append(_custom(spec_name, signal, rename, kind))
            continue
        try:
            signal = _import_signal(name) if ":" in name else _named_signal(name)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if id(signal) in listed:  # a group member listed by name too: one event, not two
            if name in rename:  # renamed by this spelling: whatever the order of the list
                at = listed[id(signal)]
                customs[at] = replace(customs[at], event=rename[name])
            continue
        if grouped and id(signal) in kinds:
            listed[id(signal)] = len(customs)
        customs.append(_custom(name, signal, rename, None))
    if problems:
        raise ConfigError.of(problems)
    return builtins, customs


def _custom(
    name: str, signal: blinker.Signal, rename: Mapping[str, str], kind: AuthEvent | None
) -> CustomSignal:
    signal_name = getattr(signal, "name", None) or name.rpartition(":")[2]
    custom = CustomSignal(name, signal, signal_name, _catalogue_event(signal) or signal_name, kind)
    return replace(custom, event=event_name(custom, rename))

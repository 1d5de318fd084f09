"""The noise-control keys of the configuration: their types, defaults and checkers.

`bridge.config` checks `exclude_paths`, `min_level`, `sample`, `always_keep` and
`exception_rate` with these (errors name the key, the value as written and what was
expected); `bridge.noise` is the policy built from them. A leaf of the configuration layer:
it imports only the value checkers and errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge import configvalues as v
from bridge.errors import ConfigError, ConfigProblem

__all__ = [
    "DEFAULT_ALWAYS_KEEP",
    "LEVELS",
    "ExceptionRate",
    "SampleRule",
    "exception_rate",
    "path_globs",
    "sample_rules",
]

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
# Login events of Flask-Login and the usual custom signals: an audit trail is never sampled.
DEFAULT_ALWAYS_KEEP = (
    "user.logged_in",
    "user.logged_out",
    "user.login_confirmed",
    "user.unauthorized",
    "user-login",
    "user-login-failed",
)


@dataclass(frozen=True, slots=True)
class SampleRule:
    """Keep `rate` (0 to 1) of the requests that match every condition given."""

    rate: float
    event: str | None = None  # the request produced this event (e.g. request.finished)
    path: str | None = None  # a glob on the request's path
    status_from: int | None = None  # status >= this
    status_below: int | None = None  # status < this


@dataclass(frozen=True, slots=True)
class ExceptionRate:
    """At most `max` stack traces of one exception per `per_seconds`."""

    max: int
    per_seconds: float


def path_globs(key: str, value: Any) -> tuple[str, ...]:
    """`exclude_paths`: fnmatch globs on the request path, such as "/static/*"."""
    globs = v.string_list(key, value)
    for glob in globs:
        if not glob.startswith(("/", "*")):
            raise ConfigError(key, value, 'globs of request paths, each starting with "/"')
    return globs


_RULE_KEYS: dict[str, v.Checker] = {
    "rate": lambda key, value: _rate(key, value),
    "event": v.nonempty_string,
    "path": lambda key, value: path_globs(key, [value])[0],
    "status_from": lambda key, value: _status(key, value),
    "status_below": lambda key, value: _status(key, value),
}


def _rate(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(key, value, "a keep rate: a number from 0 (keep none) to 1 (keep all)")
    return float(value)


def _status(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 600:
        raise ConfigError(key, value, "an HTTP status code from 100 to 600")
    return value


def sample_rules(key: str, value: Any) -> tuple[SampleRule, ...]:
    """`sample`: a list of rules ([[sample]] in TOML); every mistake of every rule at once."""
    if not isinstance(value, list | tuple):
        raise ConfigError(key, value, "a list of tables ([[sample]] in TOML)")
    problems = v.Problems()
    rules = []
    for index, raw in enumerate(value):
        where = f"{key}[{index}]"
        if not isinstance(raw, Mapping):
            problems.add(where, raw, "a table with at least a `rate` key")
            continue
        before = len(problems.found)
        values: dict[str, Any] = {}
        for name, item in raw.items():
            if name not in _RULE_KEYS:
                known = ", ".join(sorted(_RULE_KEYS))
                problems.add(f"{where}.{name}", item, f"a known key of a sample rule: {known}")
                continue
            values[name] = problems.check(_RULE_KEYS[name], f"{where}.{name}", item)
        if "rate" not in raw:
            problems.add(f"{where}.rate", None, "a value: a sample rule needs `rate`")
        low, high = values.get("status_from"), values.get("status_below")
        if isinstance(low, int) and isinstance(high, int) and low >= high:
            problems.add(f"{where}.status_below", high, f"a status above status_from ({low})")
        if len(problems.found) == before:
            rules.append(SampleRule(**values))
    if problems.found:
        raise ConfigError.of(problems.found)
    return tuple(rules)


def exception_rate(key: str, value: Any) -> ExceptionRate | None:
    """`exception_rate`: `{max = N, per_seconds = S}`; `{}` (the default) is no limit."""
    expected = "a table {max = N, per_seconds = S} (N >= 1, S > 0), or {} for no limit"
    if not isinstance(value, Mapping) or set(value) - {"max", "per_seconds"}:
        raise ConfigError(key, value, expected)
    if not value:
        return None
    if set(value) != {"max", "per_seconds"}:
        raise ConfigError(key, value, expected)
    problems: list[ConfigProblem] = []
    limit = seconds = None
    try:
        limit = v.positive_int(f"{key}.max", value["max"])
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        seconds = v.duration(f"{key}.per_seconds", value["per_seconds"])
        if not seconds:
            raise ConfigError(f"{key}.per_seconds", value["per_seconds"], "seconds > 0")
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems or limit is None or seconds is None:
        raise ConfigError.of(problems)
    return ExceptionRate(limit, seconds)

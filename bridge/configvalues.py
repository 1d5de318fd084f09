"""The value checkers of the configuration schema in `bridge.config`.

A checker takes the key (as shown in errors, such as `sinks[0].url`) and the value as written,
and returns the typed value or raises `ConfigError`. Errors show the value as written: never
after `${NAME}` interpolation, never a header value, never a URL's credentials. Paths are made
absolute here, against the working directory of the moment (`init_app`), so a later
`os.chdir` cannot move a log file or a spool.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bridge.errors import NO_VALUE, ConfigError, ConfigProblem
from bridge.redaction import DEFAULT_REDACT_TERMS, Scrubber, SensitiveKeys

__all__ = [
    "HIDDEN",
    "INVALID",
    "Checker",
    "Problems",
    "boolean",
    "choice",
    "duration",
    "existing_file",
    "file_mode",
    "file_path",
    "headers",
    "interpolate",
    "literal",
    "nonempty_string",
    "optional",
    "path",
    "positive_int",
    "shown",
    "size",
    "spool_fsync",
    "string",
    "string_list",
    "string_table",
    "url",
]

Checker = Callable[[str, Any], Any]
HIDDEN = "[hidden]"  # what an error shows instead of a header value


INVALID: Any = object()  # what a failed check yields; its problem is already collected
_SECRET_KEYS = SensitiveKeys(("headers", "audit_key", "pseudonymize_key", *DEFAULT_REDACT_TERMS))


def shown(key: str, value: Any) -> Any:
    """`value` as an error may show it: whatever sits under a header or secret key hidden."""
    if value is NO_VALUE or value == HIDDEN:
        return value
    parts = [part for part in re.split(r"[.\[\]]", key) if part]
    if parts[:1] == ["auth"]:  # the [auth] table names signals, never a credential
        parts = parts[1:]
    if any(_SECRET_KEYS(part) for part in parts):
        return HIDDEN
    if isinstance(value, Mapping):
        return {
            k: HIDDEN if isinstance(k, str) and _SECRET_KEYS(k) else shown("", item)
            for k, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [shown("", item) for item in value]
    return value


class Problems:
    """The mistakes found so far; checking goes on after one, so all are reported at once."""

    def __init__(self) -> None:
        self.found: list[ConfigProblem] = []

    def add(self, key: str, value: Any, expected: str) -> None:
        self.found.append(ConfigProblem(key, shown(key, value), expected))

    def check(self, checker: Checker, key: str, value: Any) -> Any:
        """`checker(key, value)`, or INVALID with its problems noted."""
        try:
            return checker(key, value)
        except ConfigError as exc:
            for problem in exc.problems:
                self.add(problem.key, problem.value, problem.expected)
            return INVALID


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_interpolating: ContextVar[bool] = ContextVar("interpolating", default=True)


@contextmanager
def literal() -> Iterator[None]:
    """Check values that are final already (settings built in code, or interpolated once):
    `${NAME}` in them is text, not a reference."""
    token = _interpolating.set(False)
    try:
        yield
    finally:
        _interpolating.reset(token)


def interpolate(key: str, text: str) -> str:
    """Replace `${NAME}` with the environment variable NAME; a missing one is a ConfigError."""
    if "${" not in text or not _interpolating.get():
        return text

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(key, text, f"environment variable {name} to be set")
        return os.environ[name]

    return _ENV_REFERENCE.sub(lookup, text)


def string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, value, "a string")
    return interpolate(key, value)


def nonempty_string(key: str, value: Any) -> str:
    text = string(key, value)
    if not text:
        raise ConfigError(key, value, "a non-empty string")
    return text


def optional(checker: Checker) -> Checker:
    """`checker`, letting None (the key's default: not set) through."""

    def check(key: str, value: Any) -> Any:
        return None if value is None else checker(key, value)

    return check


def size(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(key, value, "a size in bytes: a whole number >= 0")
    return value


def positive_int(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(key, value, "a whole number >= 1")
    return value


def duration(key: str, value: Any) -> float:
    if not _is_number(value) or value < 0 or value != value:
        raise ConfigError(key, value, "a duration in seconds: a number >= 0")
    return float(value)


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")
    return value


def string_list(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, value, "a list of strings")
    return tuple(interpolate(key, v) for v in value)


def string_table(key: str, value: Any) -> dict[str, str]:
    """A table of names to non-empty strings (`rename`)."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(key, value, "a table of string keys to string values")
    return {k: nonempty_string(f"{key}.{k}", v) for k, v in value.items()}


# RFC 9110 token: what a header name may be made of.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _header_value(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, HIDDEN, "a string")
    try:
        text = interpolate(key, value)
    except ConfigError as exc:
        raise ConfigError(key, HIDDEN, exc.expected) from None
    if "\r" in text or "\n" in text:
        raise ConfigError(key, HIDDEN, "a header value without line breaks")
    if text[:1].isspace():
        raise ConfigError(key, HIDDEN, "a header value without leading spaces")
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise ConfigError(
            key, HIDDEN, "a header value of latin-1 characters (HTTP cannot carry others)"
        ) from None
    return text


def headers(key: str, value: Any) -> dict[str, str]:
    """HTTP headers, checked as requests will send them; every mistake, values hidden."""
    if not isinstance(value, Mapping):
        raise ConfigError(key, HIDDEN, "a table of header names to string values")
    checked: dict[str, str] = {}
    problems: list[ConfigProblem] = []
    for name, text in value.items():
        where = f"{key}.{name}"
        try:
            if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
                raise ConfigError(
                    where, HIDDEN, "a header name: letters, digits and !#$%&'*+-.^_`|~"
                )
            checked[name] = _header_value(where, text)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError.of(problems)
    return checked


_shown_url = Scrubber()  # userinfo and sensitive query parameters out of error messages


def url(key: str, value: Any) -> str:
    """An http(s) URL with a host and, if any, a port from 1 to 65535."""
    text = nonempty_string(key, value)
    shown = _shown_url(value)
    try:
        parts = urlsplit(text)
    except ValueError:  # such as an unclosed IPv6 bracket
        raise ConfigError(key, shown, "an http:// or https:// URL with a host") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, shown, "an http:// or https:// URL with a host")
    try:
        port = parts.port
    except ValueError:  # out of range, or not a number
        port = 0
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(key, shown, "a port from 1 to 65535")
    return text


def path(key: str, value: Any) -> Path:
    """Absolute: relative to the working directory now. Not resolved: a symlinked directory
    is the operator's to repoint."""
    return Path(os.path.abspath(nonempty_string(key, value)))


def file_path(key: str, value: Any) -> Path:
    """The path of a file the bridge writes: absolute, and not an existing directory."""
    checked = path(key, value)
    if checked.is_dir():
        raise ConfigError(key, value, "the path of a file, not a directory")
    return checked


def existing_file(key: str, value: Any) -> str:
    """The absolute path of a file that exists (a certificate, a key)."""
    checked = path(key, value)
    if not checked.is_file():
        raise ConfigError(key, value, "the path of an existing file")
    return str(checked)


def file_mode(key: str, value: Any) -> int:
    if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", value):
        return int(value.replace("o", ""), 8)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777:
        return value
    raise ConfigError(key, value, 'an octal file mode as text, such as "0640"')


def spool_fsync(key: str, value: Any) -> str | float:
    if value in ("never", "batch"):
        return str(value)
    if _is_number(value) and value > 0:
        return float(value)
    raise ConfigError(key, value, '"never", "batch", or an interval in seconds > 0')


def choice(*choices: str) -> Checker:
    def check(key: str, value: Any) -> str:
        if value not in choices:
            raise ConfigError(key, value, "one of " + ", ".join(repr(c) for c in choices))
        return str(value)

    return check

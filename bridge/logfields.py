"""How a log event's keys become the event schema's, once: shared by `bridge.logging` (stdlib
records) and `bridge.structlogging` (structlog event dicts).

A structlog event dict repeats what the envelope already says (`timestamp`, `level`), names
its logger `logger`, and carries its exception as `exc_info` (or, once `format_exc_info` or
`dict_tracebacks` ran, as `exception`). `split_event_dict` maps each of these onto the
bridge's own key (the envelope's `level`, `log.logger`, `code.*`, `exception.*`) so that
no key is written twice; everything else is the user's, passed on as the event's arguments.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["DROPPED_KEYS", "code_fields", "event_level", "split_event_dict"]

# structlog's level names (`add_log_level`, the logger's method names) -> the bridge's levels.
LEVELS = {
    "debug": "debug",
    "notset": "debug",
    "info": "info",
    "msg": "info",
    "warning": "warning",
    "warn": "warning",
    "error": "error",
    "exception": "error",
    "critical": "error",
    "fatal": "error",
}
# The envelope already carries the moment (`timestamp`); the others are structlog's plumbing
# (`ProcessorFormatter`'s record and marker).
DROPPED_KEYS = frozenset({"timestamp", "_record", "_from_structlog"})
_LEVEL_KEYS = ("level", "log_level")
_LOGGER_KEYS = ("logger", "logger_name")
# `CallsiteParameterAdder`'s keys that the stdlib route writes as `code.*` too.
_CODE_KEYS = {"pathname": "code.filepath", "lineno": "code.lineno", "func_name": "code.function"}

Describe = Callable[[BaseException], dict[str, str]]


def code_fields(path: str, line: int, function: str | None) -> dict[str, Any]:
    """Where the log call was made, under OpenTelemetry's names."""
    fields: dict[str, Any] = {"code.filepath": path, "code.lineno": line}
    if function:
        fields["code.function"] = function
    return fields


def event_level(value: object) -> str | None:
    """The bridge level of a structlog level name, or None for a name it does not know."""
    return LEVELS.get(value.lower()) if isinstance(value, str) else None


def _exception_of(exc_info: object) -> BaseException | None:
    """The exception `exc_info` names: True (the one being handled), an exception, or a
    `sys.exc_info()` tuple."""
    if exc_info is True:
        return sys.exc_info()[1]
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        exc = exc_info[1]
        return exc if isinstance(exc, BaseException) else None
    return None


def _rendered_exception(value: object, scrub: Callable[[str], str]) -> dict[str, str] | None:
    """`exception.*` from what `format_exc_info` (a traceback's text) or `dict_tracebacks`
    (a list of dicts) left, for a processor placed after them."""
    if isinstance(value, str):
        text = scrub(value)
        last = text.rstrip().rpartition("\n")[2]
        kind, _, message = last.partition(": ")
        return {
            "exception.type": kind.strip(),
            "exception.message": message,
            "exception.stacktrace": text,
        }
    if isinstance(value, list) and value and isinstance(value[-1], Mapping):
        last_exc = value[-1]
        lines = []
        for stack in value:
            for frame in stack.get("frames", ()) if isinstance(stack, Mapping) else ():
                if isinstance(frame, Mapping):
                    lines.append(
                        f'  File "{frame.get("filename")}", line {frame.get("lineno")}, '
                        f"in {frame.get('name')}"
                    )
            if isinstance(stack, Mapping):
                lines.append(f"{stack.get('exc_type')}: {stack.get('exc_value')}")
        return {
            "exception.type": str(last_exc.get("exc_type", "")),
            "exception.message": scrub(str(last_exc.get("exc_value", ""))),
            "exception.stacktrace": scrub("\n".join(lines)),
        }
    return None


def split_event_dict(
    event_dict: Mapping[str, Any], describe: Describe, scrub: Callable[[str], str]
) -> tuple[str, str | None, dict[str, Any], dict[str, Any]]:
    """(event, level or None, the bridge's fields, the user's arguments) of one structlog
    event dict; `describe` makes `exception.*` of an exception, `scrub` cleans a rendered
    traceback. The dict itself is left as it was."""
    fields: dict[str, Any] = {}
    arguments: dict[str, Any] = {}
    level: str | None = None
    rendered: object = None
    for key, value in event_dict.items():
        if key == "event" or key in DROPPED_KEYS:
            continue
        if key in _LEVEL_KEYS and (known := event_level(value)) is not None:
            level = level or known
        elif key in _LOGGER_KEYS and isinstance(value, str):
            fields.setdefault("log.logger", value)
        elif key in _CODE_KEYS:
            fields[_CODE_KEYS[key]] = value
        elif key == "exc_info":
            exc = _exception_of(value)
            if exc is not None:
                fields.update(describe(exc))
        elif key == "exception":
            rendered = value
        elif key in ("stack", "stack_info") and isinstance(value, str):
            fields["log.stack_info"] = value
        else:
            arguments[str(key)] = value
    if rendered is not None and "exception.type" not in fields:
        exception = _rendered_exception(rendered, scrub)
        if exception is None:
            arguments["exception"] = rendered
        else:
            fields.update(exception)
    raw_event = event_dict.get("event", "")
    event = raw_event if isinstance(raw_event, str) else str(raw_event)
    return event, level, fields, arguments

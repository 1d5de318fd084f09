"""Standard-library logging as bridge events: the `loggers` key routes loggers into the sinks.

`attach_loggers(["myapp", "sqlalchemy.engine"], emitter, app)` adds one `BridgeHandler` to
each named logger; their records become events (`signal = "logging"`, `event` = the message)
that go through the app's pipeline like any signal: envelope, request context, redaction,
pseudonymization (a record's `extra` keys are fields like a signal's arguments), size
limits, the same JSON lines. The bridge adds handlers and nothing else: it never changes a
logger's level, its propagation or the root logger, so a logger set to WARNING still sends
only warnings and errors.

Several apps in one process may route the same logger; like a custom signal, a record goes to
the bridge of the app it was logged in (inside its request or app context), and one logged
outside any app to every bridge that routes the logger. A record logged inside an app whose
bridge does not route it (or that has none) is nobody else's.

Each event says where it was logged (`code.filepath`, `code.lineno`, `code.function`) and
carries the record's exception as `exception.*`, once. An exception that Flask both signals
(`got_request_exception`, the `request.exception` event, which keeps the stack trace) and
logs (`app.logger.error` in `log_exception`) is described in the log record's event without
its stack: `exception.stacktrace_in` names the event that has it, in the same request.

structlog: `bridge.structlogging.StructlogBridge` is the processor that connects a structlog
chain. A record that structlog handed to a listed stdlib logger (`render_to_log_kwargs`, or
`ProcessorFormatter.wrap_for_formatter`) is also understood: its event dict's keys are mapped
like the processor's (`bridge.logfields`), and the call site structlog's own code stands for
is left out.

Loops are impossible by construction: a record logged while a bridge handler is emitting on
the same thread (a sink, a processor or the encoder logging), any record from the bridge's own
background threads (named `bridge-...`), and `urllib3`/`requests` records while the bridge is
sending (`with sending():`) are ignored. The handler never raises: failures are counted in
`stats()["receiver_errors"]` through the emitter's guard.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import flask.signals
import structlog
from flask import Flask
from flask.globals import _cv_app, _cv_request
from pythonjsonlogger.core import RESERVED_ATTRS

from bridge.emitter import Emitter
from bridge.logfields import code_fields, split_event_dict
from bridge.signals import BUILTIN_SIGNALS, event_name, expand_signal_names

__all__ = [
    "LOGGING_SIGNAL",
    "BridgeHandler",
    "attach_loggers",
    "emitting",
    "ignored",
    "sending",
    "signaled_exception",
]

LOGGING_SIGNAL = "logging"
BRIDGE_THREAD_PREFIX = "bridge-"
HTTP_CLIENT_LOGGERS = ("urllib3", "requests")

# Attributes every LogRecord has (python-json-logger's list; `taskName` is 3.12+), plus the
# private keys structlog's stdlib integration adds: none of these is a user's `extra` field.
_NOT_EXTRA = frozenset(RESERVED_ATTRS) | {"taskName", "_logger", "_name", "_from_structlog"}
# A record whose call site is in structlog's own code was handed over by structlog.
_STRUCTLOG_DIR = os.path.dirname(structlog.__file__) + os.sep
# Where `signaled_exception` notes, in the request's environ, the exception Flask signaled.
SIGNALED_KEY = "bridge.logging.signaled_exception"


class _ThreadState(threading.local):
    emitting = False
    sending = 0


_state = _ThreadState()


@contextmanager
def sending() -> Iterator[None]:
    """Mark the current thread as sending for the bridge: its HTTP client records are ignored.

    Background sink threads are ignored anyway (by name); this covers the bridge sending on a
    caller's thread (`flask bridge check` probing a collector, for example).
    """
    _state.sending += 1
    try:
        yield
    finally:
        _state.sending -= 1


def level_name(levelno: int) -> str:
    """The bridge level of a stdlib level number: critical counts as error."""
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


def _is_http_client(name: str) -> bool:
    return any(name == root or name.startswith(root + ".") for root in HTTP_CLIENT_LOGGERS)


@contextmanager
def emitting() -> Iterator[None]:
    """Mark the current thread as emitting a log event: what it logs meanwhile is ignored."""
    _state.emitting = True
    try:
        yield
    finally:
        _state.emitting = False


def ignored(logger_name: str) -> bool:
    """Log events that could feed back into the bridge: see the module docstring."""
    if _state.emitting:
        return True
    if threading.current_thread().name.startswith(BRIDGE_THREAD_PREFIX):
        return True
    return bool(_state.sending) and _is_http_client(logger_name)


def _message(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    """The formatted message, and the fields that record what went wrong formatting it."""
    try:
        return record.getMessage(), {}
    except Exception as exc:  # a bad format string or a failing __str__ still makes an event
        try:
            raw = str(record.msg)
        except Exception:
            raw = f"<{type(record.msg).__qualname__}: str() failed>"
        return raw, {"log.format_error": f"{type(exc).__name__}: {exc}"}


class BridgeHandler(logging.Handler):
    """Turns log records into events shipped through one app's `Emitter`.

    With `app`, only records logged inside that app, or outside any app, are taken (the app is
    held weakly: a handler on a global logger must not keep it alive). Thread-safe without the
    handler lock: `Emitter.emit` already is, and taking the lock would serialize every logging
    call of the process behind the bridge.
    """

    def __init__(
        self,
        emitter: Emitter,
        level: int = logging.NOTSET,
        *,
        dedupe: bool = False,
        app: Flask | None = None,
    ) -> None:
        super().__init__(level)
        self.emitter = emitter
        self._dedupe = dedupe
        self._seen = threading.local()
        self._app = None if app is None else weakref.ref(app)

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if ignored(record.name):
            return
        if self._app is not None:
            app_ctx = _cv_app.get(None)
            if app_ctx is not None and app_ctx.app is not self._app():
                return  # logged in another app: that app's bridge, if any, takes it
        # A record propagating through two listed loggers ("myapp", "myapp.db") reaches this
        # handler twice, on the same thread, one call after the other: send it once.
        if self._dedupe:
            last: weakref.ref[logging.LogRecord] | None = getattr(self._seen, "record", None)
            if last is not None and last() is record:
                return
            self._seen.record = weakref.ref(record)
        with emitting(), self.emitter.guard:
            self._emit(record)

    def _emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, Any] = {"log.logger": record.name}
        extra = {key: value for key, value in record.__dict__.items() if key not in _NOT_EXTRA}
        if not record.pathname.startswith(_STRUCTLOG_DIR):
            fields.update(code_fields(record.pathname, record.lineno, record.funcName))
            arguments = extra
            event, format_fields = _message(record)
            fields.update(format_fields)
        else:  # structlog's event dict, as `extra` (render_to_log_kwargs) or as the message
            if isinstance(record.msg, Mapping) and "event" in record.msg and not record.args:
                extra.update(record.msg)  # ProcessorFormatter.wrap_for_formatter
                event = str(record.msg["event"])
            else:
                event, format_fields = _message(record)
                fields.update(format_fields)
            _, _, mapped, arguments = split_event_dict(
                extra, self.emitter.exception_fields, self._scrub
            )
            fields.update(mapped)
        exc_info = record.exc_info
        if exc_info and exc_info[1] is not None:
            fields.update(self.emitter.exception_fields(exc_info[1]))
            if exc_info[1] is signaled_exception():
                del fields["exception.stacktrace"]
                fields["exception.stacktrace_in"] = self._exception_event
        if record.stack_info:
            fields["log.stack_info"] = record.stack_info
        self.emitter.emit(
            LOGGING_SIGNAL, event, level_name(record.levelno), fields=fields, arguments=arguments
        )

    @property
    def _exception_event(self) -> str:
        """The event Flask's `got_request_exception` becomes for this bridge."""
        spec = BUILTIN_SIGNALS["got_request_exception"]
        return event_name(spec, self.emitter.settings.rename)

    def _scrub(self, text: str) -> str:
        emitter = self.emitter
        return emitter.scrubber.with_secrets(emitter.request_secrets())(text)


def signaled_exception() -> BaseException | None:
    """The exception Flask signaled (`got_request_exception`) in the current request, when
    the bridge writes that signal's event: its stack trace is there already."""
    ctx = _cv_request.get(None)
    if ctx is None:
        return None
    exc = ctx.request.environ.get(SIGNALED_KEY)
    return exc if isinstance(exc, BaseException) else None


def _note_signaled(exception: Any) -> None:
    """`got_request_exception`'s receiver: Flask sends it before it logs the exception."""
    ctx = _cv_request.get(None)
    if ctx is not None and isinstance(exception, BaseException):
        ctx.request.environ[SIGNALED_KEY] = exception


def _nested(loggers: Sequence[logging.Logger]) -> bool:
    """Is one of the loggers an ancestor of another (so a record can reach both)?"""
    listed = {id(logger) for logger in loggers}
    for logger in loggers:
        parent = logger.parent
        while parent is not None:
            if id(parent) in listed:
                return True
            parent = parent.parent
    return False


def attach_loggers(
    logger_names: Sequence[str], emitter: Emitter, app: Flask | None = None
) -> Callable[[], None]:
    """Add a `BridgeHandler` for `emitter` (serving `app`) to each named logger; return the
    function that removes it again (idempotent). An empty list attaches nothing."""
    if not logger_names:
        return lambda: None
    loggers = [logging.getLogger(name) for name in dict.fromkeys(logger_names)]
    handler = BridgeHandler(emitter, dedupe=_nested(loggers), app=app)
    for logger in loggers:
        logger.addHandler(handler)
    # Only when this bridge writes `request.exception` may a log record leave its stack out.
    noting = app is not None and "got_request_exception" in expand_signal_names(
        emitter.settings.signals
    )

    # One receiver per attachment, disconnected from every sender at once: the app may be
    # gone by then (collected), and blinker would keep a receiver connected to a dead sender.
    def note_signaled(sender: Any, /, exception: Any = None, **extra: Any) -> None:
        _note_signaled(exception)

    if noting:
        flask.signals.got_request_exception.connect(note_signaled, sender=app, weak=False)

    def detach() -> None:
        for logger in loggers:
            logger.removeHandler(handler)
        if noting:
            flask.signals.got_request_exception.disconnect(note_signaled)

    return detach

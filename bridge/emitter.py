"""One app's pipeline: event dict -> processors -> one JSON line -> every sink.

Built once per app in `init_app`; everything the hot path needs is precomputed here, so a
receiver does no configuration look-ups. Receivers call `emit` inside `with emitter.guard:`,
so a failing processor, encoder or sink is counted in `receiver_errors` and reported on stderr
at most once a minute, never raised into the request.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import structlog
from flask.globals import _cv_request

from bridge import forking
from bridge.config import HttpSinkSettings, Settings
from bridge.diagnostics import report
from bridge.events import (
    ENVELOPE_KEYS,
    HOST_NAME,
    REQUEST_CONTEXT_KEYS,
    exception_fields,
    request_fields,
    request_secrets,
    timestamp_and_id,
)
from bridge.processors import LineEncoder, MakeJsonSafe, Processor, SensitiveKeys
from bridge.redaction import Scrubber, url_secrets
from bridge.sinks.base import Sink

__all__ = ["Emitter"]

# Keys an application value (a signal argument, a log record's `extra`) may not take: it is
# kept as `args.<key>` instead, so that the envelope and the request context stay the bridge's.
PROTECTED_KEYS = ENVELOPE_KEYS | REQUEST_CONTEXT_KEYS

_pid = os.getpid()


@forking.at_fork_in_child
def _note_pid() -> None:
    global _pid
    _pid = os.getpid()


class _Guard:
    """`with emitter.guard:` swallows, counts and reports any exception of the block."""

    __slots__ = ("_emitter",)

    def __init__(self, emitter: Emitter) -> None:
        self._emitter = emitter

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        self._emitter.count_error(exc)
        return True


class Emitter:
    """Builds, processes, encodes and hands out the events of one Flask app."""

    def __init__(
        self,
        settings: Settings,
        sinks: Sequence[Sink],
        processors: Iterable[Processor] = (),
    ) -> None:
        self.settings = settings
        self.sinks = tuple(sinks)
        self.is_sensitive = SensitiveKeys(settings.redact_terms)
        # Exception text never quotes a configured secret (header values, URL credentials).
        self.scrubber = Scrubber(configured_secrets(settings), self.is_sensitive)
        self.make_safe = MakeJsonSafe(
            self.is_sensitive, max(256, settings.max_line_bytes // 4), self._scrub_in_request
        )
        self.user_processors = tuple(processors)
        # The user's processors see the real objects; making them safe always comes last.
        self.processors: tuple[Processor, ...] = (*self.user_processors, self.make_safe)
        self.encode = LineEncoder(settings.max_line_bytes, self.make_safe)
        self.guard = _Guard(self)
        self.receiver_errors = 0
        self._errors_lock = threading.Lock()
        self.service = settings.service
        self.taps: list[list[dict[str, Any]]] = []  # bridge.testing.capture_events
        forking.reset_in_child(self)

    def after_fork_in_child(self) -> None:
        """A parent's thread may have held the error lock at the fork: the child would hang."""
        self._errors_lock = threading.Lock()

    def emit(
        self,
        signal: str,
        event: str,
        level: str,
        fields: Mapping[str, Any] | None = None,
        arguments: Mapping[str, Any] | None = None,
        *,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        """Build one event (envelope, request context, fields, signal arguments) and ship it.

        `fields` are built by the bridge (a built-in signal's status code, template name,
        exception text) and, like the envelope and the request context, already JSON-safe and
        bounded; `arguments` carry application data and take the safe walk (conversion,
        redaction, truncation). Without user processors only they take it; with them, the
        whole event does, after the user's processors. An argument named like a key of the
        envelope, of the request context or of `fields` is kept as `args.<key>`.

        The request context is the current request's, or `context` when given: the fields a
        streamed response captured while its request was still there.
        """
        timestamp, event_id = timestamp_and_id()
        event_dict: dict[str, Any] = {
            "timestamp": timestamp,
            "level": level,
            "event": event,
            "signal": signal,
            "event_id": event_id,
            "service.name": self.service,
            "host.name": HOST_NAME,
            "process.pid": _pid,
        }
        if context is None:
            context = self.request_context()
        if context is not None:
            event_dict.update(context)
        if fields:
            event_dict.update(fields)
        if arguments:
            data: dict[str, Any] = {}
            for key, value in arguments.items():
                if key in PROTECTED_KEYS or (fields and key in fields):
                    key = f"args.{key}"
                data[key] = value
            if self.user_processors:
                event_dict.update(data)
            else:
                event_dict.update(self.make_safe.convert_mapping(data))
        if self.user_processors:
            self.ship(event_dict, level)
        else:
            self._write(event_dict)

    def request_context(self) -> dict[str, Any] | None:
        """The fields of the current request (cached in its environ), or None outside one."""
        ctx = _cv_request.get(None)
        if ctx is None:
            return None
        request = ctx.request
        rule = request.url_rule
        return request_fields(
            request.environ, rule.rule if rule else None, self.is_sensitive, request.view_args
        )

    def ship(self, event_dict: dict[str, Any], level: str) -> None:
        """Run the whole processor chain, encode once, and submit the line to every sink."""
        processed: Any = event_dict
        try:
            for processor in self.processors:
                processed = processor(self, level, processed)
        except structlog.DropEvent:
            return
        self._write(processed)

    def _write(self, event_dict: dict[str, Any]) -> None:
        if self.taps:
            for tap in self.taps:
                tap.append(dict(event_dict))
        line = self.encode(event_dict)
        for sink in self.sinks:
            sink.submit(line)

    def exception_fields(
        self, exc: BaseException, secrets: list[str] | None = None
    ) -> dict[str, str]:
        """`exception.*` fields with configured secrets and the current request's sensitive
        values (a `password` form field, the `Authorization` header) scrubbed; `secrets`
        instead of the current request's when given (see `request_secrets`)."""
        if secrets is None:
            secrets = self.request_secrets()
        return exception_fields(exc, self.scrubber.with_secrets(secrets))

    def _scrub_in_request(self, text: str) -> str:
        """An exception passed as a signal argument: its text is scrubbed of the current
        request's sensitive values too, as a request's own exception is."""
        return self.scrubber.with_secrets(self.request_secrets())(text)

    def request_secrets(self) -> list[str]:
        """The current request's sensitive values, kept for an exception raised after it is
        gone (a streamed body's)."""
        return request_secrets(self.is_sensitive)

    def count_error(self, exc: BaseException) -> None:
        with self._errors_lock:
            self.receiver_errors += 1
        report(
            f"receiver-{type(exc).__name__}",
            f"a signal receiver failed and was skipped: {type(exc).__name__}: {exc}",
        )

    def flush(self, timeout: float) -> bool:
        return _each_within(self.sinks, timeout, lambda sink, left: sink.flush(left))

    def close(self, timeout: float) -> bool:
        return _each_within(self.sinks, timeout, lambda sink, left: sink.close(left))

    def stats(self) -> dict[str, Any]:
        return {
            "sinks": {sink.name: sink.stats() for sink in self.sinks},
            "receiver_errors": self.receiver_errors,
        }


def configured_secrets(settings: Settings) -> list[str]:
    """Every http sink's header values and URL credentials: secrets wherever they appear."""
    found: list[str] = []
    for sink in settings.sinks:
        if isinstance(sink, HttpSinkSettings):
            found.extend(sink.headers.values())
            found.extend(url_secrets(sink.url))
    return found


def _each_within(
    sinks: Sequence[Sink], timeout: float, action: Callable[[Sink, float], bool]
) -> bool:
    """Apply `action(sink, seconds_left)` to every sink within one shared deadline."""
    deadline = time.monotonic() + timeout
    ok = True
    for sink in sinks:
        try:
            ok = bool(action(sink, max(0.0, deadline - time.monotonic()))) and ok
        except Exception as exc:
            report(f"lifecycle-{sink.name}", f"sink {sink.name} failed to flush/close: {exc}")
            ok = False
    return ok

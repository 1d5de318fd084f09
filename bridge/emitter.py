"""One app's pipeline: capture, then event -> one JSON line -> every sink.

Built once per app in `init_app`; everything the hot path needs is precomputed here, so a
receiver does no configuration look-ups. Inside a request `emit` only captures (the request's
list, `bridge.pending`) and `write_captured` builds and writes the request's events when it
ends; outside one, `emit` writes at once (or buffers, `bridge.threadbuffers`). Receivers call
`emit` inside `try` (or `with emitter.guard:`), so a failing processor, encoder or sink is
counted in `receiver_errors` and reported on stderr at most once a minute, never raised into
the request.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from threading import get_ident
from time import time_ns
from typing import Any

import orjson
import structlog
from flask.globals import _cv_request

from bridge import forking
from bridge.config import HttpSinkSettings, Settings
from bridge.correlation import current_user_id
from bridge.diagnostics import report
from bridge.eventlines import EventLines, renamed
from bridge.events import (
    HOST_NAME,
    REQUEST_CACHE_KEY,
    FinishedResponse,
    exception_fields,
    request_fields_of,
    request_secrets,
    timestamp_and_id,
)
from bridge.noise import Noise
from bridge.pending import MAX_EVENTS, Captured, Pending, current_pending, ship, ship_current
from bridge.processors import LineEncoder, MakeJsonSafe, Processor, SensitiveKeys
from bridge.pseudonyms import Pseudonymizer
from bridge.redaction import Scrubber, url_secrets
from bridge.sinks.base import Sink
from bridge.threadbuffers import allow_delay, buffer_of_this_thread, drain_all, settle

__all__ = ["Emitter"]

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

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
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
        hide = self.pseudonyms = Pseudonymizer.for_fields(settings)  # None: no field to hide
        self.lines = EventLines(settings.service, settings.max_line_bytes, self.make_safe, hide)
        # Outside a request, events wait (briefly) for a batch when the user allowed it
        # (`batch_outside_requests`), never with a `sync` sink (its user waits for the disk
        # when the signal is sent) or processors (they may read thread-local state).
        self.buffered = (
            settings.batch_outside_requests > 0
            and not self.user_processors
            and not any(getattr(sink, "sync", False) for sink in settings.sinks)
        )
        if self.buffered:
            allow_delay(settings.batch_outside_requests)
        self.guard = _Guard(self)
        self.receiver_errors = 0
        self._errors_lock = threading.Lock()
        self.service = settings.service
        self.log_user_id = settings.log_user_id
        self.noise = Noise.of(settings)  # None: every event is written (`bridge.noise`)
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
        fields: Mapping[str, Any] | FinishedResponse | None = None,
        arguments: Mapping[str, Any] | None = None,
        *,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        """Build one event (envelope, request context, fields, signal arguments) and ship it.

        `fields` are built by the bridge (a built-in signal's status code, template name,
        exception text), already JSON-safe and bounded; `arguments` carry application data
        and take the safe walk (conversion, redaction, truncation), after the user's
        processors if any. An argument named like a key of the envelope, of the request
        context or of `fields` is kept as `args.<key>`.

        Inside a request (on its own thread) the event is only captured (`_captured`) and
        written with the rest of the request's events when it ends (`bridge.pending`); user
        processors run now, since they may read the request. Elsewhere it is written at
        once, or waits in its thread's buffer (`batch_outside_requests`).

        The request context is the current request's, or `context` when given (a streamed
        response's, captured while its request was there). `level` is empty when `fields`
        is a `FinishedResponse`, whose level and fields are read when it is built.
        """
        if self.noise is not None:  # an excluded path, a level below the floor: nothing
            if not self.noise.admits(level, context, fields):
                return
            fields = self.noise.limit(fields)
        if context is None:
            pending = current_pending()
            ctx = _cv_request.get(None)
            if pending is not None and pending.thread == get_ident():
                if self.user_processors:
                    self._capture_processed(pending, signal, event, level, fields, arguments)
                else:
                    pending.events.append(
                        self._captured(signal, event, level, fields, arguments, ctx)
                    )
                if len(pending.events) >= MAX_EVENTS:
                    ship(pending)
                return
            if self.buffered and ctx is None and not self.taps:  # `bridge.threadbuffers`
                buffer_of_this_thread().append(
                    self._captured(signal, event, level, fields, arguments, None)
                )
                return
            context = self._context_with_user()
            if context is None and pending is not None and pending.request_id:
                context = {"request_id": pending.request_id}  # a thread of the request
        if isinstance(fields, FinishedResponse):
            level, fields = fields.settle()
        if self.noise is not None and not self.noise.keeps(signal, event, level, fields, context):
            return
        now_ns = time_ns()
        if not self.user_processors and not self.taps:
            try:
                fragment = self.lines.context_fragment(context)
            except orjson.JSONEncodeError:  # a value middleware put in the environ
                fragment = None
            if fragment is not None:
                safe = self.lines.safe_arguments(arguments, fields)
                if safe and "user.id" in safe and context and "user.id" in context:
                    # the signal's own user (a logout's) wins: the dict way keeps it
                    fragment = None
            if fragment is not None:
                line = self.lines.splice(now_ns, signal, event, level, fields, safe, fragment)
                if line is not None:
                    for sink in self.sinks:
                        sink.submit(line)
                    return
        event_dict = self._event(now_ns, signal, event, level, fields, arguments, context)
        if self.user_processors:
            self.ship(event_dict, level)
        else:
            self._write(event_dict)

    def _event(
        self,
        now_ns: int,
        signal: str,
        event: str,
        level: str,
        fields: Mapping[str, Any] | None,
        arguments: Mapping[str, Any] | None,
        context: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """The event dict: envelope, request context, fields, then the arguments (made safe
        here unless user processors are to see them first)."""
        timestamp, event_id = timestamp_and_id(now_ns)
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
        if context is not None:
            event_dict.update(context)
        if fields:
            event_dict.update(fields)
        if arguments:
            data = renamed(arguments, fields)
            if self.user_processors:
                event_dict.update(data)
            else:
                event_dict.update(self.make_safe.convert_mapping(data))
        return event_dict

    def _captured(
        self,
        signal: str,
        event: str,
        level: str,
        fields: Mapping[str, Any] | FinishedResponse | None,
        arguments: Mapping[str, Any] | None,
        ctx: Any,
    ) -> Captured:
        """What an event's line is built from later. Everything is read now: the request's
        fields (cached in its environ: a URL variable the app pops later stays redacted)
        and the arguments, made safe (a user object's `get_id()` may need the request's
        database session, gone at its end; a list changed afterwards is logged as it was).
        The request object is kept for the context's fragment."""
        now_ns = time_ns()
        request = None
        user_id = None
        if ctx is not None:
            request = ctx.request
            if REQUEST_CACHE_KEY not in request.environ:  # the request's first event
                request_fields_of(request, self.is_sensitive)
            if self.log_user_id:
                user_id = current_user_id()
        if arguments:
            arguments = self.lines.safe_arguments(
                arguments, None if isinstance(fields, FinishedResponse) else fields
            )
            if arguments and "user.id" in arguments:  # the signal's own user (a logout's)
                user_id = None
        return (self, now_ns, signal, event, level, fields, arguments, request, user_id)

    def _capture_processed(
        self,
        pending: Pending,
        signal: str,
        event: str,
        level: str,
        fields: Mapping[str, Any] | FinishedResponse | None,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        """Inside a request, with user processors: they run now (they may read the request
        or `g`), and the result is made safe now; encoding and writing wait for the
        request's end."""
        if isinstance(fields, FinishedResponse):
            level, fields = fields.settle()
        event_dict = self._event(
            time_ns(), signal, event, level, fields, arguments, self._context_with_user()
        )
        processed: Any = event_dict
        try:
            for processor in self.user_processors:
                processed = processor(self, level, processed)
        except structlog.DropEvent:
            return
        safe = self.make_safe(self, level, processed)
        pending.events.append((self, None, safe, None, None, None, None, None, None))

    def write_captured(self, captured: list[Captured]) -> None:
        """Build, encode and write events captured during a request (`bridge.pending`): one
        pass, then one `submit_many` per sink. Never raises: an event that fails is counted
        in `receiver_errors` and reported, and the others are still written.

        Lines are spliced (`bridge.eventlines`); an event the splice declines, one processed
        at capture, or any while `capture_events()` watches, is built as a dict and encoded
        whole, as outside a request.
        """
        if self.noise is not None:  # sampled once per request, now that its status is known
            captured = self.noise.sampled(captured)
        lines: list[bytes] = []
        splice = None if self.taps else self.lines.splice
        last_request: Any = None
        last_user: str | None = None
        context: dict[str, Any] | None = None
        fragment: bytes | None = b""
        for _, now_ns, signal, event, level, fields, safe, request, user_id in captured:
            try:
                if now_ns is None:  # built, processed and made safe at capture (processors)
                    lines.append(self._encode_watched(signal))
                    continue
                if request is not last_request or user_id != last_user:
                    last_request, last_user = request, user_id
                    context = (
                        None if request is None else request_fields_of(request, self.is_sensitive)
                    )
                    if context is not None and user_id is not None:
                        context = {**context, "user.id": user_id}
                    try:
                        fragment = self.lines.context_fragment(context)
                    except orjson.JSONEncodeError:  # a value middleware put in the environ:
                        fragment = None  # the dict way makes it safe
                if not level:  # request.finished: read from its response now
                    level, fields = fields.settle()
                line = None
                if splice and fragment is not None:
                    line = splice(now_ns, signal, event, level, fields, safe, fragment)
                if line is None:
                    event_dict = self._event(now_ns, signal, event, level, fields, safe, context)
                    line = self._encode_watched(event_dict)
                lines.append(line)
            except Exception as exc:
                self.count_error(exc)
        if not lines:
            return
        for sink in self.sinks:
            try:
                sink.submit_many(lines)
            except Exception as exc:
                self.count_error(exc)

    def _encode_watched(self, event_dict: MutableMapping[str, Any]) -> bytes:
        """The dict way: fields hidden (`bridge.pseudonyms`), a copy to taps, then the line."""
        if self.pseudonyms is not None:
            event_dict = self.pseudonyms.apply(event_dict)
        for tap in self.taps:
            tap.append(dict(event_dict))
        return self.encode(event_dict)

    def request_context(self) -> dict[str, Any] | None:
        """The fields of the current request (cached in its environ), or None outside one."""
        ctx = _cv_request.get(None)
        return None if ctx is None else request_fields_of(ctx.request, self.is_sensitive)

    def _context_with_user(self) -> dict[str, Any] | None:
        """The current request's fields, with `user.id` when Flask-Login has its user."""
        context = self.request_context()
        if context is not None and self.log_user_id:
            user_id = current_user_id()
            if user_id is not None:
                context = {**context, "user.id": user_id}
        return context

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
        line = self._encode_watched(event_dict)
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
        ship_current()  # inside a request: its events so far count as accepted
        drain_all()  # and every thread's events outside requests
        return _each_within(self.sinks, timeout, lambda sink, left: sink.flush(left))

    def close(self, timeout: float) -> bool:
        ship_current()
        settle(min(timeout, 1.0))
        return _each_within(self.sinks, timeout, lambda sink, left: sink.close(left))

    def stats(self) -> dict[str, Any]:
        noise = {} if self.noise is None else {"suppressed": self.noise.suppressed()}
        sinks = {sink.name: sink.stats() for sink in self.sinks}
        return {"sinks": sinks, **noise, "receiver_errors": self.receiver_errors}


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

"""`SignalBridge`: the Flask extension that connects signals to an app's event pipeline.

`init_app` reads the configuration once, builds the sinks and the `Emitter`, and connects one
receiver per configured signal. Built-in signals are connected with `sender=app`, so two apps
in one process never see each other's events; custom signals are process-wide and routed by
`bridge.customroute`. Blinker holds the receivers strongly (`weak=False`: it drops a
garbage-collected receiver without a word); the bridge keeps only weak references to them.

Nothing the bridge makes refers to the app strongly (the WSGI clock, the custom routes and the
log handlers hold it weakly), so an app its user drops is freed by reference counting alone,
and a `weakref.finalize` then releases what the bridge made for it (receivers, log handlers,
files, threads), as `close()` would.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import blinker
import flask.signals
from flask import Flask
from flask.globals import _cv_app, _cv_request

from bridge.audit.sink import AuditSink
from bridge.authsignals import AuthWriter
from bridge.config import (
    FileSinkSettings,
    HttpSinkSettings,
    Settings,
    SinkSettings,
    StdoutSinkSettings,
    load_settings,
)
from bridge.customroute import CustomRoute
from bridge.delivery.engine import ABORT_GRACE
from bridge.emitter import Emitter
from bridge.errors import ConfigError
from bridge.logging import attach_loggers
from bridge.processors import Processor
from bridge.signals import BuiltinSignal, resolve_signals
from bridge.sinks.base import Sink
from bridge.sinks.file import FileSink
from bridge.sinks.stdout import StdoutSink
from bridge.streaming import (
    EventName,
    FinishedResponse,
    RequestClock,
    StreamedRequest,
    defer,
)
from bridge.workerstats import Publisher, publish

__all__ = ["SignalBridge"]


Receiver = Callable[..., None]


def build_sink(settings: SinkSettings, index: int) -> Sink:
    """The sink for one `[[sinks]]` table; configuration errors name `sinks[index]`."""
    if isinstance(settings, FileSinkSettings):
        if settings.audit:
            return AuditSink(settings, config_key=f"sinks[{index}]")
        return FileSink(settings, config_key=f"sinks[{index}]")
    if isinstance(settings, StdoutSinkSettings):
        return StdoutSink(settings)
    if isinstance(settings, HttpSinkSettings):
        from bridge.sinks.http import HttpSink  # requests is only imported when needed

        return HttpSink(settings, config_key=f"sinks[{index}]")
    raise ConfigError(f"sinks[{index}].type", settings.type, "file, stdout or http")


# --- built-in signals --------------------------------------------------------------------------


def _builtin_receiver(emitter: Emitter, spec: BuiltinSignal, event: str) -> Receiver:
    """One built-in signal's receiver. Failures are counted by the emitter, never raised;
    `try` rather than `with emitter.guard`: it costs nothing when nothing fails."""
    signal_name = spec.signal.name
    fields_of = spec.fields
    describe = emitter.exception_fields
    level = spec.level
    emit = emitter.emit

    if spec.carries_data:  # e.g. a flashed message: application data, made safe like any

        def receive_data(sender: Any, /, **kwargs: Any) -> None:
            try:
                emit(signal_name, event, level, arguments=fields_of(kwargs, describe))
            except Exception as exc:
                emitter.count_error(exc)

        return receive_data

    def receive(sender: Any, /, **kwargs: Any) -> None:
        try:
            emit(signal_name, event, level, fields_of(kwargs, describe))
        except Exception as exc:
            emitter.count_error(exc)

    return receive


def _finished_receiver(
    emitter: Emitter, finished: EventName | None, exception: EventName | None
) -> Receiver:
    """`request.finished` (when `finished` is configured); for a streamed response, deferred
    until its body is done, when a failing body also gives `request.exception` (when
    `exception` is configured): see `bridge.streaming`. Inside a request the response is
    only noted; its status, size and the duration are read when the request's events are
    written (`FinishedResponse`), from the same, final, response object."""

    def on_request_finished(sender: Any, /, response: Any = None, **extra: Any) -> None:
        try:
            ctx = _cv_request.get(None)
            noise = emitter.noise
            if ctx is not None and noise is not None and noise.excludes(ctx.request):
                noise.count("excluded")
                return  # an excluded path writes nothing, a streamed body's events neither
            if ctx is not None and getattr(response, "is_streamed", False):
                environ = ctx.request.environ
                status = int(getattr(response, "status_code", 0))
                size = getattr(response, "content_length", None)
                streamed = StreamedRequest(emitter, finished, exception, environ, status, size)
                if defer(environ, streamed):
                    return
            if finished is None:
                return
            noted = FinishedResponse(response, None if ctx is None else ctx.request.environ)
            emitter.emit(finished[0], finished[1], "", noted)
        except Exception as exc:
            emitter.count_error(exc)

    return on_request_finished


# --- the extension -----------------------------------------------------------------------------

_open_emitters: weakref.WeakSet[Emitter] = weakref.WeakSet()


# Pipelines of collected apps being closed on threads of their own (`_release_on_thread`).
_releasing: dict[threading.Thread, Emitter] = {}


def _close_all_at_exit() -> None:
    """Close every open pipeline, and let those being released finish, within one deadline:
    the longest `shutdown_timeout`. A process with several apps (or a dropped app still
    flushing) exits as soon as one with a single app would, not after the sum of their
    timeouts: an orchestrator's grace period is per process."""
    emitters = list(_open_emitters)
    releasing = list(_releasing.items())
    timeouts = [e.settings.shutdown_timeout for e in emitters + [e for _, e in releasing]]
    deadline = time.monotonic() + max(timeouts, default=0.0)
    for emitter in emitters:
        left = max(0.0, deadline - time.monotonic())
        emitter.close(min(emitter.settings.shutdown_timeout, left))
    for thread, _ in releasing:  # they started earlier, each with its own deadline
        thread.join(max(0.0, deadline - time.monotonic()) + ABORT_GRACE)


def _release_on_thread(emitter: Emitter) -> None:
    try:
        emitter.close(emitter.settings.shutdown_timeout)
    finally:
        _releasing.pop(threading.current_thread(), None)


atexit.register(_close_all_at_exit)


def open_emitters() -> list[Emitter]:
    """The pipelines of every app bridged in this process and not closed yet."""
    return list(_open_emitters)


class _AppBinding:
    """What `init_app` made for one app, and its release: by `close()`, or by a finalizer
    when the app is garbage collected (so it refers to nothing of the app)."""

    def __init__(self, app: Flask, emitter: Emitter) -> None:
        self.emitter = emitter
        self.connections: list[tuple[blinker.Signal, weakref.ref[Receiver]]] = []
        self.detach_loggers: Callable[[], None] = lambda: None
        self.stats_publisher: Publisher | None = None
        self.released = False
        self.finalizer = weakref.finalize(app, self.release_collected)
        self.finalizer.atexit = False  # at exit, _close_all_at_exit closes every pipeline

    def connect(self, signal: blinker.Signal, receiver: Receiver, app: Flask) -> None:
        signal.connect(receiver, sender=app, weak=False)
        self.connections.append((signal, weakref.ref(receiver)))

    def release(self, timeout: float | None = None) -> bool:
        """Disconnect receivers and log handlers, then flush within `timeout` (default:
        `shutdown_timeout`) and close the sinks. Once; later calls return True."""
        if not self._disconnect():
            return True
        emitter = self.emitter
        return emitter.close(emitter.settings.shutdown_timeout if timeout is None else timeout)

    def release_collected(self) -> None:
        """The app was garbage collected, on whatever thread dropped it (a request thread,
        maybe): disconnect at once, and flush and close on a thread of its own, so no request
        waits up to `shutdown_timeout` for a collector. A daemon that the bridge's exit
        handler joins within the deadline it gives every pipeline: as a non-daemon thread, the
        interpreter would wait for it first, and close the other apps only after it."""
        if not self._disconnect():
            return
        emitter = self.emitter
        thread = threading.Thread(
            target=_release_on_thread,
            args=(emitter,),
            name=f"bridge-release-{emitter.service}",
            daemon=True,
        )
        _releasing[thread] = emitter
        thread.start()

    def _disconnect(self) -> bool:
        """Undo `init_app`'s connections; False when that was done already."""
        if self.released:
            return False
        self.released = True
        self.finalizer.detach()
        for signal, receiver_ref in self.connections:
            receiver = receiver_ref()
            if receiver is not None:
                signal.disconnect(receiver)
        CustomRoute.remove(self.emitter)
        self.detach_loggers()
        if self.stats_publisher is not None:
            self.stats_publisher.stop()
        _open_emitters.discard(self.emitter)
        return True


class SignalBridge:
    """Turns an app's Flask signals and custom blinker signals into JSON-lines events.

    `SignalBridge(app)` or `bridge = SignalBridge(); bridge.init_app(app)`. Configuration is
    read once, in `init_app`, from `BRIDGE_CONFIG` (a TOML file), `BRIDGE_*` app.config keys and
    environment variables; a mistake raises `ConfigError` naming the key. A second `init_app`
    on the same app raises `RuntimeError`. Receivers never raise into the request: failures are
    counted in `stats()["receiver_errors"]` and reported on stderr at most once a minute.

    `processors` are structlog processors run on every event before the bridge makes it JSON-safe
    and redacts it (so they see real objects; raise `structlog.DropEvent` to drop an event).
    """

    def __init__(self, app: Flask | None = None, *, processors: Iterable[Processor] = ()) -> None:
        self._processors = tuple(processors)
        self._bindings: weakref.WeakKeyDictionary[Flask, _AppBinding] = weakref.WeakKeyDictionary()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the configuration, build the sinks and connect the configured signals."""
        if "bridge" in app.extensions:
            raise RuntimeError(
                "flask-signal-bridge is already initialized on this app; "
                "call init_app once per app (or create the SignalBridge without an app)"
            )
        settings = load_settings(app.config, os.environ, default_service=app.import_name)
        builtins, customs = resolve_signals(settings.signals, settings.rename, settings.auth)
        sinks = self._build_sinks(settings)
        emitter = Emitter(settings, sinks, self._processors)
        binding = _AppBinding(app, emitter)
        # Each worker's counters, for `flask bridge stats`: started by its first request.
        binding.stats_publisher = publish(
            app, emitter, settings.stats_dir or None, on_request=False
        )
        # Event names come renamed from resolve_signals.
        names = {spec.name: (spec.signal.name, spec.event) for spec in builtins}
        finished, exception = names.get("request_finished"), names.get("got_request_exception")
        for spec in builtins:
            if spec.name != "request_finished":
                binding.connect(spec.signal, _builtin_receiver(emitter, spec, spec.event), app)
        if finished is not None or exception is not None:  # a streamed body's exception too
            receiver = _finished_receiver(emitter, finished, exception)
            binding.connect(flask.signals.request_finished, receiver, app)
        writer = AuthWriter.of(settings)  # authentication signals (`bridge.authsignals`)
        for custom in customs:
            CustomRoute.add(app, emitter, custom, writer)
        if settings.loggers:
            binding.detach_loggers = attach_loggers(settings.loggers, emitter, app)
        if not isinstance(app.wsgi_app, RequestClock):
            app.wsgi_app = RequestClock(  # type: ignore[method-assign]
                app,
                app.wsgi_app,
                request_id_headers=settings.request_id_from,
                response_header=settings.request_id_echo,
                stats=binding.stats_publisher,
            )
        app.extensions["bridge"] = self
        self._bindings[app] = binding
        _open_emitters.add(emitter)

    @staticmethod
    def _build_sinks(settings: Settings) -> list[Sink]:
        sinks: list[Sink] = []
        try:
            for index, sink_settings in enumerate(settings.sinks):
                sinks.append(build_sink(sink_settings, index))
        except BaseException:
            for sink in sinks:
                sink.close(0.0)
            raise
        return sinks

    def _emitters(self, app: Flask | None) -> list[Emitter]:
        if app is not None:
            binding = self._bindings.get(app)
            if binding is None:
                raise RuntimeError("this SignalBridge was not initialized on that app")
            return [binding.emitter]
        return [binding.emitter for binding in self._bindings.values()]

    def emitter(self, app: Flask | None = None) -> Emitter:
        """The pipeline of `app` (default: the current app, or the only app)."""
        if app is None:
            app_ctx = _cv_app.get(None)
            if app_ctx is not None and app_ctx.app in self._bindings:
                app = app_ctx.app
            elif len(self._bindings) == 1:
                app = next(iter(self._bindings.keys()))
            elif not self._bindings:
                raise RuntimeError("this SignalBridge has no open app: closed, or no init_app")
            else:
                raise RuntimeError("several apps use this SignalBridge: pass app=")
        return self._emitters(app)[0]

    def flush(self, timeout: float = 5.0, *, app: Flask | None = None) -> bool:
        """Wait until every event accepted so far is delivered (file: written; http:
        acknowledged by the collector). False when `timeout` ran out; nothing is discarded."""
        deadline = time.monotonic() + timeout
        ok = True
        for emitter in self._emitters(app):
            ok = emitter.flush(max(0.0, deadline - time.monotonic())) and ok
        return ok

    def stats(self, *, app: Flask | None = None) -> dict[str, Any]:
        """Counters: `{"sinks": {name: {...}}, "receiver_errors": n}`, per sink name, and
        `"suppressed": {reason: n}` when noise control is configured (`bridge.noise`)."""
        return self.emitter(app).stats()

    def close(self, timeout: float | None = None, *, app: Flask | None = None) -> bool:
        """Disconnect receivers, flush within `timeout` (default: `shutdown_timeout`), stop
        threads and release files. Events still undelivered are counted as dropped (or stay in
        the spool). Idempotent. An app that is garbage collected is closed the same way, by
        itself (within `shutdown_timeout`)."""
        ok = True
        apps = [app] if app is not None else list(self._bindings.keys())
        for each in apps:
            binding = self._bindings.pop(each, None)
            if binding is None:
                continue
            each.extensions.pop("bridge", None)
            ok = binding.release(timeout) and ok
        return ok

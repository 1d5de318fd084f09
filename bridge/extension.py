"""`SignalBridge`: the Flask extension that connects signals to an app's event pipeline.

`init_app` reads the configuration once, builds the sinks and the `Emitter`, and connects one
receiver per configured signal. Built-in signals are connected with `sender=app`, so two apps
in one process never see each other's events; custom signals are process-wide and routed by
`_CustomRoute` (DESIGN.md section 2). Receivers are held strongly (`weak=False`): blinker
drops a garbage-collected receiver without a word.
"""

from __future__ import annotations

import atexit
import os
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import blinker
from flask import Flask
from flask.globals import _cv_app, _cv_request

from bridge.config import (
    FileSinkSettings,
    HttpSinkSettings,
    Settings,
    SinkSettings,
    StdoutSinkSettings,
    load_settings,
)
from bridge.emitter import Emitter
from bridge.errors import ConfigError
from bridge.events import REQUEST_START_KEY, request_duration_ms
from bridge.logging import attach_loggers
from bridge.processors import Processor
from bridge.signals import BuiltinSignal, CustomSignal, resolve_signals
from bridge.sinks.base import Sink
from bridge.sinks.file import FileSink
from bridge.sinks.stdout import StdoutSink

__all__ = ["SignalBridge"]

Receiver = Callable[..., None]


def build_sink(settings: SinkSettings, index: int) -> Sink:
    """The sink for one `[[sinks]]` table; configuration errors name `sinks[index]`."""
    if isinstance(settings, FileSinkSettings):
        return FileSink(settings, config_key=f"sinks[{index}]")
    if isinstance(settings, StdoutSinkSettings):
        return StdoutSink(settings)
    if isinstance(settings, HttpSinkSettings):
        from bridge.sinks.http import HttpSink  # requests is only imported when needed

        return HttpSink(settings, config_key=f"sinks[{index}]")
    raise ConfigError(f"sinks[{index}].type", settings.type, "file, stdout or http")


class _RequestClock:
    """WSGI middleware that notes when the request arrived, for `duration_ms` (~0.3 us)."""

    def __init__(self, wsgi_app: Callable[..., Any]) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        environ[REQUEST_START_KEY] = time.perf_counter()
        return self.wsgi_app(environ, start_response)


# --- custom signals: one process-wide receiver per signal, routed to the right app -----------

_Target = tuple["weakref.ref[Flask]", Emitter, CustomSignal]


def _bridged(app: Flask) -> bool:
    return "bridge" in app.extensions


class _CustomRoute:
    """The single receiver of one custom signal, shared by every bridged app.

    A send whose sender is a bridged app goes to that app's bridge; otherwise to the bridge of
    the current app (inside an app context); otherwise (a script, a job worker) to every bridge
    configured for the signal. An app that is not bridged, as sender or as current app, is
    nobody else's event. Apps are held weakly (by id, checked through a weak reference),
    and the receiver is a plain function: both keep the per-send cost low.
    """

    routes: ClassVar[dict[int, _CustomRoute]] = {}

    def __init__(self, signal: blinker.Signal) -> None:
        self.signal = signal
        self.targets: dict[int, _Target] = {}

        def receive(sender: Any, /, **kwargs: Any) -> None:
            target = self.targets.get(id(sender))
            if target is not None and target[0]() is sender:  # sent by its bridged app
                targets = [target]
            else:
                targets = self._select(sender)
            for _ref, emitter, spec in targets:
                with emitter.guard:
                    emitter.emit(spec.signal_name, spec.event, "info", arguments=kwargs)

        self.receiver = receive
        signal.connect(receive, weak=False)

    @classmethod
    def add(cls, app: Flask, emitter: Emitter, spec: CustomSignal) -> None:
        route = cls.routes.get(id(spec.signal))
        if route is None or route.signal is not spec.signal:
            route = cls.routes[id(spec.signal)] = cls(spec.signal)
        route.targets[id(app)] = (weakref.ref(app), emitter, spec)

    @classmethod
    def remove(cls, app: Flask) -> None:
        for key, route in list(cls.routes.items()):
            target = route.targets.get(id(app))
            if target is not None and target[0]() is app:
                del route.targets[id(app)]
            if not route.targets:
                route.signal.disconnect(route.receiver)
                del cls.routes[key]

    def _select(self, sender: Any) -> list[_Target]:
        app = sender if isinstance(sender, Flask) else None
        if app is None or not _bridged(app):
            app_ctx = _cv_app.get(None)
            if app_ctx is not None and (app is None or _bridged(app_ctx.app)):
                app = app_ctx.app  # bridged or not: another app's bridge must not log it
        if app is not None:
            target = self.targets.get(id(app))
            return [target] if target is not None and target[0]() is app else []
        return [target for target in self.targets.values() if target[0]() is not None]


# --- built-in signals --------------------------------------------------------------------------


def _builtin_receiver(emitter: Emitter, spec: BuiltinSignal, event: str) -> Receiver:
    signal_name = spec.signal.name
    fields_of = spec.fields
    level = spec.level

    if spec.carries_data:  # e.g. a flashed message: application data, made safe like any

        def receive_data(sender: Any, /, **kwargs: Any) -> None:
            with emitter.guard:
                emitter.emit(signal_name, event, level, arguments=fields_of(kwargs))

        return receive_data

    def receive(sender: Any, /, **kwargs: Any) -> None:
        with emitter.guard:
            emitter.emit(signal_name, event, level, fields_of(kwargs))

    return receive


def _finished_receiver(emitter: Emitter, spec: BuiltinSignal, event: str) -> Receiver:
    signal_name = spec.signal.name

    def on_request_finished(sender: Any, /, response: Any = None, **extra: Any) -> None:
        with emitter.guard:
            status = int(getattr(response, "status_code", 0))
            fields: dict[str, Any] = {"http.response.status_code": status}
            ctx = _cv_request.get(None)
            if ctx is not None:
                duration = request_duration_ms(ctx.request.environ)
                if duration is not None:
                    fields["duration_ms"] = duration
            size = getattr(response, "content_length", None)
            if size is not None:
                fields["http.response.body.size"] = size
            level = "error" if status >= 500 else "warning" if status >= 400 else "info"
            emitter.emit(signal_name, event, level, fields)

    return on_request_finished


# --- the extension -----------------------------------------------------------------------------

_open_emitters: weakref.WeakSet[Emitter] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for emitter in list(_open_emitters):
        emitter.close(emitter.settings.shutdown_timeout)


atexit.register(_close_all_at_exit)


def open_emitters() -> list[Emitter]:
    """The pipelines of every app bridged in this process and not closed yet."""
    return list(_open_emitters)


class _AppBinding:
    """What `init_app` connected for one app, so that `close()` can undo it."""

    def __init__(self, emitter: Emitter) -> None:
        self.emitter = emitter
        self.connections: list[tuple[blinker.Signal, Receiver]] = []
        self.detach_loggers: Callable[[], None] = lambda: None


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
        builtins, customs = resolve_signals(settings.signals, settings.rename)
        sinks = self._build_sinks(settings)
        emitter = Emitter(settings, sinks, self._processors)
        binding = _AppBinding(emitter)
        for spec in builtins:
            factory = _finished_receiver if spec.name == "request_finished" else _builtin_receiver
            receiver = factory(emitter, spec, spec.event)  # renamed by resolve_signals
            spec.signal.connect(receiver, sender=app, weak=False)
            binding.connections.append((spec.signal, receiver))
        for custom in customs:
            _CustomRoute.add(app, emitter, custom)
        if settings.loggers:
            binding.detach_loggers = attach_loggers(settings.loggers, emitter)
        if not isinstance(app.wsgi_app, _RequestClock):
            app.wsgi_app = _RequestClock(app.wsgi_app)  # type: ignore[method-assign]
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
        """Counters: `{"sinks": {name: {...}}, "receiver_errors": n}` (DESIGN.md section 2)."""
        return self.emitter(app).stats()

    def close(self, timeout: float | None = None, *, app: Flask | None = None) -> bool:
        """Disconnect receivers, flush within `timeout` (default: `shutdown_timeout`), stop
        threads and release files. Events still undelivered are counted as dropped (or stay in
        the spool). Idempotent."""
        ok = True
        apps = [app] if app is not None else list(self._bindings.keys())
        for each in apps:
            binding = self._bindings.pop(each, None)
            if binding is None:
                continue
            for signal, receiver in binding.connections:
                signal.disconnect(receiver)
            _CustomRoute.remove(each)
            binding.detach_loggers()
            each.extensions.pop("bridge", None)
            emitter = binding.emitter
            _open_emitters.discard(emitter)
            wait = emitter.settings.shutdown_timeout if timeout is None else timeout
            ok = emitter.close(wait) and ok
        return ok

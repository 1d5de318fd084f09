"""Custom signals: one process-wide receiver per signal, routed to the right app's pipeline.

Built-in signals are connected per app (`sender=app`); a custom signal is sent by anyone (a
view, a script, a job worker), so each gets one receiver, a `CustomRoute`, shared by every
bridged app configured for it. The extension adds an app's pipeline with `add` and takes it
away with `remove` (on `close()`, or when the app is garbage collected). A member of the
authentication group is written by the app's `AuthWriter` (`bridge.authsignals`).
"""

from __future__ import annotations

import weakref
from typing import Any, ClassVar

import blinker
from flask import Flask
from flask.globals import _cv_app

from bridge.authsignals import AuthEvent, AuthWriter
from bridge.emitter import Emitter
from bridge.signals import CustomSignal

__all__ = ["CustomRoute"]

# (the app, its pipeline, the signal as resolved for it, and for an authentication signal
# the app's writer and the signal's kind)
_Auth = tuple[AuthWriter, AuthEvent]
_Target = tuple["weakref.ref[Flask]", Emitter, CustomSignal, _Auth | None]


def _bridged(app: Flask) -> bool:
    return "bridge" in app.extensions


class CustomRoute:
    """The single receiver of one custom signal, shared by every bridged app.

    A send whose sender is a bridged app goes to that app's bridge; otherwise to the bridge of
    the current app (inside an app context); otherwise (a script, a job worker) to every bridge
    configured for the signal. An app that is not bridged, as sender or as current app, is
    nobody else's event. Apps are held weakly (by id, checked through a weak reference),
    and the receiver is a plain function: both keep the per-send cost low. `targets` is
    replaced, never changed in place, so a send on another thread reads a consistent table.
    """

    routes: ClassVar[dict[int, CustomRoute]] = {}

    def __init__(self, signal: blinker.Signal) -> None:
        self.signal = signal
        self.targets: dict[int, _Target] = {}

        def receive(sender: Any, /, **kwargs: Any) -> None:
            target = self.targets.get(id(sender))
            if target is not None and target[0]() is sender:  # sent by its bridged app
                targets = [target]
            else:
                targets = self._select(sender)
            for _ref, emitter, spec, auth in targets:
                try:  # as `with emitter.guard:`, for nothing when nothing fails
                    if auth is None:
                        emitter.emit(spec.signal_name, spec.event, "info", arguments=kwargs)
                    else:
                        auth[0].emit(emitter, spec.signal_name, spec.event, auth[1], kwargs)
                except Exception as exc:
                    emitter.count_error(exc)

        self.receiver = weakref.ref(receive)  # blinker holds it
        signal.connect(receive, weak=False)

    @classmethod
    def add(
        cls, app: Flask, emitter: Emitter, spec: CustomSignal, writer: AuthWriter | None = None
    ) -> None:
        """Route `spec`'s sends for `app` to `emitter`; through `writer` when `spec` is a
        member of the authentication group (`spec.auth`)."""
        route = cls.routes.get(id(spec.signal))
        if route is None or route.signal is not spec.signal:
            route = cls.routes[id(spec.signal)] = cls(spec.signal)
        auth = None if spec.auth is None or writer is None else (writer, spec.auth)
        route.targets = {**route.targets, id(app): (weakref.ref(app), emitter, spec, auth)}

    @classmethod
    def remove(cls, emitter: Emitter) -> None:
        """Forget every target of `emitter`: its app was closed, or garbage collected."""
        for key, route in list(cls.routes.items()):
            route.targets = {
                app_id: target
                for app_id, target in route.targets.items()
                if target[1] is not emitter
            }
            if not route.targets:
                receiver = route.receiver()
                if receiver is not None:
                    route.signal.disconnect(receiver)
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

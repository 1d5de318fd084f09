"""structlog as bridge events: one processor, appended to the app's own structlog chain.

    structlog.configure(processors=[..., StructlogBridge(), structlog.processors.JSONRenderer()])

`StructlogBridge` hands each event dict to the bridge (`signal = "structlog"`), which builds
the event like a signal's (envelope, request context, redaction, pseudonymization of the
event dict's keys, size limits) and writes it with the request's other events; then it
returns the dict unchanged, so the chain's own output stays as it was (or raises `DropEvent`
with `drop=True`, when the bridge's sinks are the only output wanted). The bridge never calls
`structlog.configure()`. Keys are mapped once (`bridge.logfields`): `event`, `level` (or the
method's name), `logger` -> `log.logger`, `exc_info`/`exception` -> `exception.*`;
`timestamp` is the envelope's; a key the request context has with the same value (a
`request_id` bound with `bind_contextvars`) is not repeated.

Routing is the custom signals' and the `loggers`': an event logged inside an app goes to
that app's bridge (none if it has no bridge), one logged outside any app to every open
bridge; `StructlogBridge(app)` sends to that app's bridge only. An event logged while the
bridge itself is emitting, or on one of the bridge's threads, is not sent again
(`bridge.logging.ignored`). Never raises: failures are counted in `receiver_errors`.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import MutableMapping
from typing import Any

import structlog
from flask import Flask
from flask.globals import _cv_app

from bridge.emitter import Emitter
from bridge.extension import open_emitters
from bridge.logfields import LEVELS, split_event_dict
from bridge.logging import emitting, ignored

__all__ = ["STRUCTLOG_SIGNAL", "StructlogBridge"]

STRUCTLOG_SIGNAL = "structlog"


class StructlogBridge:
    """A structlog processor that also sends every event through the bridge's sinks.

    Append it to your own chain, before the renderer: `StructlogBridge()` routes each event
    to the bridge of the app it was logged in (every bridge outside any app);
    `StructlogBridge(app)` to that app's only. It returns the event dict unchanged, or
    raises `structlog.DropEvent` when `drop=True`.
    """

    def __init__(self, app: Flask | None = None, *, drop: bool = False) -> None:
        self._app = None if app is None else weakref.ref(app)
        self._drop = drop

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        name = getattr(logger, "name", None) if isinstance(logger, logging.Logger) else None
        if not ignored(name or ""):
            for emitter in self._emitters():
                with emitting(), emitter.guard:
                    send(emitter, method_name, event_dict, name)
        if self._drop:
            raise structlog.DropEvent
        return event_dict

    def _emitters(self) -> list[Emitter]:
        app_ctx = _cv_app.get(None)
        if self._app is not None:
            app = self._app()
            if app is None or (app_ctx is not None and app_ctx.app is not app):
                return []  # logged in another app: not this bridge's
        elif app_ctx is not None:
            app = app_ctx.app
        else:
            return open_emitters()
        extension = app.extensions.get("bridge")
        if extension is None:
            return []
        try:
            return [extension.emitter(app)]
        except RuntimeError:  # closed meanwhile
            return []


def send(
    emitter: Emitter,
    method_name: str,
    event_dict: MutableMapping[str, Any],
    logger_name: str | None = None,
) -> None:
    """Emit one structlog event dict through `emitter`, its keys mapped once."""
    event, level, fields, arguments = split_event_dict(
        event_dict, emitter.exception_fields, emitter.scrubber
    )
    if logger_name and "log.logger" not in fields:
        fields["log.logger"] = logger_name
    context = emitter.request_context()
    if context:  # e.g. the request_id the app binds with `bind_contextvars`: written once
        for key in [key for key in arguments if key in context]:
            if arguments[key] == context[key]:
                del arguments[key]
    emitter.emit(
        STRUCTLOG_SIGNAL,
        event,
        level or LEVELS.get(method_name, "info"),
        fields=fields,
        arguments=arguments,
    )

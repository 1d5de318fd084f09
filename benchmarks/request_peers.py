"""The plain receivers the bridge's request rows are compared with, one builder per row.

The floors are what any receiver pays: one plain receiver per signal, each doing
`orjson.dumps` of a small dict and one `os.write`. Their dicts hold at most what the bridge's
event for that signal holds (the event name and the signal's own fields; no clock, id or
request fields), so a floor is a lower bound, not a rival implementation. The other peers
are python-json-logger behind `logging` and a naive receiver that copies the request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import blinker
import flask.signals
import orjson
from flask import Flask, request
from pythonjsonlogger.json import JsonFormatter

from benchmarks.apps import BUILTIN_NAMES, LOGIN, LineCounter, build_app, naive_receiver
from benchmarks.worker_site import Site

__all__ = ["connect", "floor_site", "json_logger_site", "naive_site"]

Receiver = Callable[..., None]
Write = Callable[[dict[str, Any]], None]


def _template_fields(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {"template": kwargs["template"].name, "context_keys": sorted(kwargs["context"])}


def _exception_fields(exc: BaseException | None) -> dict[str, Any]:
    return {} if exc is None else {"exception": type(exc).__name__}


# What each signal's plain receiver writes: the bridge's event name and the signal's fields.
PLAIN_FIELDS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "request_started": lambda kw: {"event": "request.started"},
    "request_finished": lambda kw: {
        "event": "request.finished",
        "status": kw["response"].status_code,
    },
    "got_request_exception": lambda kw: {
        "event": "request.exception",
        **_exception_fields(kw.get("exception")),
    },
    "request_tearing_down": lambda kw: {
        "event": "request.teardown",
        **_exception_fields(kw.get("exc")),
    },
    "appcontext_pushed": lambda kw: {"event": "appcontext.pushed"},
    "appcontext_popped": lambda kw: {"event": "appcontext.popped"},
    "appcontext_tearing_down": lambda kw: {
        "event": "appcontext.teardown",
        **_exception_fields(kw.get("exc")),
    },
    "before_render_template": lambda kw: {"event": "template.rendering", **_template_fields(kw)},
    "template_rendered": lambda kw: {"event": "template.rendered", **_template_fields(kw)},
    "message_flashed": lambda kw: {
        "event": "message.flashed",
        "message": kw["message"],
        "category": kw["category"],
    },
    "user-login": lambda kw: {"event": "user-login", **kw},
}


def _plain_receiver(
    fields: Callable[[Mapping[str, Any]], dict[str, Any]], write: Write
) -> Receiver:
    def receive(sender: Any, /, **kwargs: Any) -> None:
        write(fields(kwargs))

    return receive


def floor_site(label: str, name: str, work: Path, signals: tuple[str, ...]) -> Site:
    """One plain receiver per signal in `signals` (built-in names, or `user-login`)."""
    app = build_app(name, work)
    path = work / f"{name}.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(fields: dict[str, Any]) -> None:
        os.write(fd, orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE))

    wiring = [
        (
            LOGIN if signal == "user-login" else getattr(flask.signals, signal),
            _plain_receiver(PLAIN_FIELDS[signal], write),
        )
        for signal in signals
    ]
    connect(app, wiring)
    return Site(label, app, LineCounter(path), shutdown=lambda: os.close(fd))


def json_logger_site(label: str, work: Path) -> Site:
    """The default set and `user-login` through python-json-logger and a `FileHandler`."""
    app = build_app("jsonlogger", work)
    path = work / "jsonlogger.jsonl"
    logger = logging.getLogger("benchmarks.jsonlogger")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)

    def request_extra() -> dict[str, Any]:
        return {
            "http.request.method": request.method,
            "url.path": request.path,
            "client.address": request.remote_addr,
            "user_agent.original": request.user_agent.string,
        }

    def on_finished(sender: Any, /, response: Any, **extra: Any) -> None:
        fields = {**request_extra(), "http.response.status_code": response.status_code}
        logger.info("request.finished", extra=fields)

    def on_flashed(sender: Any, /, message: str, category: str, **extra: Any) -> None:
        fields = {**request_extra(), "flash.message": message, "flash.category": category}
        logger.info("message.flashed", extra=fields)

    def on_login(sender: Any, /, **kwargs: Any) -> None:
        logger.info("user-login", extra={**request_extra(), **kwargs})

    wiring: list[tuple[blinker.Signal, Receiver]] = [
        (flask.signals.request_finished, on_finished),
        (flask.signals.message_flashed, on_flashed),
        (LOGIN, on_login),
    ]
    connect(app, wiring)

    def shutdown() -> None:
        logger.removeHandler(handler)
        handler.close()

    return Site(label, app, LineCounter(path), shutdown=shutdown)


def naive_site(label: str, work: Path) -> Site:
    """The naive receiver on all ten built-ins; its list is counted and emptied per batch."""
    app = build_app("naive", work)
    captured: list[dict[str, Any]] = []
    seen = [0]
    connect(app, [(getattr(flask.signals, n), naive_receiver(captured, n)) for n in BUILTIN_NAMES])

    def settle() -> None:  # counted and dropped, so the list does not grow over the run
        seen[0] += len(captured)
        captured.clear()

    return Site(label, app, lambda: seen[0], settle)


def connect(app: Flask, wiring: list[tuple[blinker.Signal, Receiver]]) -> None:
    """Connect each receiver to its signal for `app` only, strongly, for the whole run."""
    for signal, receiver in wiring:
        signal.connect(receiver, sender=app, weak=False)

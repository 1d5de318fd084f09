"""The app every request benchmark measures, and the plain receivers it is compared with."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import blinker
from flask import (
    Flask,
    flash,
    has_request_context,
    render_template,
    render_template_string,
    request,
)

__all__ = ["BUILTIN_NAMES", "LOGIN", "PAGE", "LineCounter", "build_app", "naive_receiver"]

LOGIN = blinker.signal("user-login")  # defined before any init_app, as an app would
BUILTIN_NAMES = (
    "request_started",
    "request_finished",
    "got_request_exception",
    "request_tearing_down",
    "appcontext_pushed",
    "appcontext_popped",
    "appcontext_tearing_down",
    "before_render_template",
    "template_rendered",
    "message_flashed",
)
PAGE = (
    "<h1>Welcome</h1>{% for message in get_flashed_messages() %}<p>{{ message }}</p>{% endfor %}"
    "<ul>{% for item in items %}<li>{{ item }}</li>{% endfor %}</ul>"
)
ITEMS = ["tea", "coffee", "cocoa", "juice", "water"]


def build_app(name: str, templates: Path, *, from_string: bool = False, **config: Any) -> Flask:
    """The measured app: one route that flashes, sends `user-login` and renders a template.

    The template is a file, compiled once and cached as in a real app; `from_string` renders
    it with `render_template_string` instead, which compiles it again on every request.
    """
    app = Flask(name, template_folder=str(templates))
    app.secret_key = "benchmark"
    app.config.update(config)

    @app.post("/login")
    def login() -> str:
        LOGIN.send(app, user_id=7, username="ada", remember=True)
        flash("welcome back, ada", "info")
        if from_string:
            return render_template_string(PAGE, items=ITEMS)
        return render_template("page.html", items=ITEMS)

    return app


def naive_receiver(captured: list[dict[str, Any]], signal_name: str) -> Callable[..., None]:
    """What a first attempt looks like: copy the request into a dict, append it to a list."""

    def receive(sender: Any, /, **kwargs: Any) -> None:
        entry: dict[str, Any] = {
            "signal": signal_name,
            "time": datetime.now(UTC).isoformat(),
            "id": str(uuid.uuid4()),
        }
        if has_request_context():
            entry.update(
                method=request.method,
                path=request.path,
                url=request.url,
                headers=dict(request.headers),
                remote_addr=request.remote_addr,
                args=request.args.to_dict(),
            )
        captured.append(entry)

    return receive


class LineCounter:
    """Lines written so far to a growing JSON-lines file, reading only what is new each call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._lines = 0

    def __call__(self) -> int:
        if self.path.exists():
            with self.path.open("rb") as file:
                file.seek(self._offset)
                data = file.read()
            self._offset += len(data)
            self._lines += data.count(b"\n")
        return self._lines

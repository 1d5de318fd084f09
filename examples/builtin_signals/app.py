"""Flask's own signals as events: a rendered template, a flashed message, an exception.

No custom signal and no TOML file here: the bridge is configured in app.config, and with no
`BRIDGE_SINKS` it writes to stdout. Three built-in signals are chosen explicitly:

- `template_rendered`     -> `template.rendered`  (the template's name and its context *keys*:
                                                   values never leave the app)
- `message_flashed`       -> `message.flashed`    (the message and its category)
- `got_request_exception` -> `request.exception`  (type, message and stack trace; level error)

    python examples/builtin_signals/app.py        # then: curl http://127.0.0.1:5001/
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from flask import Flask, flash, render_template
from jinja2 import DictLoader

from bridge import SignalBridge

# Inline templates keep the example in one file; a DictLoader still gives them names.
TEMPLATES = {
    "hello.html": "<!doctype html><p>Hello, {{ name }}! Your basket holds {{ items|length }}.</p>",
}


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The example app; `config` overrides app.config (tests point the sinks at a file)."""
    app = Flask(__name__)
    app.jinja_loader = DictLoader(TEMPLATES)
    app.secret_key = os.environ.get("BUILTIN_EXAMPLE_SECRET_KEY", "dev-only-not-a-secret")
    app.config["BRIDGE_SERVICE"] = "builtin-signals-example"
    app.config["BRIDGE_SIGNALS"] = ["template_rendered", "message_flashed", "got_request_exception"]
    app.config.update(config or {})

    @app.get("/")
    def hello() -> str:
        # The event lists the keys `name`, `items` and `card_number`, never their values.
        return render_template(
            "hello.html", name="Ada", items=["tea", "scones"], card_number="4111 1111 1111 1111"
        )

    @app.get("/flash")
    def flash_message() -> str:
        flash("Your basket was saved.", "success")
        return "flashed\n"

    @app.get("/fail")
    def fail() -> str:
        raise ValueError("the basket service is down")

    SignalBridge(app)
    return app


_app: Flask | None = None


def __getattr__(name: str) -> Flask:
    """`app` is built on first access (`examples.builtin_signals.app:app`), so importing
    `create_app` alone connects no signal."""
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "5001"))
    # stderr: stdout carries the event lines, one JSON object each.
    banner = f"Built-in signals example on http://127.0.0.1:{port}/ (/, /flash, /fail)"
    print(banner, file=sys.stderr)
    create_app().run(host="127.0.0.1", port=port)

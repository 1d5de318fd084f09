"""A login audit log: every login attempt becomes one JSON line in a file and on stdout.

The app defines a custom blinker signal, `user-login`, and sends it on every attempt, good or
bad, with the user name and whether it succeeded (never the password: and if someone passed
`password=...` anyway, the bridge would write `"password": "[REDACTED]"`). The bridge,
configured by `bridge.toml` beside this file, turns each send into an event, together with
Flask's default signals (finished requests, exceptions, flashed messages).

    python examples/login_log/app.py                                # development server
    gunicorn -w 2 -b 127.0.0.1:8000 examples.login_log.app:app      # from the repository root

Demo credentials: ada / lovelace.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blinker
from flask import (
    Flask,
    flash,
    redirect,
    render_template_string,
    request,
    session,
    url_for,
)
from werkzeug.security import check_password_hash
from werkzeug.wrappers import Response

from bridge import SignalBridge

HERE = Path(__file__).resolve().parent

# Defined at import, before any init_app: the bridge finds it by name in blinker's namespace.
login_signal = blinker.signal("user-login")


@dataclass(frozen=True)
class User:
    id: int
    username: str
    password_hash: str


# A stand-in for a user table. The hash is werkzeug's scrypt of "lovelace".
USERS = {
    "ada": User(
        id=1,
        username="ada",
        password_hash=(
            "scrypt:32768:8:1$jJne1PaKLiQlBlgW$0dd55b1ef4806ad65eb6cbebc80bfabd8227a0ff7c17839307"
            "09e750acfa183778858e814b8b56bc2b50c21e528381c48a517e5d4d3287cbb9f65494e9f59926"
        ),
    ),
}

PAGE = """<!doctype html>
<title>Login audit example</title>
{% for message in get_flashed_messages() %}<p class="flash">{{ message }}</p>{% endfor %}
{% if error %}<p class="error">{{ error }}</p>{% endif %}
{% if user %}<p>Logged in as {{ user }}.</p>
<form method="post" action="{{ url_for('logout') }}"><button>Log out</button></form>
{% else %}<form method="post" action="{{ url_for('login') }}">
  <input name="username" placeholder="username" autofocus>
  <input name="password" type="password" placeholder="password">
  <button>Log in</button>
</form>{% endif %}
"""


def authenticate(username: str, password: str) -> tuple[User | None, str | None]:
    """The user, or None and why the attempt failed (for the audit log, never the client)."""
    user = USERS.get(username)
    if user is None:
        return None, "unknown_user"
    if not check_password_hash(user.password_hash, password):
        return None, "bad_password"
    return user, None


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The example app; `config` overrides app.config (tests point the sinks at tmp_path)."""
    app = Flask(__name__)
    app.config["BRIDGE_CONFIG"] = str(HERE / "bridge.toml")
    # Fixed, not random: every gunicorn worker must read the session (and flash) cookies of the
    # others. Set your own in production.
    app.secret_key = os.environ.get("LOGIN_EXAMPLE_SECRET_KEY", "dev-only-not-a-secret")
    app.config.update(config or {})

    @app.get("/")
    def index() -> str:
        return render_template_string(PAGE, user=session.get("username"), error=None)

    @app.post("/login")
    def login() -> Response | tuple[str, int]:
        username = request.form.get("username", "").strip()
        user, reason = authenticate(username, request.form.get("password", ""))
        # The sender is the app (in a blueprint: current_app._get_current_object()), so with
        # several bridged apps in one process the event goes to this app's bridge.
        login_signal.send(
            app,
            user_id=user.id if user else None,
            username=username,
            success=user is not None,
            reason=reason,
        )
        if user is None:
            page = render_template_string(PAGE, user=None, error="Wrong user name or password.")
            return page, 401
        session["username"] = user.username
        flash(f"Welcome back, {user.username}!", "info")
        return redirect(url_for("index"), code=303)

    @app.post("/logout")
    def logout() -> Response:
        session.pop("username", None)
        flash("You have been logged out.", "info")
        return redirect(url_for("index"), code=303)

    @app.get("/crash")
    def crash() -> str:
        """A route with a bug, to show what a `request.exception` event looks like."""
        return str(len(USERS) / 0)

    SignalBridge(app)
    return app


_app: Flask | None = None


def __getattr__(name: str) -> Flask:
    """`app` is built on first access (gunicorn's `examples.login_log.app:app`), so importing
    `create_app` alone (tests, other entry points) opens no log file and connects no signal."""
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "5000"))
    # stderr: stdout carries the event lines, one JSON object each.
    print(
        f"Login audit example on http://127.0.0.1:{port}/ (ada / lovelace); "
        "audit log in ./logs/login-audit.jsonl",
        file=sys.stderr,
    )
    create_app().run(host="127.0.0.1", port=port)

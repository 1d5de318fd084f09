"""A Flask-Login app with an audit trail: logins, logouts, refused pages and failed logins.

Flask-Login sends `user_logged_in`, `user_logged_out` and `user_unauthorized`; the app adds
one signal of its own, `user-login-failed`, sent with the attempted user name (never the
password) when a login fails. `bridge.toml` beside this file names all four, by import path
for Flask-Login's, and writes them, with Flask's default signals, to
`logs/flask-login-audit.jsonl`.

    python -m examples.flask_login_app                                   # development server
    gunicorn -c examples/gunicorn.conf.py 'examples.flask_login_app:create_app()'

Demo credentials: ada / lovelace.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import blinker
from flask import Flask, flash, redirect, render_template_string, request, url_for
from flask_login import LoginManager, current_user, login_required, login_user, logout_user
from werkzeug.security import check_password_hash
from werkzeug.wrappers import Response

from bridge import SignalBridge

HERE = Path(__file__).resolve().parent

# Defined at import, before any init_app: the bridge finds it by name in blinker's namespace.
login_failed = blinker.signal("user-login-failed")


@dataclass(frozen=True)
class User:
    """What Flask-Login needs of a user (UserMixin's four members, written out)."""

    id: int
    username: str
    password_hash: str
    is_active: bool = True
    is_authenticated: bool = True
    is_anonymous: bool = False

    def get_id(self) -> str:
        return str(self.id)


# A stand-in for a user table: werkzeug's scrypt hash of "lovelace", never the password.
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
USERS_BY_ID = {user.id: user for user in USERS.values()}

PAGE = """<!doctype html>
<title>Flask-Login audit example</title>
{% for message in get_flashed_messages() %}<p class="flash">{{ message }}</p>{% endfor %}
{% if error %}<p class="error">{{ error }}</p>{% endif %}
{% if current_user.is_authenticated %}<p>Logged in as {{ current_user.username }}.
  <a href="{{ url_for('private') }}">Your page</a></p>
<form method="post" action="{{ url_for('logout') }}"><button>Log out</button></form>
{% else %}<form method="post" action="{{ url_for('login', next=next) }}">
  <input name="username" placeholder="username" autofocus>
  <input name="password" type="password" placeholder="password">
  <button>Log in</button>
</form>{% endif %}
"""


def authenticate(username: str, password: str) -> tuple[User | None, str | None]:
    """The user, or None and why the attempt failed (for the audit trail, never the client)."""
    user = USERS.get(username)
    if user is None:
        return None, "unknown_user"
    if not check_password_hash(user.password_hash, password):
        return None, "bad_password"
    return user, None


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site only (no open redirect)."""
    if target and target.startswith("/") and not urlsplit(target).netloc:
        return target
    return url_for("private")


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The example app; `config` overrides app.config (tests point the sinks at tmp_path)."""
    app = Flask(__name__)
    app.config["BRIDGE_CONFIG"] = str(HERE / "bridge.toml")
    # Fixed, not random: every gunicorn worker must read the session cookies of the others.
    # Set your own in production.
    app.secret_key = os.environ.get("FLASK_LOGIN_EXAMPLE_SECRET_KEY", "dev-only-not-a-secret")
    app.config.update(config or {})

    login_manager = LoginManager(app)
    # Anonymous visitors of a @login_required page: Flask-Login's unauthorized handler sends
    # user_unauthorized, flashes this message and redirects to the login page with ?next=.
    login_manager.login_view = "login"
    login_manager.login_message_category = "warning"

    @login_manager.user_loader
    def load_user(user_id: str) -> User | None:
        return USERS_BY_ID.get(int(user_id)) if user_id.isdigit() else None

    @app.get("/")
    def index() -> str:
        return render_template_string(PAGE, error=None, next=None)

    @app.get("/login")
    def login_form() -> str:
        return render_template_string(PAGE, error=None, next=request.args.get("next"))

    @app.post("/login")
    def login() -> Response | tuple[str, int]:
        username = request.form.get("username", "").strip()
        user, reason = authenticate(username, request.form.get("password", ""))
        if user is None:
            # The sender is the app, so with several bridged apps in one process the event
            # goes to this app's bridge (in a blueprint: current_app._get_current_object()).
            login_failed.send(app, username=username, reason=reason)
            page = render_template_string(
                PAGE, error="Wrong user name or password.", next=request.args.get("next")
            )
            return page, 401
        login_user(user)  # sends user_logged_in with user=...: written as user.id
        flash(f"Welcome back, {user.username}!", "info")
        return redirect(safe_next(request.args.get("next")), code=303)

    @app.get("/private")
    @login_required
    def private() -> str:
        return f"Hello, {current_user.username}: only you can see this page.\n"

    @app.post("/logout")
    @login_required
    def logout() -> Response:
        logout_user()  # sends user_logged_out with user=...
        flash("You have been logged out.", "info")
        return redirect(url_for("index"), code=303)

    SignalBridge(app)
    return app

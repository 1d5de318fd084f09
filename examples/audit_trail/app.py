"""The Flask-Login example app (`examples.flask_login_app`) with this directory's
`bridge.toml`: the `auth` signal group into a signed audit file, client addresses and
attempted user names pseudonymized.

    export AUDIT_KEY=$(openssl rand -hex 32) PSEUDONYM_KEY=$(openssl rand -hex 32)
    gunicorn -w 2 'examples.audit_trail:create_app()'
    flask --app 'examples.audit_trail:create_app()' bridge verify logs/audit.jsonl*

Demo credentials: ada / lovelace.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from examples.flask_login_app.app import create_app as create_login_app

HERE = Path(__file__).resolve().parent


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The login app configured by `bridge.toml` beside this file (BRIDGE_CONFIG wins)."""
    return create_login_app({"BRIDGE_CONFIG": str(HERE / "bridge.toml"), **(config or {})})

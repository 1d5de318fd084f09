"""The Flask-Login audit example: `python -m examples.flask_login_app` (see README.md)."""

from examples.flask_login_app.app import create_app, login_failed

__all__ = ["create_app", "login_failed"]

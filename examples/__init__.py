"""Runnable examples of flask-signal-bridge (a package so gunicorn can import them)."""

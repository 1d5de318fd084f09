"""The login audit log example: `python examples/login_log/app.py` or gunicorn."""

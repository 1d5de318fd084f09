"""`python -m examples.flask_login_app`: the example on Flask's development server."""

from __future__ import annotations

import os
import sys

from examples.flask_login_app.app import create_app

port = int(os.environ.get("PORT", "5000"))
print(
    f"Flask-Login audit example on http://127.0.0.1:{port}/ (ada / lovelace); "
    "audit trail in ./logs/flask-login-audit.jsonl",
    file=sys.stderr,
)
create_app().run(host="127.0.0.1", port=port)

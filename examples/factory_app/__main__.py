"""`python -m examples.factory_app`: one app from the factory on Flask's development server."""

from __future__ import annotations

import os
import sys

from examples.factory_app import create_app

port = int(os.environ.get("PORT", "5000"))
print(
    f"Factory example on http://127.0.0.1:{port}/; events in ./logs/factory-events.jsonl",
    file=sys.stderr,
)
create_app().run(host="127.0.0.1", port=port)

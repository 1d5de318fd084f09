"""`python -m examples.audit_trail`: the audit-trail example on Flask's development server.

Needs AUDIT_KEY and PSEUDONYM_KEY in the environment (see README.md); says so and exits 2
without them, rather than inventing keys nobody could verify with afterwards.
"""

from __future__ import annotations

import os
import sys

from examples.audit_trail.app import create_app

missing = [name for name in ("AUDIT_KEY", "PSEUDONYM_KEY") if len(os.environ.get(name, "")) < 16]
if missing:
    print(
        f"set {' and '.join(missing)} first (16 bytes or more), for example:\n"
        "  export AUDIT_KEY=$(openssl rand -hex 32) PSEUDONYM_KEY=$(openssl rand -hex 32)",
        file=sys.stderr,
    )
    sys.exit(2)
port = int(os.environ.get("PORT", "5000"))
print(
    f"audit-trail example on http://127.0.0.1:{port}/ (ada / lovelace); signed audit file in "
    "./logs/audit.jsonl, everything in ./logs/events.jsonl. After Ctrl-C:\n"
    "  python -m bridge.audit verify logs/audit.jsonl* --key-env AUDIT_KEY",
    file=sys.stderr,
)
create_app().run(host="127.0.0.1", port=port)

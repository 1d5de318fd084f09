"""What wire-format tests share; the `mock` and `sinks` fixtures are in tests/conftest.py."""

from __future__ import annotations

import json
from pathlib import Path


def dead_ids(path: Path) -> list[str]:
    """The `event_id`s in a dead-letter file, in order (none when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(json.loads(r)["line"])["event_id"] for r in path.read_text().splitlines()]

"""The README's quick start runs as written, in a fresh directory."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_quick_start_runs_and_writes_the_events_it_shows(tmp_path: Path) -> None:
    """The quick-start program prints the login audit event and the access event."""
    (code,) = python_blocks("Quick start")
    script = tmp_path / "quickstart.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    lines = (tmp_path / "logs" / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert ["user-login", "request.finished"] == [e["event"] for e in events]
    assert (7, "ada", True) == (events[0]["user_id"], events[0]["username"], events[0]["success"])
    assert '"event":"user-login"' in result.stdout

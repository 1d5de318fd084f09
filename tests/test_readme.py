"""The README runs as written: the quick start in a fresh directory, every wire format's
configuration snippet."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bridge.config import HttpSinkSettings, load_settings
from bridge.formats import IMPLEMENTED
from bridge.sinks.http import HttpSink

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


def toml_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```toml\n(.*?)```", text[start:end], flags=re.S)


@pytest.mark.parametrize("block", toml_blocks("Wire formats"))
def test_every_wire_format_snippet_loads_as_written(
    block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each format's configuration snippet in the README is a valid configuration as written
    (with its `${NAME}` references set), and builds its http sink."""
    for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", block):
        monkeypatch.setenv(name, "snippet-value")
    monkeypatch.chdir(tmp_path)  # relative spool directories land here
    path = tmp_path / "bridge.toml"
    path.write_text(block)
    settings = load_settings({"BRIDGE_CONFIG": str(path)}, {})
    http = [s for s in settings.sinks if isinstance(s, HttpSinkSettings)]
    assert http, "the snippet has an http sink"
    for sink_settings in http:
        sink = HttpSink(replace(sink_settings, spool_dir=None))
        assert sink_settings.format == sink.stats()["format"]
        sink.close(0.1)


def test_the_wire_formats_section_covers_every_format() -> None:
    """One configuration snippet per format (sls and sls_putlogs may share a section)."""
    formats_named = set()
    for block in toml_blocks("Wire formats"):
        formats_named |= set(re.findall(r'^format = "([a-z_]+)"', block, flags=re.M))
    assert set(IMPLEMENTED) - {"ndjson", "json_array"} <= formats_named


def test_structlog_example_runs_and_correlates(tmp_path: Path) -> None:
    """The structlog example writes its event through the bridge, in the request, keys once."""
    (code,) = python_blocks("Standard logging and structlog")
    script = tmp_path / "structlog_example.py"
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
    paid, finished = [json.loads(line) for line in lines]
    assert ("paid", "structlog", "info", 7, "/pay") == (
        paid["event"],
        paid["signal"],
        paid["level"],
        paid["order_id"],
        paid["url.path"],
    )
    assert paid["request_id"] == finished["request_id"]
    assert not {"args.level", "args.timestamp", "args.event"} & set(paid)


def test_the_audit_trail_snippet_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Audit trail section's configuration, with its keys set and the README's
    `user-login-failed` signal defined, starts an app whose failed login lands in a file
    that `verify` accepts after close, pseudonymized."""
    import blinker
    from flask import Flask

    from bridge import SignalBridge
    from bridge.audit.chain import AuditKey
    from bridge.audit.verify import verify

    [block] = toml_blocks("Audit trail")[:1]
    audit_path = tmp_path / "audit.jsonl"
    block = block.replace('"/var/log/shop/audit.jsonl"', json.dumps(str(audit_path)))
    monkeypatch.setenv("AUDIT_KEY", "a" * 64)
    monkeypatch.setenv("PSEUDONYM_KEY", "b" * 64)
    (tmp_path / "bridge.toml").write_text(block)
    failed = blinker.signal("user-login-failed")
    app = Flask("shop")
    app.config["BRIDGE_CONFIG"] = str(tmp_path / "bridge.toml")

    @app.post("/login")
    def login() -> tuple[str, int]:
        failed.send(app, username="ada@example.org", reason="bad_password")
        return "Wrong user name or password.", 401

    bridge = SignalBridge(app)
    assert 401 == app.test_client().post("/login").status_code
    assert bridge.close(timeout=5.0)
    report = verify([audit_path], [AuditKey.of("a" * 64)])
    assert report.ok, report
    data = audit_path.read_bytes()
    assert b"example.org" not in data and b"127.0.0.1" not in data
    [record, checkpoint] = [json.loads(line) for line in data.splitlines()]
    assert ("failure", "login_failed") == (record["event.outcome"], record["event.action"])
    assert record["user.name"].startswith("hmac:")
    assert "shutdown" == checkpoint["audit.reason"]

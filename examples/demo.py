"""`make demo`: the login example under a real gunicorn, real traffic, then what arrived where.

1. Start `examples.login_log.app:app` under gunicorn (2 sync workers, 127.0.0.1, a free port),
   in a fresh run directory under `.demo/` (the file sink's `logs/` lands there).
2. Send real HTTP requests: good and bad logins, a logout (which flashes a message), a route
   that raises. Each carries its own X-Request-ID, so its events can be found again.
3. Stop gunicorn the way a deployment does (SIGTERM; workers flush on exit).
4. Read the audit file and gunicorn's stdout, check that every expected event is there exactly
   once with the right fields and that no password leaked anywhere, and print a summary.

Exits 0 when everything expected arrived, 1 otherwise (with the reason).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python examples/demo.py` puts examples/, not the root, first
    sys.path.insert(0, str(ROOT))

from examples.server import GunicornServer, ServerError  # noqa: E402

APP = "examples.login_log.app:app"
AUDIT_FILE = Path("logs/login-audit.jsonl")  # bridge.toml's path, relative to the run directory
ENVELOPE_KEYS = (
    "timestamp",
    "level",
    "event",
    "signal",
    "event_id",
    "service.name",
    "host.name",
    "process.pid",
)
REQUEST_KEYS = ("request_id", "http.request.method", "url.path", "http.route", "client.address")
# Every password this demo types: none of them may appear in any output.
PASSWORDS = ("lovelace", "not-lovelace", "hunter2", "careless-secret-42")


@dataclass
class Step:
    """One request of the demo and the events it must produce (each exactly once)."""

    label: str
    method: str
    path: str
    status: int
    form: dict[str, str] | None = None
    expect: list[dict[str, Any]] = field(default_factory=list)
    request_id: str = ""


TRAFFIC = [
    Step(
        "good login: ada / lovelace",
        "POST",
        "/login",
        303,
        {"username": "ada", "password": "lovelace"},
        [
            {"event": "user-login", "username": "ada", "user_id": 1, "success": True},
            {"event": "message.flashed", "message": "Welcome back, ada!", "category": "info"},
            {"event": "request.finished", "http.response.status_code": 303},
        ],
    ),
    Step(
        "bad password: ada / not-lovelace",
        "POST",
        "/login",
        401,
        {"username": "ada", "password": "not-lovelace"},
        [
            {"event": "user-login", "username": "ada", "success": False, "reason": "bad_password"},
            {"event": "request.finished", "http.response.status_code": 401, "level": "warning"},
        ],
    ),
    Step(
        "unknown user: mallory / hunter2",
        "POST",
        "/login",
        401,
        {"username": "mallory", "password": "hunter2"},
        [
            {"event": "user-login", "username": "mallory", "success": False},
            {"event": "request.finished", "http.response.status_code": 401},
        ],
    ),
    Step(
        "good login again",
        "POST",
        "/login",
        303,
        {"username": "ada", "password": "lovelace"},
        [
            {"event": "user-login", "username": "ada", "success": True},
            {"event": "message.flashed", "message": "Welcome back, ada!"},
            {"event": "request.finished", "http.response.status_code": 303},
        ],
    ),
    Step(
        "log out (flashes a message)",
        "POST",
        "/logout",
        303,
        {},
        [
            {"event": "message.flashed", "message": "You have been logged out."},
            {"event": "request.finished", "http.response.status_code": 303},
        ],
    ),
    Step(
        "a route that raises",
        "GET",
        "/crash",
        500,
        None,
        [
            {"event": "request.exception", "level": "error", "exception.type": "ZeroDivisionError"},
            {"event": "request.finished", "http.response.status_code": 500, "level": "error"},
        ],
    ),
    Step(
        "home page",
        "GET",
        "/",
        200,
        None,
        [{"event": "request.finished", "http.response.status_code": 200}],
    ),
]


class Report:
    """Collects check results; the demo fails when any check failed."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def check(self, ok: bool, label: str, detail: str = "") -> bool:
        print(
            f"  {'ok  ' if ok else 'FAIL'} {label}" + (f": {detail}" if detail and not ok else "")
        )
        if not ok:
            self.failures.append(f"{label}: {detail}" if detail else label)
        return ok


def shown(path: Path) -> str:
    """A path as the user typed it from the repository root, when it is inside."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def heading(text: str) -> None:
    print(f"\n== {text}")


def parse_lines(raw: bytes) -> tuple[list[dict[str, Any]], list[str]]:
    """The events of a JSON-lines text, and a description of every line that is not one."""
    events: list[dict[str, Any]] = []
    problems: list[str] = []
    if raw and not raw.endswith(b"\n"):
        problems.append("does not end with a complete line")
    for number, line in enumerate(raw.splitlines(), 1):
        try:
            value = json.loads(line)
        except ValueError:
            problems.append(f"line {number} is not JSON: {line[:80]!r}")
            continue
        if not isinstance(value, dict):
            problems.append(f"line {number} is not a JSON object")
            continue
        events.append(value)
    return events, problems


def send_traffic(base_url: str, run_id: str) -> list[str]:
    """Send every step with requests; returns the steps whose status was not the expected one."""
    wrong: list[str] = []
    with requests.Session() as http:
        for number, step in enumerate(TRAFFIC, 1):
            step.request_id = f"demo-{run_id}-{number}"
            response = http.request(
                step.method,
                base_url + step.path,
                data=step.form,
                headers={"X-Request-ID": step.request_id},
                allow_redirects=False,
                timeout=30.0,
            )
            ok = response.status_code == step.status
            mark = "" if ok else f"   (expected {step.status})"
            print(
                f"  {step.method:4} {step.path:8} {step.label:36} -> {response.status_code}{mark}"
            )
            if not ok:
                wrong.append(f"{step.label}: {response.status_code}, expected {step.status}")
    return wrong


def check_expected(report: Report, where: str, events: list[dict[str, Any]]) -> None:
    """Every step's expected events are in `events` exactly once, with the expected fields."""
    missing: list[str] = []
    for step in TRAFFIC:
        mine = [e for e in events if e.get("request_id") == step.request_id]
        for expected in step.expect:
            matches = [e for e in mine if all(e.get(k) == v for k, v in expected.items())]
            if len(matches) != 1:
                missing.append(f"{step.label}: {expected} found {len(matches)} times")
    report.check(
        not missing, f"every request's events are in {where} exactly once", "; ".join(missing)
    )


def show_counts(
    file_events: list[dict[str, Any]], stdout_events: list[dict[str, Any]], probes: int
) -> None:
    file_counts = Counter(e.get("event") for e in file_events)
    stdout_counts = Counter(e.get("event") for e in stdout_events)
    names = sorted(set(file_counts) | set(stdout_counts), key=str)
    print(f"  {'event':22} {'file':>6} {'stdout':>7}")
    for name in names:
        print(f"  {name!s:22} {file_counts[name]:6} {stdout_counts[name]:7}")
    print(f"  {'total':22} {len(file_events):6} {len(stdout_events):7}")
    print(f"  (request.finished includes {probes} readiness probe(s) sent while gunicorn booted)")
    logins = [e for e in file_events if e.get("event") == "user-login"]
    good = sum(1 for e in logins if e.get("success") is True)
    print(f"  user-login: {good} successful, {len(logins) - good} failed")
    pids = sorted({e.get("process.pid") for e in file_events}, key=str)
    print(f"  written by worker pids: {', '.join(str(p) for p in pids)}")


def careless_send(run_dir: Path) -> dict[str, Any]:
    """Send `user-login` with a `password=` argument in-process: the bridge redacts it."""
    from examples.login_log.app import create_app, login_signal

    path = run_dir / "redaction-check.jsonl"
    app = create_app({"BRIDGE_SINKS": [{"type": "file", "path": str(path)}]})
    try:
        with app.app_context():
            login_signal.send(app, username="ada", password="careless-secret-42", success=False)
    finally:
        app.extensions["bridge"].close()
    events, _ = parse_lines(path.read_bytes())
    return events[-1] if events else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--dir", type=Path, default=ROOT / ".demo", help="where run directories go (.demo/)"
    )
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%d-%H%M%S-"), dir=args.dir))
    run_id = run_dir.name.rsplit("-", 1)[-1]
    # The demo shows bridge.toml at work: BRIDGE_* variables of this shell would override it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    # TODO(http sink): once bridge/sinks/http.py exists, start a tiny local collector here
    # (http.server on 127.0.0.1:<free port> taking ndjson POSTs, gzip or not), add
    # {"type": "http", "url": collector_url, "batch_timeout": 0.2} to the sinks through
    # BRIDGE_SINKS (with the file and stdout sinks of bridge.toml), and add a "collector"
    # column to the summary and the same exactly-once check as for the file.
    report = Report()

    print("flask-signal-bridge demo: the login audit example under gunicorn")
    print(f"  run directory: {shown(run_dir)}")
    server = GunicornServer(APP, cwd=run_dir, workers=2, env=env)
    try:
        server.start()
        print(f"  gunicorn, 2 sync workers, {server.url}  ({APP}, config: bridge.toml)")
        heading("Traffic (requests, one X-Request-ID each)")
        wrong = send_traffic(server.url, run_id)
        status = server.stop()
        print(f"  stopped gunicorn with SIGTERM: exit status {status}")
    except (ServerError, requests.RequestException) as exc:
        server.kill()
        print(f"\nDemo FAILED: {exc}", file=sys.stderr)
        return 1
    report_statuses = not wrong

    file_raw = (run_dir / AUDIT_FILE).read_bytes() if (run_dir / AUDIT_FILE).exists() else b""
    stdout_raw = server.stdout_path.read_bytes()
    file_events, file_problems = parse_lines(file_raw)
    stdout_events, stdout_problems = parse_lines(stdout_raw)

    heading(f"What arrived: {AUDIT_FILE} and gunicorn's stdout")
    show_counts(file_events, stdout_events, server.ready_probes)

    failed_login = next(
        (e for e in file_events if e.get("event") == "user-login" and e.get("success") is False),
        None,
    )
    heading(f"An audit line (a failed login), from {AUDIT_FILE}, shown indented")
    text = json.dumps(failed_login, indent=2) if failed_login else "(none found)"
    print("\n".join("  " + line for line in text.splitlines()))

    careless = careless_send(run_dir)
    heading("Checks")
    report.check(report_statuses, "every request got the expected status", "; ".join(wrong))
    report.check(
        not file_problems,
        f"every line of the file is valid JSON ({len(file_events)} lines)",
        "; ".join(file_problems),
    )
    report.check(
        not stdout_problems,
        f"every line on stdout is valid JSON ({len(stdout_events)} lines)",
        "; ".join(stdout_problems),
    )
    check_expected(report, "the file", file_events)
    check_expected(report, "stdout", stdout_events)
    file_ids = sorted(str(e.get("event_id")) for e in file_events)
    stdout_ids = sorted(str(e.get("event_id")) for e in stdout_events)
    report.check(file_ids == stdout_ids, "the file and stdout hold the same events")
    incomplete = [
        str(e.get("event_id"))
        for e in file_events
        if any(key not in e for key in ENVELOPE_KEYS)
        or (
            str(e.get("request_id", "")).startswith("demo-")
            and any(k not in e for k in REQUEST_KEYS)
        )
    ]
    report.check(
        not incomplete,
        "every event carries the envelope and request keys (DESIGN.md section 4)",
        f"incomplete: {incomplete[:5]}",
    )
    outputs = {
        str(AUDIT_FILE): file_raw,
        "stdout": stdout_raw,
        "gunicorn's stderr": server.stderr_path.read_bytes(),
        "redaction-check.jsonl": json.dumps(careless).encode(),
    }
    leaks = [
        f"{password!r} in {where}"
        for where, raw in outputs.items()
        for password in PASSWORDS
        if password.encode() in raw
    ]
    report.check(
        not leaks, "no password appears in the file, stdout or gunicorn's log", ", ".join(leaks)
    )
    report.check(
        careless.get("password") == "[REDACTED]",
        'a careless login_signal.send(..., password="...") is written as "[REDACTED]"',
        f"got {careless.get('password')!r}",
    )

    if report.failures:
        print(f"\nDemo FAILED ({len(report.failures)} checks). Files kept in {shown(run_dir)}")
        return 1
    print(f"\nDemo OK. Everything is in {shown(run_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

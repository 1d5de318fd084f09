"""`make demo`: the login example under a real gunicorn, real traffic, then what arrived where.

1. Start a tiny local log collector (ndjson over HTTP), then `examples.login_log.app:app` under
   gunicorn (2 sync workers, 127.0.0.1, a free port) in a fresh run directory under `.demo/`
   (the file sink's `logs/` lands there), with bridge.toml's file and stdout sinks plus an
   http sink to the collector.
2. Send real HTTP requests: good and bad logins, a logout (which flashes a message), a route
   that raises. Each carries its own X-Request-ID, so its events can be found again.
3. Stop gunicorn the way a deployment does (SIGTERM; workers flush on exit).
4. Read the audit file, gunicorn's stdout and what the collector received; check that every
   expected event is in each exactly once with the right fields and that no password leaked
   anywhere, and print a summary.
5. Show the last events of the audit file the way an operator reads them:
   `flask bridge tail logs/login-audit.jsonl -n 5` (not following), run as a subprocess.

Exits 0 when everything expected arrived, 1 otherwise (with the reason).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python examples/demo.py` puts examples/, not the root, first
    sys.path.insert(0, str(ROOT))

from bridge.events import ENVELOPE_ORDER  # noqa: E402
from bridge.workerstats import read_snapshots  # noqa: E402
from examples.collector import LocalCollector  # noqa: E402
from examples.server import GunicornServer, ServerError  # noqa: E402

APP = "examples.login_log.app:app"
BRIDGE_TOML = ROOT / "examples" / "login_log" / "bridge.toml"
AUDIT_FILE = Path("logs/login-audit.jsonl")  # bridge.toml's path, relative to the run directory
ENVELOPE_KEYS = ENVELOPE_ORDER
REQUEST_KEYS = ("request_id", "http.request.method", "url.path", "http.route", "client.address")
TAIL_EVENTS = 5  # `flask bridge tail -n 5`: the last events of the audit file, human view
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


@dataclass
class Output:
    """One place the events arrived: what it held, parsed, and the lines that were not JSON."""

    name: str
    raw: bytes
    events: list[dict[str, Any]]
    problems: list[str]


def read_output(name: str, raw: bytes) -> Output:
    events, problems = parse_lines(raw)
    return Output(name, raw, events, problems)


def show_counts(outputs: list[Output], probes: int) -> None:
    counts = [Counter(str(e.get("event")) for e in out.events) for out in outputs]
    names = sorted(set().union(*counts))
    print(f"  {'event':22}" + "".join(f" {out.name:>10}" for out in outputs))
    for name in names:
        print(f"  {name:22}" + "".join(f" {count[name]:10}" for count in counts))
    print(f"  {'total':22}" + "".join(f" {len(out.events):10}" for out in outputs))
    print(f"  (request.finished includes {probes} readiness probe(s) sent while gunicorn booted)")
    logins = [e for e in outputs[0].events if e.get("event") == "user-login"]
    good = sum(1 for e in logins if e.get("success") is True)
    print(f"  user-login: {good} successful, {len(logins) - good} failed")
    pids = sorted({str(e.get("process.pid")) for e in outputs[0].events})
    print(f"  written by worker pids: {', '.join(pids)}")


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


def sinks_with_collector(url: str) -> list[dict[str, Any]]:
    """bridge.toml's sinks plus an http sink to the local collector (for BRIDGE_SINKS, which
    replaces the file's list)."""
    with BRIDGE_TOML.open("rb") as handle:
        sinks: list[dict[str, Any]] = tomllib.load(handle)["sinks"]
    http = {"name": "collector", "type": "http", "url": url, "format": "ndjson"}
    return [*sinks, {**http, "batch_timeout": 0.2}]


def run_server(
    run_dir: Path, env: dict[str, str], run_id: str
) -> tuple[GunicornServer, list[str], dict[str, Any]]:
    """Start gunicorn, send the traffic, show the workers' counters, stop it; returns the
    server, wrong statuses and `flask bridge stats --json`'s report."""
    server = GunicornServer(APP, cwd=run_dir, workers=2, env=env)
    try:
        server.start()
        print(f"  gunicorn, 2 sync workers, {server.url}  ({APP}, config: bridge.toml)")
        heading("Traffic (requests, one X-Request-ID each)")
        wrong = send_traffic(server.url, run_id)
        stats = show_worker_stats(server, env)
        status = server.stop()
    except BaseException:
        server.kill()
        raise
    print(f"  stopped gunicorn with SIGTERM: exit status {status}")
    if status != 0:
        wrong.append(f"gunicorn exited with status {status}")
    return server, wrong, stats


def show_worker_stats(server: GunicornServer, env: dict[str, str]) -> dict[str, Any]:
    """`flask bridge stats` across the two gunicorn workers, while gunicorn still runs: waits
    (bounded) until both workers have published their counters (each does at most once a
    second, from its first request on), prints the table, and returns `--json`'s report."""
    root = Path(env["BRIDGE_STATS_DIR"])
    written = audit_lines(server.cwd)  # every request's lines are in the file by now
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline:  # until the snapshots account for every line
        alive = [s for d in root.glob("*") for s in read_snapshots(d) if s.alive]
        counted = sum(
            s.stats.get("sinks", {}).get("audit-file", {}).get("enqueued", 0) for s in alive
        )
        if alive and counted >= written:
            break
        time.sleep(0.1)
    command = ["flask", "--app", APP, "bridge", "stats"]
    heading(f"Counters of every worker, as `{' '.join(command)}` shows them")
    repo = str(Path(__file__).resolve().parent.parent)  # where `examples` imports from
    pythonpath = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    run_env = {**env, "FLASK_SKIP_DOTENV": "1", "PYTHONPATH": pythonpath}
    run = {"cwd": server.cwd, "env": run_env, "timeout": 60}
    shown_table = subprocess.run(
        [sys.executable, "-m", *command], capture_output=True, text=True, **run
    )
    for line in (shown_table.stdout + shown_table.stderr).splitlines():
        print(f"  {line}")
    as_json = subprocess.run(
        [sys.executable, "-m", *command, "--json"], capture_output=True, text=True, **run
    )
    try:
        report: dict[str, Any] = json.loads(as_json.stdout)
    except ValueError:
        report = {"error": as_json.stdout + as_json.stderr}
    report["exit_status"] = as_json.returncode
    return report


def audit_lines(run_dir: Path) -> int:
    path = run_dir / AUDIT_FILE
    return path.read_bytes().count(b"\n") if path.exists() else 0


def check_stats(report: Report, stats: dict[str, Any], file: Output) -> None:
    """`flask bridge stats` summed the live workers' counters (one or both of the two, as the
    kernel handed them connections) to every line of the audit file."""
    alive = [w for w in stats.get("workers", []) if w.get("alive")]
    total = stats.get("total", {}).get("sinks", {}).get("audit-file", {}).get("delivered")
    report.check(
        stats.get("exit_status") == 0 and 1 <= len(alive) <= 2 and total == len(file.events),
        f"flask bridge stats sums the workers' counters ({len(alive)} of 2 served requests)",
        f"exit status {stats.get('exit_status')}, {len(alive)} live, total {total}: {stats}",
    )


def show_tail(run_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`flask bridge tail logs/login-audit.jsonl -n 5`, not following, in the run directory:
    prints its lines indented and returns the finished process."""
    command = ["flask", "bridge", "tail", str(AUDIT_FILE), "-n", str(TAIL_EVENTS)]
    heading(f"The last {TAIL_EVENTS} events, as `{' '.join(command)}` shows them")
    result = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=run_dir,
        # The bridge group is found through its entry point: no app is loaded, no .env read.
        env={**env, "FLASK_SKIP_DOTENV": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    for line in (result.stdout + result.stderr).splitlines():
        print(f"  {line}")
    return result


def check_tail(report: Report, result: subprocess.CompletedProcess[str], file: Output) -> None:
    """The tail showed the file's last events, in order: one line each (stack traces are the
    indented lines under their event)."""
    shown = [" ".join(line.split()[2:3]) for line in result.stdout.splitlines() if line[:1].strip()]
    expected = [str(e.get("event")) for e in file.events[-TAIL_EVENTS:]]
    report.check(
        result.returncode == 0 and expected == shown,
        f"flask bridge tail shows the file's last {TAIL_EVENTS} events",
        f"exit status {result.returncode}, events {shown}, expected {expected}",
    )


def check_outputs(report: Report, outputs: list[Output], wrong: list[str]) -> None:
    report.check(not wrong, "every request got the expected status", "; ".join(wrong))
    for out in outputs:
        report.check(
            not out.problems,
            f"every line in {out.name} is valid JSON ({len(out.events)} lines)",
            "; ".join(out.problems[:5]),
        )
    for out in outputs:
        check_expected(report, out.name, out.events)
    ids = [sorted(str(e.get("event_id")) for e in out.events) for out in outputs]
    names = ", ".join(out.name for out in outputs)
    report.check(all(each == ids[0] for each in ids), f"{names} hold the same events")
    incomplete = [
        str(e.get("event_id"))
        for e in outputs[0].events
        if any(key not in e for key in ENVELOPE_KEYS)
        or (
            str(e.get("request_id", "")).startswith("demo-")
            and any(k not in e for k in REQUEST_KEYS)
        )
    ]
    report.check(
        not incomplete,
        'every event carries the envelope and request keys (docs/architecture.md, "The event")',
        f"incomplete: {incomplete[:5]}",
    )


def check_passwords(report: Report, places: dict[str, bytes], careless: dict[str, Any]) -> None:
    leaks = [
        f"{password!r} in {where}"
        for where, raw in places.items()
        for password in PASSWORDS
        if password.encode() in raw
    ]
    report.check(not leaks, f"no password appears in {', '.join(places)}", ", ".join(leaks))
    report.check(
        careless.get("password") == "[REDACTED]",
        'a careless login_signal.send(..., password="...") is written as "[REDACTED]"',
        f"got {careless.get('password')!r}",
    )


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
    env["BRIDGE_STATS_DIR"] = str(run_dir / "stats")  # the workers' and `flask bridge stats`'

    print("flask-signal-bridge demo: the login audit example under gunicorn")
    print(f"  run directory: {shown(run_dir)}")
    with LocalCollector() as collector:
        print(f"  local log collector (ndjson over HTTP): {collector.url}")
        env["BRIDGE_SINKS"] = json.dumps(sinks_with_collector(collector.url))
        try:
            server, wrong, stats = run_server(run_dir, env, run_id)
        except (ServerError, requests.RequestException) as exc:
            print(f"\nDemo FAILED: {exc}", file=sys.stderr)
            return 1
    # Workers flushed their http sinks at exit (SIGTERM), before gunicorn's master returned.
    audit_path = run_dir / AUDIT_FILE
    outputs = [
        read_output("file", audit_path.read_bytes() if audit_path.exists() else b""),
        read_output("stdout", server.stdout_path.read_bytes()),
        Output("collector", b"", collector.events, collector.problems),
    ]

    heading(f"What arrived: {AUDIT_FILE}, gunicorn's stdout, the collector")
    show_counts(outputs, server.ready_probes)
    print(
        f"  the collector took {collector.batches} POST(s), "
        f"{collector.gzipped_batches} of them gzip-compressed"
    )

    failed_login = next(
        (e for e in outputs[0].events if e.get("event") == "user-login" and not e.get("success")),
        None,
    )
    heading(f"An audit line (a failed login), from {AUDIT_FILE}, shown indented")
    text = json.dumps(failed_login, indent=2) if failed_login else "(none found)"
    print("\n".join("  " + line for line in text.splitlines()))

    tail = show_tail(run_dir, env)
    careless = careless_send(run_dir)
    heading("Checks")
    report = Report()
    check_outputs(report, outputs, wrong)
    places = {
        "the file": outputs[0].raw,
        "stdout": outputs[1].raw,
        "the collector": json.dumps(collector.events).encode(),
        "gunicorn's log": server.stderr_path.read_bytes(),
        "the tail": tail.stdout.encode(),
    }
    check_passwords(report, places, careless)
    check_tail(report, tail, outputs[0])
    check_stats(report, stats, outputs[0])

    if report.failures:
        print(f"\nDemo FAILED ({len(report.failures)} checks). Files kept in {shown(run_dir)}")
        return 1
    print(f"\nDemo OK. Everything is in {shown(run_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

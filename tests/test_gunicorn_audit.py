"""The audit trail as an auditor will check it: files written by two real gunicorn workers
(rotated under them), verified, then tampered with in every way the issue names.

The example app (`examples.audit_trail`: Flask-Login, the `auth` group, pseudonymization)
runs under gunicorn with two workers appending to one audit file that rotates every few KiB.
After a clean stop (SIGTERM: each worker ends its chain with a shutdown checkpoint):

- `python -m bridge.audit verify` (the auditor's machine) and `flask bridge verify` (the app's)
  accept the files and count two chains;
- the same files edited, truncated, reordered, with a line deleted, inserted, copied from
  another chain or another trail, or forged without the key, each fail with exit 1 naming the
  right file and line;
- no raw client address or e-mail address is in any file the bridge wrote.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.audit.chain import AuditKey, Chain
from examples.server import ROOT, GunicornServer, free_port
from tests.test_examples_apps import wait_until_answering

pytestmark = pytest.mark.slow

AUDIT_KEY = "gunicorn-audit-key-0123456789abcdef"
PSEUDONYM_KEY = "gunicorn-pseudonym-key-0123456789"
ATTEMPTED = "mallory@example.com"
DEADLINE = 90.0

CONFIG = """
service = "audit-example"
signals = ["default", "auth"]
pseudonymize = ["client.address", "user.email", "email"]
pseudonymize_key = "${PSEUDONYM_KEY}"

[auth]
failure = ["user-login-failed"]
attempted_user = "pseudonymize"

[[sinks]]
name = "audit"
type = "file"
path = "logs/audit.jsonl"
audit = true
audit_key = "${AUDIT_KEY}"
rotate_bytes = 4000
backups = 200

[[sinks]]
name = "events"
type = "file"
path = "logs/events.jsonl"
"""


def audit_files(logs: Path) -> list[Path]:
    """Oldest first: audit.jsonl.N (highest N first), then audit.jsonl."""
    backups = [p for p in logs.glob("audit.jsonl.*") if p.suffix[1:].isdigit()]
    return [*sorted(backups, key=lambda p: -int(p.suffix[1:])), logs / "audit.jsonl"]


def chains_in(files: list[Path]) -> dict[str, list[tuple[Path, int, dict[str, Any]]]]:
    """Each chain's records with where they are (file, 1-based line), in reading order."""
    chains: dict[str, list[tuple[Path, int, dict[str, Any]]]] = {}
    for path in files:
        if not path.exists():
            continue
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            record = json.loads(line)
            chains.setdefault(record["audit.chain"], []).append((path, number, record))
    return chains


def journey(url: str, stop: threading.Event) -> None:
    """One visitor, again and again: a failed login, a login, a private page, a logout, and a
    private page refused."""
    while not stop.is_set():
        with requests.Session() as http:
            bad = http.post(f"{url}/login", data={"username": ATTEMPTED, "password": "x"})
            assert 401 == bad.status_code
            good = http.post(
                f"{url}/login",
                data={"username": "ada", "password": "lovelace"},
                allow_redirects=False,
            )
            assert 303 == good.status_code
            assert 200 == http.get(f"{url}/private").status_code
            assert 303 == http.post(f"{url}/logout", allow_redirects=False).status_code
            assert 302 == http.get(f"{url}/private", allow_redirects=False).status_code


def app_env(work: Path) -> dict[str, str]:
    """The environment the app runs in: this config, both keys, no stray BRIDGE_/FLASK_."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "FLASK_"))}
    env |= {
        "PYTHONPATH": str(ROOT),
        "BRIDGE_CONFIG": str(work / "bridge.toml"),
        "BRIDGE_STATS_DIR": str(work / "stats"),
        "AUDIT_KEY": AUDIT_KEY,
        "PSEUDONYM_KEY": PSEUDONYM_KEY,
    }
    return env


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the example under two gunicorn workers until both wrote logins and the file has
    rotated; stop it cleanly; the logs directory."""
    work = tmp_path_factory.mktemp("gunicorn-audit")
    (work / "bridge.toml").write_text(CONFIG)
    env = app_env(work)
    logs = work / "logs"
    with GunicornServer("examples.audit_trail:create_app()", cwd=work, workers=2, env=env) as s:
        stop = threading.Event()
        failures: list[BaseException] = []

        def visitor() -> None:
            try:
                journey(s.url, stop)
            except BaseException as exc:
                failures.append(exc)
                stop.set()

        threads = [threading.Thread(target=visitor) for _ in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + DEADLINE
        try:
            while time.monotonic() < deadline and not stop.is_set():
                chains = chains_in(audit_files(logs))
                logins = [
                    c
                    for c in chains.values()
                    if any(r["event"] == "user.logged_in" for _, _, r in c)
                ]
                if len(logins) >= 2 and len(audit_files(logs)) >= 3:
                    break
                stop.wait(0.2)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert [] == failures
    return logs


def verify_command(files: list[Path], *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "FLASK_"))}
    env |= {"PYTHONPATH": str(ROOT), "AUDIT_KEY": AUDIT_KEY}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge.audit",
            "verify",
            *map(str, files),
            "--key-env",
            "AUDIT_KEY",
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def named(output: str) -> tuple[str, int]:
    """The first `PATH:LINE:` the verifier names."""
    match = re.search(r"^(\S+):(\d+): ", output, re.MULTILINE)
    assert match is not None, output
    return match.group(1), int(match.group(2))


class TestTheTrailTwoWorkersWrote:
    def test_it_verifies_with_two_chains_across_rotated_files(self, trail: Path) -> None:
        """Two chains (one per worker), each ending with its shutdown checkpoint, across
        several rotated files; the auditor's command accepts it."""
        files = audit_files(trail)
        chains = chains_in(files)
        assert 2 == len(chains)
        pids = {int(name.split(":")[1]) for name in chains}
        assert 2 == len(pids)
        for records in chains.values():
            assert "shutdown" == records[-1][2]["audit.reason"]
            assert {"success", "failure"} <= {r.get("event.outcome") for _, _, r in records}
        assert len(files) >= 3
        done = verify_command(files)
        assert 0 == done.returncode, done.stdout + done.stderr
        assert "2 chains" in done.stdout

    def test_the_app_s_own_command_verifies_it_with_the_configured_key(self, trail: Path) -> None:
        """`flask bridge verify` takes the key from the app's audit sink."""
        work = trail.parent
        env = app_env(work)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "flask",
                "--app",
                "examples.audit_trail:create_app()",
                "bridge",
                "verify",
                *map(str, audit_files(trail)),
            ],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert 0 == done.returncode, done.stdout + done.stderr

    def test_only_authentication_events_are_in_it(self, trail: Path) -> None:
        """The audit file holds every kind of auth event the journey made, nothing but auth
        events (Flask-Login's session protection may add its own) and checkpoints."""
        records = [r for c in chains_in(audit_files(trail)).values() for _, _, r in c]
        events = {r["event"] for r in records}
        expected = {"user.logged_in", "user.logged_out", "user.unauthorized", "user-login-failed"}
        assert expected | {"audit.checkpoint"} <= events
        for record in records:
            if record["event"] != "audit.checkpoint":
                assert "authentication" == record["event.category"], record
                assert record["event.outcome"] in ("success", "failure")
                assert record["request_id"] and record["user_agent.original"]

    def test_no_raw_address_or_e_mail_is_written_anywhere(self, trail: Path) -> None:
        """client.address and the attempted e-mail are pseudonyms in every file."""
        written = b"".join(p.read_bytes() for p in trail.iterdir() if p.is_file())
        assert b"127.0.0.1" not in written
        assert ATTEMPTED.encode() not in written
        assert b"example.com" not in written
        failed = [
            r
            for c in chains_in(audit_files(trail)).values()
            for _, _, r in c
            if r["event"] == "user-login-failed"
        ]
        assert failed
        assert all(r["user.name"].startswith("hmac:") for r in failed)
        assert all(r["client.address"].startswith("hmac:") for r in failed)
        assert 1 == len({r["user.name"] for r in failed})  # one person, one pseudonym


@pytest.fixture
def copy_of(trail: Path, tmp_path: Path) -> Callable[[], list[Path]]:
    def copy() -> list[Path]:
        target = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
        target.mkdir()
        return [Path(shutil.copy2(p, target / p.name)) for p in audit_files(trail)]

    return copy


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def middle_record(files: list[Path]) -> tuple[Path, int, str]:
    """A record (not a checkpoint) followed in its own file by another of its chain."""
    for records in chains_in(files).values():
        for (path, number, record), (next_path, _, _) in itertools.pairwise(records):
            if path == next_path and record["event"] != "audit.checkpoint" and number > 1:
                return path, number, record["audit.chain"]
    raise AssertionError("no middle record")


class TestTamperedCopies:
    def test_an_edited_line_is_named(self, copy_of: Callable[[], list[Path]]) -> None:
        """One field changed (the outcome) breaks that line's MAC."""
        files = copy_of()
        path, number, _ = middle_record(files)
        content = lines(path)
        record = json.loads(content[number - 1])
        record["event.outcome"] = "success" if record.get("event.outcome") != "success" else "x"
        content[number - 1] = json.dumps(record).encode() + b"\n"
        path.write_bytes(b"".join(content))
        done = verify_command(files)
        assert 1 == done.returncode
        assert (str(path), number) == named(done.stdout + done.stderr)

    def test_a_deleted_line_is_named_by_the_next_of_its_chain(
        self, copy_of: Callable[[], list[Path]]
    ) -> None:
        """The record after the gap says what is missing before it."""
        files = copy_of()
        path, number, chain = middle_record(files)
        after = next(n for p, n, _ in chains_in(files)[chain] if p == path and n > number)
        content = lines(path)
        del content[number - 1]
        path.write_bytes(b"".join(content))
        done = verify_command(files)
        assert 1 == done.returncode
        assert (str(path), after - 1) == named(done.stdout + done.stderr)

    def test_reordered_lines_are_named(self, copy_of: Callable[[], list[Path]]) -> None:
        """Two records of one chain swapped: the first out of place is named."""
        files = copy_of()
        path, number, chain = middle_record(files)
        after = next(n for p, n, _ in chains_in(files)[chain] if p == path and n > number)
        content = lines(path)
        content[number - 1], content[after - 1] = content[after - 1], content[number - 1]
        path.write_bytes(b"".join(content))
        done = verify_command(files)
        assert 1 == done.returncode
        assert (str(path), number) == named(done.stdout + done.stderr)

    def test_a_truncated_tail_is_detected(self, copy_of: Callable[[], list[Path]]) -> None:
        """The newest file cut by its last three lines: a chain ends without its checkpoint,
        and its last remaining line is named."""
        files = copy_of()
        content = lines(files[-1])
        files[-1].write_bytes(b"".join(content[:-3]))
        ends = {(str(r[-1][0]), r[-1][1]) for r in chains_in(files).values()}
        done = verify_command(files)
        assert 1 == done.returncode
        assert named(done.stdout + done.stderr) in ends

    def test_a_line_cut_in_the_middle_is_named(self, copy_of: Callable[[], list[Path]]) -> None:
        """A tail cut inside a line leaves a torn line: that line is named."""
        files = copy_of()
        data = files[-1].read_bytes()
        files[-1].write_bytes(data[: len(data) - 20])
        done = verify_command(files)
        assert 1 == done.returncode
        assert (str(files[-1]), len(lines(files[-1]))) == named(done.stdout + done.stderr)

    def test_a_line_copied_from_the_other_chain_is_named(
        self, copy_of: Callable[[], list[Path]]
    ) -> None:
        """A record of one worker's chain inserted again later: the copy is named."""
        files = copy_of()
        path, number, _ = middle_record(files)
        content = lines(path)
        content.append(content[number - 1])
        path.write_bytes(b"".join(content))
        done = verify_command(files)
        assert 1 == done.returncode
        assert (str(path), len(content)) == named(done.stdout + done.stderr)

    def test_a_line_from_another_trail_is_named(self, copy_of: Callable[[], list[Path]]) -> None:
        """A record of a chain that is not in these files (same key, another deployment):
        its chain starts in the middle, so it is named."""
        files = copy_of()
        other = Chain(AuditKey.of(AUDIT_KEY), "elsewhere:4242:00112233aabbccdd")
        foreign = b""
        for _ in range(5):
            foreign = other.seal(
                {
                    "event": "user.logged_in",
                    "host.name": "elsewhere",
                    "process.pid": 4242,
                    "event.outcome": "success",
                }
            )
        content = lines(files[0])
        content.insert(2, foreign)
        files[0].write_bytes(b"".join(content))
        done = verify_command(files)
        assert 1 == done.returncode
        assert (str(files[0]), 3) == named(done.stdout + done.stderr)

    @pytest.mark.parametrize("forger_key", ["a-guessed-key-0123456789abcdef", None])
    def test_a_forged_line_is_named(
        self, copy_of: Callable[[], list[Path]], forger_key: str | None
    ) -> None:
        """A record rewritten by someone without the key (with another key, or a made-up
        MAC) fails at its line, though seq and prev are right."""
        files = copy_of()
        path, number, _ = middle_record(files)
        content = lines(path)
        record = json.loads(content[number - 1])
        record["user.id"] = "666"
        del record["audit.mac"]
        if forger_key is None:
            record["audit.mac"] = "0" * 64
        else:
            sealed = Chain(AuditKey.of(forger_key), record["audit.chain"])
            sealed.seq, sealed.prev = record["audit.seq"] - 1, record["audit.prev"]
            forged = json.loads(
                sealed.seal({k: v for k, v in record.items() if not k.startswith("audit.")})
            )
            forged["audit.kid"] = record["audit.kid"]  # pretend to be signed by the real key
            record = forged
        content[number - 1] = json.dumps(record).encode() + b"\n"
        path.write_bytes(b"".join(content))
        done = verify_command(files)
        assert 1 == done.returncode
        assert (str(path), number) == named(done.stdout + done.stderr)

    def test_a_missing_rotated_file_is_detected(self, copy_of: Callable[[], list[Path]]) -> None:
        """Verifying without one of the rotated files fails: a chain jumps over its records."""
        files = copy_of()
        done = verify_command([files[0], *files[2:]])
        assert 1 == done.returncode


class TestOneCommand:
    def test_without_keys_it_says_what_to_set(self, tmp_path: Path) -> None:
        """`python -m examples.audit_trail` with no keys exits 2 and shows how to make them."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "AUDIT"))}
        env.pop("PSEUDONYM_KEY", None)
        done = subprocess.run(
            [sys.executable, "-m", "examples.audit_trail"],
            cwd=tmp_path,
            env={**env, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert 2 == done.returncode
        assert "AUDIT_KEY and PSEUDONYM_KEY" in done.stderr
        assert "openssl rand -hex 32" in done.stderr

    def test_the_development_server_leaves_a_trail_that_verifies(self, tmp_path: Path) -> None:
        """Serve, log in and fail a login, Ctrl-C: the file verifies (the shutdown checkpoint
        was written at exit), exactly as the example's README says."""
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env |= {"PORT": str(port), "PYTHONPATH": str(ROOT)}
        env |= {"AUDIT_KEY": AUDIT_KEY, "PSEUDONYM_KEY": PSEUDONYM_KEY}
        with (tmp_path / "stderr").open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "examples.audit_trail"],
                cwd=tmp_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_answering(process, url + "/", 30.0)
            with requests.Session() as http:
                bad = {"username": ATTEMPTED, "password": "x"}
                assert 401 == http.post(f"{url}/login", data=bad, timeout=10).status_code
                good = {"username": "ada", "password": "lovelace"}
                http.post(f"{url}/login", data=good, timeout=10, allow_redirects=False)
            process.send_signal(signal.SIGINT)
            assert 0 == process.wait(timeout=30.0)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30.0)
        files = audit_files(tmp_path / "logs")
        done = verify_command(files)
        assert 0 == done.returncode, done.stdout + done.stderr
        [records] = chains_in(files).values()
        assert ["user-login-failed", "user.logged_in", "audit.checkpoint"] == [
            r["event"] for _, _, r in records
        ]

"""The audit trail under the gunicorn set-ups an operator may choose, beyond the two sync
workers of `test_gunicorn_audit`: `--preload`, threaded workers, workers recycled by
`--max-requests`, logrotate renaming or copy-truncating the file under the workers, a worker
killed with SIGKILL, and a SIGHUP reload.

Each test runs the audit-trail example under one such gunicorn (well under 30 s), with
visitors that tag every request with their own `X-Request-ID`, then stops it and checks what an
auditor checks: `python -m bridge.audit verify` says what it must; every login and failed
login the visitors were answered for is in the audit file exactly once (none lost, none
doubled); the attempted user name is its pseudonym; no raw client address or e-mail is in any
file the bridge wrote.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.pseudonyms import Pseudonymizer
from examples.server import GunicornServer
from tests.test_gunicorn_audit import (
    ATTEMPTED,
    CONFIG,
    PSEUDONYM_KEY,
    app_env,
    audit_files,
    chains_in,
    named,
    verify_command,
)

pytestmark = pytest.mark.slow

APP = "examples.audit_trail:create_app()"
RUN_SECONDS = 20.0  # the most a test waits for its server to reach a state
# The audit sink without its own rotation: logrotate (the test) moves the file instead.
CONFIG_NO_ROTATION = CONFIG.replace("rotate_bytes = 4000\nbackups = 200\n", "")
PSEUDONYMS = Pseudonymizer(["user.name"], PSEUDONYM_KEY)

Chains = dict[str, list[tuple[Path, int, dict[str, Any]]]]


class Visitors:
    """Threads logging in and out again and again (a failed login, a login, a private page,
    a logout, a private page refused), each request with an `X-Request-ID` of its own; they
    note which logins were answered (303) and which failed logins (401). `pause()` returns
    once no journey is under way."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.logins: list[str] = []
        self.failed: list[str] = []
        self.failures: list[BaseException] = []
        self._ids = itertools.count()
        self._state = threading.Condition()
        self._paused = False
        self._stopped = False
        self._busy = 0
        self._threads = [threading.Thread(target=self._visit) for _ in range(threads)]

    def __enter__(self) -> Visitors:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.stop()
        if exc is None:  # the block's own failure says more than a visitor's
            assert [] == self.failures

    def stop(self) -> None:
        with self._state:
            self._stopped = True
            self._state.notify_all()
        for thread in self._threads:
            thread.join(30)

    def pause(self) -> None:
        with self._state:
            self._paused = True
            assert self._state.wait_for(lambda: self._busy == 0, 30)

    def resume(self) -> None:
        with self._state:
            self._paused = False
            self._state.notify_all()

    def _visit(self) -> None:
        while True:
            with self._state:
                self._state.wait_for(lambda: self._stopped or not self._paused)
                if self._stopped:
                    return
                self._busy += 1
            try:
                self._journey()
            except BaseException as exc:
                self.failures.append(exc)
                with self._state:
                    self._stopped = True
            finally:
                with self._state:
                    self._busy -= 1
                    self._state.notify_all()

    def _id(self) -> str:
        return f"visit-{next(self._ids)}"

    def _journey(self) -> None:
        url = self.url
        with requests.Session() as http:
            rid = self._id()
            bad = http.post(
                f"{url}/login",
                data={"username": ATTEMPTED, "password": "x"},
                headers={"X-Request-ID": rid},
                timeout=20,
            )
            assert 401 == bad.status_code
            self.failed.append(rid)
            rid = self._id()
            good = http.post(
                f"{url}/login",
                data={"username": "ada", "password": "lovelace"},
                headers={"X-Request-ID": rid},
                allow_redirects=False,
                timeout=20,
            )
            assert 303 == good.status_code
            self.logins.append(rid)
            headers = {"X-Request-ID": self._id()}
            assert 200 == http.get(f"{url}/private", headers=headers, timeout=20).status_code
            headers = {"X-Request-ID": self._id()}
            logout = http.post(f"{url}/logout", headers=headers, allow_redirects=False, timeout=20)
            assert 303 == logout.status_code
            headers = {"X-Request-ID": self._id()}
            refused = http.get(f"{url}/private", headers=headers, allow_redirects=False, timeout=20)
            assert 302 == refused.status_code


def until(condition: Callable[[], bool], what: str, visitors: Visitors | None = None) -> None:
    """Wait (polling the files) until `condition()`, at most RUN_SECONDS."""
    deadline = time.monotonic() + RUN_SECONDS
    while not condition():
        if visitors is not None and visitors.failures:
            raise AssertionError(f"a visitor failed: {visitors.failures[0]!r}")
        assert time.monotonic() < deadline, f"not within {RUN_SECONDS} s: {what}"
        time.sleep(0.1)  # polling a file, not synchronizing with a thread


def records(chains: Chains, event: str) -> list[dict[str, Any]]:
    return [r for chain in chains.values() for _, _, r in chain if r["event"] == event]


def chains_with_logins(logs: Path, files: Callable[[Path], list[Path]] = audit_files) -> int:
    chains = chains_in(files(logs))
    return sum(any(r["event"] == "user.logged_in" for _, _, r in c) for c in chains.values())


def shutdown_chains(chains: Chains) -> set[str]:
    return {name for name, c in chains.items() if c[-1][2].get("audit.reason") == "shutdown"}


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """A directory with the example's config (the audit file rotating every 4000 bytes)."""
    (tmp_path / "bridge.toml").write_text(CONFIG)
    yield tmp_path


@pytest.fixture
def unrotated(tmp_path: Path) -> Iterator[Path]:
    """A directory with the example's config, the audit sink not rotating by itself."""
    assert "rotate_bytes" not in CONFIG_NO_ROTATION
    (tmp_path / "bridge.toml").write_text(CONFIG_NO_ROTATION)
    yield tmp_path


def serve(work: Path, *, workers: int = 2, extra: tuple[str, ...] = ()) -> GunicornServer:
    """The example under gunicorn in `work`; the master's pid in `work/gunicorn.pid`."""
    extra = ("--pid", str(work / "gunicorn.pid"), *extra)
    return GunicornServer(APP, cwd=work, workers=workers, env=app_env(work), extra_args=extra)


def master_pid(work: Path) -> int:
    return int((work / "gunicorn.pid").read_text())


def check_trail(
    logs: Path, visitors: Visitors, files: list[Path] | None = None, *, whole: bool = True
) -> Chains:
    """What every run must show: each login and failed login answered is in the audit files
    once (none lost, none doubled), with the attempted name and the address as pseudonyms;
    no raw address or e-mail in any file; file order is seq order in every chain, with no
    gap unless `whole` is false."""
    chains = chains_in(audit_files(logs) if files is None else files)
    logins = Counter(r["request_id"] for r in records(chains, "user.logged_in"))
    assert Counter(visitors.logins) == logins
    failed = records(chains, "user-login-failed")
    assert Counter(visitors.failed) == Counter(r["request_id"] for r in failed)
    assert {PSEUDONYMS.pseudonym(ATTEMPTED)} == {r["user.name"] for r in failed}
    addresses = {r["client.address"] for r in failed + records(chains, "user.logged_in")}
    assert {PSEUDONYMS.pseudonym("127.0.0.1")} == addresses
    for chain in chains.values():
        seqs = [r["audit.seq"] for _, _, r in chain]
        assert (list(range(1, len(chain) + 1)) if whole else sorted(set(seqs))) == seqs
    written = b"".join(p.read_bytes() for p in logs.iterdir() if p.is_file())
    assert b"127.0.0.1" not in written
    assert ATTEMPTED.encode() not in written
    assert b"example.com" not in written
    return chains


def verified(files: list[Path], *extra: str) -> str:
    done = verify_command(files, *extra)
    assert 0 == done.returncode, done.stdout + done.stderr
    return done.stdout


def chain_count(stdout: str) -> int:
    match = re.search(r"verified: (\d+) chains?", stdout)
    assert match is not None, stdout
    return int(match.group(1))


class TestPreload:
    def test_three_preloaded_workers_each_sign_their_own_chain(self, work: Path) -> None:
        """`--preload`: the app (and its audit sink) is made in the master; each forked worker
        starts a chain of its own (its pid), the master writes none, and the trail verifies."""
        logs = work / "logs"
        with serve(work, workers=3, extra=("--preload",)) as server:
            master = master_pid(work)
            with Visitors(server.url, threads=6) as visitors:
                until(lambda: chains_with_logins(logs) >= 2, "two workers logged in", visitors)
        chains = check_trail(logs, visitors)
        pids = {int(name.split(":")[1]) for name in chains}
        assert len(chains) == len(pids)
        assert master not in pids
        assert 2 <= len(chains) <= 3
        assert set(chains) == shutdown_chains(chains)
        assert len(chains) == chain_count(verified(audit_files(logs)))


class TestThreadedWorker:
    def test_concurrent_logins_in_one_worker_make_one_chain_in_order(self, work: Path) -> None:
        """`--worker-class gthread --threads 4`, one worker, six visitors at once: one chain,
        whose records are in the file in seq order, and it verifies."""
        logs = work / "logs"
        extra = ("--worker-class", "gthread", "--threads", "4")
        with serve(work, workers=1, extra=extra) as server, Visitors(server.url, 6) as visitors:
            until(
                lambda: len(records(chains_in(audit_files(logs)), "user.logged_in")) >= 40,
                "40 logins",
                visitors,
            )
        chains = check_trail(logs, visitors)
        assert 1 == len(chains)
        assert set(chains) == shutdown_chains(chains)
        assert 1 == chain_count(verified(audit_files(logs)))


class TestMaxRequests:
    def test_recycled_workers_end_their_chains_and_the_trail_verifies(self, work: Path) -> None:
        """`--max-requests 20 --max-requests-jitter 5`: workers retired during the run each
        wrote their shutdown checkpoint as they left; the trail of all their chains verifies."""
        logs = work / "logs"
        extra = ("--max-requests", "20", "--max-requests-jitter", "5")
        with serve(work, extra=extra) as server, Visitors(server.url) as visitors:
            until(
                lambda: len(shutdown_chains(chains_in(audit_files(logs)))) >= 3,
                "three workers retired",
                visitors,
            )
        chains = check_trail(logs, visitors)
        assert len(chains) >= 4
        assert set(chains) == shutdown_chains(chains)
        assert len(chains) == chain_count(verified(audit_files(logs)))


def lines_of(chains: Chains, name: str, path: Path) -> list[tuple[int, dict[str, Any]]]:
    return [(number, r) for p, number, r in chains[name] if p == path]


class TestLogrotate:
    @pytest.mark.parametrize("backup", ["audit.jsonl.1", "audit.jsonl-20261207", "audit.jsonl-1"])
    def test_a_rename_under_the_workers_is_followed(self, unrotated: Path, backup: str) -> None:
        """logrotate's rename (`mv audit.jsonl <backup>`) while both workers write: each ends
        its part of the renamed file with a rotation checkpoint and goes on in a new
        audit.jsonl; both files verify, given oldest first (any name), or in the shell's
        order `audit.jsonl*` when the name is logrotate's (`.1`, `-20261207`)."""
        logs = unrotated / "logs"
        current, renamed = logs / "audit.jsonl", logs / backup
        both = [renamed, current]
        with serve(unrotated) as server, Visitors(server.url) as visitors:
            until(lambda: chains_with_logins(logs) >= 2, "both workers logged in", visitors)
            current.rename(renamed)  # under load: workers are writing
            until(
                lambda: chains_with_logins(logs, lambda _: [current]) >= 2,
                "both workers write the new file",
                visitors,
            )
        chains = check_trail(logs, visitors, both)
        assert 2 == len(chains)
        for name, chain in chains.items():
            old = lines_of(chains, name, renamed)
            assert "rotation" == old[-1][1]["audit.reason"]
            assert all(r.get("audit.reason") != "rotation" for _, r in old[:-1])
            assert "shutdown" == chain[-1][2]["audit.reason"]
            assert current == chain[-1][0]
        assert 2 == chain_count(verified(both))
        if backup != "audit.jsonl-1":  # not a logrotate name: read in the order given
            assert set(both) == set(logs.glob("audit.jsonl*"))  # no lock file or other
            assert 2 == chain_count(verified(sorted(logs.glob("audit.jsonl*"))))

    def test_a_quiet_copytruncate_verifies(self, unrotated: Path) -> None:
        """logrotate's copytruncate with no write between the copy and the truncate: the
        chains go on in the emptied file without a checkpoint, and the copy then the file
        verify, every login in them once."""
        logs = unrotated / "logs"
        current, copy = logs / "audit.jsonl", logs / "audit.jsonl.1"
        with serve(unrotated) as server, Visitors(server.url) as visitors:
            until(lambda: chains_with_logins(logs) >= 2, "both workers logged in", visitors)
            visitors.pause()
            shutil.copyfile(current, copy)
            os.truncate(current, 0)
            visitors.resume()
            until(
                lambda: chains_with_logins(logs, lambda _: [current]) >= 2,
                "both workers write the emptied file",
                visitors,
            )
        chains = check_trail(logs, visitors, [copy, current])
        assert 2 == len(chains)
        assert 2 == chain_count(verified(sorted(logs.glob("audit.jsonl*"))))

    def test_a_login_between_copy_and_truncate_is_lost_and_named(self, unrotated: Path) -> None:
        """A login written after logrotate's copy and before its truncate is in neither file
        (copytruncate's own race): verify fails, naming the last line of that worker's chain
        in the copy, 'the end of that file was cut'."""
        logs = unrotated / "logs"
        current, copy = logs / "audit.jsonl", logs / "audit.jsonl.1"
        with serve(unrotated) as server, Visitors(server.url) as visitors:
            until(lambda: chains_with_logins(logs) >= 2, "both workers logged in", visitors)
            visitors.pause()
            shutil.copyfile(current, copy)
            with requests.Session() as http:
                lost = http.post(
                    f"{server.url}/login",
                    data={"username": "ada", "password": "lovelace"},
                    headers={"X-Request-ID": "between-copy-and-truncate"},
                    allow_redirects=False,
                    timeout=20,
                )
            assert 303 == lost.status_code
            os.truncate(current, 0)
            visitors.resume()
            until(
                lambda: chains_with_logins(logs, lambda _: [current]) >= 2,
                "both workers write the emptied file",
                visitors,
            )
        chains = check_trail(logs, visitors, [copy, current], whole=False)  # visitors': all
        assert "between-copy-and-truncate" not in {
            r["request_id"] for r in records(chains, "user.logged_in")
        }
        [cut] = [
            name
            for name, chain in chains.items()
            if lines_of(chains, name, current)[0][1]["audit.seq"]
            != lines_of(chains, name, copy)[-1][1]["audit.seq"] + 1
        ]
        done = verify_command(sorted(logs.glob("audit.jsonl*")))
        assert 1 == done.returncode
        assert (str(copy), lines_of(chains, cut, copy)[-1][0]) == named(done.stdout)
        assert "the end of that file was cut" in done.stdout


class TestKilledWorker:
    def test_a_worker_killed_leaves_its_chain_open(self, work: Path) -> None:
        """A worker killed with SIGKILL between requests (gunicorn starts another): verify
        names its chain's last line, 'ends here without its shutdown checkpoint'; with
        --partial the trail verifies; no login is lost or doubled."""
        logs = work / "logs"
        with serve(work) as server, Visitors(server.url) as visitors:
            until(lambda: chains_with_logins(logs) >= 2, "both workers logged in", visitors)
            visitors.pause()
            before = chains_in(audit_files(logs))
            killed = next(iter(before))
            os.kill(int(killed.split(":")[1]), signal.SIGKILL)
            visitors.resume()
            until(lambda: chains_with_logins(logs) >= 3, "the new worker logged in", visitors)
        chains = check_trail(logs, visitors)
        assert set(chains) - {killed} == shutdown_chains(chains)
        # Nothing after the kill (rotation may have renamed its files since).
        assert [r for _, _, r in before[killed]] == [r for _, _, r in chains[killed]]
        last = chains[killed][-1]
        done = verify_command(audit_files(logs))
        assert 1 == done.returncode
        assert (str(last[0]), last[1]) == named(done.stdout)
        assert 1 == len(re.findall(r"^\S+:\d+: ", done.stdout, re.MULTILINE)), done.stdout
        assert f"chain {killed} ends here without its shutdown checkpoint" in done.stdout
        partial = verified(audit_files(logs), "--partial")
        assert len(chains) == chain_count(partial)
        assert "open chains (no shutdown checkpoint, accepted by --partial): 1" in partial


class TestReload:
    def test_a_sighup_reload_ends_the_old_chains_and_the_trail_verifies(self, work: Path) -> None:
        """SIGHUP to the master under load: the old workers end their chains with their
        shutdown checkpoint as they leave, the new ones start their own; it all verifies."""
        logs = work / "logs"
        with serve(work) as server, Visitors(server.url) as visitors:
            until(lambda: chains_with_logins(logs) >= 2, "both workers logged in", visitors)
            old = set(chains_in(audit_files(logs)))
            os.kill(master_pid(work), signal.SIGHUP)
            until(
                lambda: (
                    old <= shutdown_chains(chains_in(audit_files(logs)))
                    and chains_with_logins(logs) >= 4
                ),
                "the old workers left, the new ones logged in",
                visitors,
            )
        chains = check_trail(logs, visitors)
        assert len(chains) >= 4
        assert set(chains) == shutdown_chains(chains)
        assert len(chains) == chain_count(verified(audit_files(logs)))

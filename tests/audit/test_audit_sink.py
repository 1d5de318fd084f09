"""The audit file sink as a user runs it: a real Flask app, a real file, real rotation, a real
full disk (RLIMIT_FSIZE in a forked child), a forked worker. Every file is checked with an
oracle written here from the chain format's text, with the standard library only (json and
hmac), not with the code under test."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import resource
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from bridge import SignalBridge
from bridge.config import FileSinkSettings, load_settings
from bridge.errors import ConfigError
from tests.conftest import LOGIN_SIGNAL, build_app
from tests.forks import run_in_child

KEY = "correct horse battery staple 0123456789"
KID = hmac.new(KEY.encode(), b"flask-signal-bridge audit key id", hashlib.sha256).hexdigest()[:16]


MAC_MEMBER = re.compile(rb',"audit\.mac":"([0-9a-f]{64})"\}\n\Z')


def oracle_chains(lines: list[bytes], key: str = KEY) -> dict[str, list[dict[str, Any]]]:
    """Every line's MAC (over the bytes before `,"audit.mac":...`), prev link and seq
    checked, and the signed bytes being the sorted, compact JSON the stdlib writes for
    the same record; the records of each chain, in file order."""
    chains: dict[str, list[dict[str, Any]]] = {}
    for number, line in enumerate(lines, 1):
        assert line.endswith(b"\n"), f"line {number} is torn"
        found = MAC_MEMBER.search(line)
        assert found is not None, f"line {number}: not in signed form"
        signed = line[: found.start()] + b"}"
        mac = found.group(1).decode()
        expected = hmac.new(key.encode(), signed, hashlib.sha256).hexdigest()
        assert mac == expected, f"line {number}: MAC"
        record = json.loads(signed)
        if not _has_float(record):  # the stdlib writes floats its own way (1e-05)
            canonical = json.dumps(
                record, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            )
            assert canonical.encode() == signed, f"line {number}: not canonical"
        assert record["audit.kid"] == KID
        chain = chains.setdefault(record["audit.chain"], [])
        previous = chain[-1] if chain else None
        assert record["audit.seq"] == (previous["audit.seq"] + 1 if previous else 1)
        assert record["audit.prev"] == (previous["audit.mac"] if previous else "")
        record["audit.mac"] = mac
        chain.append(record)
    return chains


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return False


def lines_of(*paths: Path) -> list[bytes]:
    return [line for path in paths for line in path.read_bytes().splitlines(keepends=True)]


def audit_app(tmp_path: Path, **audit: Any) -> tuple[Flask, SignalBridge, Path, Path]:
    audit_path = tmp_path / "audit" / "audit.jsonl"
    plain_path = tmp_path / "events.jsonl"
    sink = {"type": "file", "path": str(audit_path), "audit": True, "audit_key": "${AUDIT_KEY}"}
    sink.update(events=["user-login"], **audit)
    app = build_app(
        "shop",
        BRIDGE_SIGNALS=["default", "user-login"],
        BRIDGE_SINKS=[sink, {"type": "file", "path": str(plain_path)}],
    )
    return app, SignalBridge(app), audit_path, plain_path


@pytest.fixture(autouse=True)
def _audit_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_KEY", KEY)


@pytest.fixture
def bridged(tmp_path: Path) -> Iterator[tuple[Flask, SignalBridge, Path, Path]]:
    made = audit_app(tmp_path)
    yield made
    made[1].close(timeout=5.0)


class TestChainInARealApp:
    def test_each_login_is_one_signed_record_chained_to_the_one_before(
        self, bridged: tuple[Flask, SignalBridge, Path, Path]
    ) -> None:
        """Three logins give records 1, 2, 3 of one chain; the plain sink still gets all."""
        app, bridge, audit_path, plain_path = bridged
        client = app.test_client()
        for _ in range(3):
            assert client.post("/login").status_code == 200
        chains = oracle_chains(lines_of(audit_path))
        [records] = chains.values()
        assert ["user-login"] * 3 == [r["event"] for r in records]
        assert [1, 2, 3] == [r["audit.seq"] for r in records]
        assert all(r["process.pid"] == os.getpid() for r in records)
        plain = [json.loads(line) for line in lines_of(plain_path)] if bridge.flush(5.0) else []
        assert {"user-login", "request.finished", "message.flashed"} <= {e["event"] for e in plain}
        assert not any(k.startswith("audit.") for e in plain for k in e)

    def test_records_are_on_disk_before_the_response(
        self, bridged: tuple[Flask, SignalBridge, Path, Path]
    ) -> None:
        """No flush needed: the login's record is in the file when the client has the answer."""
        app, _, audit_path, _ = bridged
        app.test_client().post("/login")
        assert 1 == len(audit_path.read_bytes().splitlines())

    def test_close_ends_the_chain_with_a_shutdown_checkpoint(self, tmp_path: Path) -> None:
        """The last record of a cleanly closed chain is its signed shutdown checkpoint."""
        app, bridge, audit_path, _ = audit_app(tmp_path)
        app.test_client().post("/login")
        app.test_client().post("/login")
        assert bridge.close(timeout=5.0)
        [records] = oracle_chains(lines_of(audit_path)).values()
        last = records[-1]
        assert ("audit.checkpoint", "shutdown", 2, 3) == (
            last["event"],
            last["audit.reason"],
            last["audit.records"],
            last["audit.seq"],
        )
        assert "shop" == last["service.name"]

    def test_an_argument_named_like_an_audit_key_cannot_forge_the_chain(
        self, bridged: tuple[Flask, SignalBridge, Path, Path]
    ) -> None:
        """`audit.seq=99` sent by the app is kept as args.audit.seq; the chain stays whole."""
        app, _, audit_path, _ = bridged
        with app.test_request_context("/"):
            LOGIN_SIGNAL.send(app, **{"audit.seq": 99, "audit.mac": "0" * 64})
        [records] = oracle_chains(lines_of(audit_path)).values()
        assert (1, 99, "0" * 64) == (
            records[0]["audit.seq"],
            records[0]["args.audit.seq"],
            records[0]["args.audit.mac"],
        )

    def test_the_key_is_written_nowhere(
        self, bridged: tuple[Flask, SignalBridge, Path, Path]
    ) -> None:
        """Neither the file, stats() nor the settings' repr hold the key."""
        app, bridge, audit_path, _ = bridged
        app.test_client().post("/login")
        assert KEY.encode() not in audit_path.read_bytes()
        assert KEY not in json.dumps(bridge.stats(), default=str)
        assert KEY not in repr(load_settings(app.config))

    def test_threads_logging_in_at_once_keep_file_order_equal_to_chain_order(
        self, bridged: tuple[Flask, SignalBridge, Path, Path]
    ) -> None:
        """8 threads x 25 logins: one chain, seq 1..200 in file order (the oracle checks it)."""
        app, _, audit_path, _ = bridged

        def logins() -> None:
            client = app.test_client()
            for _ in range(25):
                client.post("/login")

        threads = [threading.Thread(target=logins) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        [records] = oracle_chains(lines_of(audit_path)).values()
        assert list(range(1, 201)) == [r["audit.seq"] for r in records]


class TestRotation:
    def test_a_rotation_leaves_a_checkpoint_in_the_old_file_and_the_chain_goes_on(
        self, tmp_path: Path
    ) -> None:
        """rotate_bytes: the old file ends with a rotation checkpoint; the new one continues."""
        app, bridge, audit_path, _ = audit_app(tmp_path, rotate_bytes=2000, backups=5)
        client = app.test_client()
        for _ in range(12):
            client.post("/login")
        bridge.close(timeout=5.0)
        backups = sorted(audit_path.parent.glob("audit.jsonl.*[0-9]"), reverse=True)
        assert backups, "rotated"
        files = [*backups, audit_path]
        [records] = oracle_chains(lines_of(*files)).values()
        for old in backups:
            last = json.loads(old.read_bytes().splitlines()[-1])
            assert ("audit.checkpoint", "rotation") == (last["event"], last["audit.reason"])
        logins = [r for r in records if r["event"] == "user-login"]
        assert 12 == len(logins)
        assert "shutdown" == records[-1]["audit.reason"]

    def test_logrotate_renaming_the_file_is_followed_after_a_checkpoint(
        self, tmp_path: Path
    ) -> None:
        """An external rename: the renamed file gets the checkpoint, the new path the rest."""
        sink = FileSinkSettings(
            type="file",
            name="audit",
            path=tmp_path / "audit.jsonl",
            audit=True,
            audit_key=KEY,
            events=("*",),
            sync=True,
            fsync=False,
        )
        from bridge.audit.sink import AuditSink

        audit = AuditSink(sink, check_interval=0.0)
        try:
            audit.submit_many([_line("user-login"), _line("user-login")])
            os.rename(tmp_path / "audit.jsonl", tmp_path / "audit.jsonl-20261207")
            audit.submit_many([_line("user-login")])
        finally:
            audit.close(5.0)
        old = lines_of(tmp_path / "audit.jsonl-20261207")
        new = lines_of(tmp_path / "audit.jsonl")
        [records] = oracle_chains(old + new).values()
        assert ["user-login", "user-login", "audit.checkpoint"] == [
            json.loads(line)["event"] for line in old
        ]
        assert ["user-login", "audit.checkpoint"] == [json.loads(line)["event"] for line in new]
        assert 5 == len(records)


def _line(event: str, **fields: Any) -> bytes:
    record = {"timestamp": "2026-12-07T05:00:00.000000Z", "level": "info", "event": event}
    record.update({"service.name": "shop", "host.name": "h", "process.pid": os.getpid()})
    record.update(fields)
    return json.dumps(record).encode() + b"\n"


def _sink(path: Path, **overrides: Any) -> Any:
    from bridge.audit.sink import AuditSink

    values: dict[str, Any] = dict(
        type="file", name="audit", path=path, audit=True, audit_key=KEY, events=("*",)
    )
    values.update(sync=True, fsync=False)
    values.update(overrides)
    return AuditSink(FileSinkSettings(**values))


class TestWhatItRecords:
    @pytest.mark.parametrize(
        ("events", "expected"),
        [
            (("auth",), ["user.logged_in", "user-login-failed"]),
            (("user.*",), ["user.logged_in"]),
            (("*",), ["user.logged_in", "request.finished", "user-login-failed"]),
        ],
    )
    def test_events_chooses_by_glob_or_by_authentication_category(
        self, tmp_path: Path, events: tuple[str, ...], expected: list[str]
    ) -> None:
        """ "auth" takes event.category=authentication; globs take event names."""
        sink = _sink(tmp_path / "a.jsonl", events=events)
        try:
            sink.submit_many(
                [
                    _line("user.logged_in", **{"event.category": "authentication"}),
                    _line("request.finished"),
                    _line("user-login-failed", **{"event.category": "authentication"}),
                ]
            )
        finally:
            sink.close(5.0)
        records = [json.loads(line) for line in lines_of(tmp_path / "a.jsonl")]
        assert expected == [r["event"] for r in records if r["event"] != "audit.checkpoint"]

    def test_auth_takes_a_list_of_categories_too(self, tmp_path: Path) -> None:
        """ECS lets event.category be a list: ["authentication", "iam"] is an auth event."""
        sink = _sink(tmp_path / "a.jsonl", events=("auth",))
        sink.submit_many(
            [
                _line("sso.login", **{"event.category": ["authentication", "iam"]}),
                _line("user.changed", **{"event.category": ["iam"]}),
            ]
        )
        sink.close(5.0)
        records = [json.loads(line) for line in lines_of(tmp_path / "a.jsonl")]
        assert ["sso.login", "audit.checkpoint"] == [r["event"] for r in records]

    def test_a_sink_that_recorded_nothing_writes_no_checkpoint(self, tmp_path: Path) -> None:
        """An empty chain has nothing to protect: a worker without logins leaves no line."""
        sink = _sink(tmp_path / "a.jsonl", events=("user.*",))
        sink.submit_many([_line("request.finished")])
        sink.close(5.0)
        assert b"" == (tmp_path / "a.jsonl").read_bytes()


class TestFsyncPolicy:
    @pytest.mark.parametrize(("policy", "expected"), [(True, 3), (False, 0)])
    def test_fsync_true_syncs_every_write_and_false_never(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: bool, expected: int
    ) -> None:
        """True: one fsync per write (a request's records) and one at close; False: none."""
        calls: list[int] = []
        real = os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
        sink = _sink(tmp_path / "a.jsonl", fsync=policy)
        sink.submit_many([_line("a"), _line("b")])
        sink.submit_many([_line("c")])
        sink.close(5.0)
        assert expected == len(calls)

    def test_an_interval_syncs_within_it_from_a_thread(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """fsync = 0.05: writes return unsynced; the sink's thread syncs all of them soon
        after, on its own (no further write, no flush)."""
        synced_sizes: list[int] = []
        wrote = threading.Condition()
        real = os.fsync

        def fsync(fd: int) -> None:
            real(fd)
            with wrote:  # by the sink's own thread, not the writer's
                if threading.current_thread().name == "bridge-audit-audit":
                    synced_sizes.append(os.fstat(fd).st_size)
                wrote.notify_all()

        monkeypatch.setattr(os, "fsync", fsync)
        path = tmp_path / "a.jsonl"
        sink = _sink(path, fsync=0.05)
        try:
            sink.submit_many([_line("a")])
            sink.submit_many([_line("b")])
            size = path.stat().st_size
            with wrote:
                assert wrote.wait_for(lambda: size in synced_sizes, timeout=10.0)
        finally:
            sink.close(5.0)


def _full_disk_child(path: str) -> dict[str, Any]:
    """In a child: room runs out inside the second write (EFBIG), then comes back."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    sink = _sink(Path(path))
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    sink.submit_many([_line("one")])
    size = os.path.getsize(path)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, hard))  # inside the next record
    cut = sink.submit_many([_line("two"), _line("three")])
    nothing = sink.submit_many([_line("four")])  # no room at all: lost, counted
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    after = sink.submit_many([_line("five")])
    stats = sink.stats()
    sink.close(5.0)
    return {"cut": cut, "nothing": nothing, "after": after, "dropped": stats["dropped"]}


class TestFullDisk:
    def test_records_that_found_no_room_are_declared_by_the_next_one(self, tmp_path: Path) -> None:
        """A record cut by a full disk is finished when room comes back; the ones that never
        reached the file are counted and announced, signed, as audit.lost on the next."""
        path = tmp_path / "a.jsonl"
        result = run_in_child(lambda: _full_disk_child(str(path)), deadline=60.0)
        assert {"cut": 0, "nothing": 0, "after": 1, "dropped": 2} == result
        [records] = oracle_chains(lines_of(path)).values()
        assert ["one", "two", "five", "audit.checkpoint"] == [r["event"] for r in records]
        assert 2 == records[2]["audit.lost"]  # three and four
        assert [1, 2, 3, 4] == [r["audit.seq"] for r in records]


class TestFork:
    def test_a_forked_worker_starts_its_own_chain(self, tmp_path: Path) -> None:
        """Parent and child append to one file; each has a chain named by its own pid."""
        path = tmp_path / "a.jsonl"
        sink = _sink(path)
        sink.submit_many([_line("parent-1")])

        def child() -> int:
            sink.submit_many([_line("child-1")])
            sink.close(5.0)
            return os.getpid()

        child_pid = run_in_child(child, deadline=30.0)
        sink.submit_many([_line("parent-2")])
        sink.close(5.0)
        chains = oracle_chains(lines_of(path))
        by_pid = {int(name.split(":")[1]): records for name, records in chains.items()}
        assert {os.getpid(), child_pid} == set(by_pid)
        assert ["parent-1", "parent-2", "audit.checkpoint"] == [
            r["event"] for r in by_pid[os.getpid()]
        ]
        assert ["child-1", "audit.checkpoint"] == [r["event"] for r in by_pid[child_pid]]


class TestConfig:
    @pytest.mark.parametrize(
        ("sink", "key"),
        [
            ({"audit": True}, "sinks[0].audit_key"),
            ({"audit": True, "audit_key": "short"}, "sinks[0].audit_key"),
            ({"audit": True, "audit_key": "${AUDIT_KEY}", "sync": False}, "sinks[0].sync"),
            ({"events": ["user.*"]}, "sinks[0].events"),
            ({"fsync": 0.5}, "sinks[0].fsync"),
            ({"audit": True, "audit_key": "${NO_SUCH_KEY}"}, "sinks[0].audit_key"),
        ],
    )
    def test_a_bad_audit_setting_fails_at_start_naming_the_key(
        self, tmp_path: Path, sink: dict[str, Any], key: str
    ) -> None:
        """The error names the key; a key's value is never shown."""
        table = {"type": "file", "path": str(tmp_path / "a.jsonl"), **sink}
        app = Flask("shop")
        app.config["BRIDGE_SINKS"] = [table]
        with pytest.raises(ConfigError) as raised:
            SignalBridge(app)
        assert key in str(raised.value)
        assert "short" not in str(raised.value)

    def test_an_audit_sink_on_a_pipe_is_refused(self, tmp_path: Path) -> None:
        """A chain must be read back from a regular file: a FIFO path fails at start-up."""
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        app = Flask("shop")
        app.config["BRIDGE_SINKS"] = [
            {"type": "file", "path": str(fifo), "audit": True, "audit_key": "${AUDIT_KEY}"}
        ]
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            with pytest.raises(ConfigError, match=r"sinks\[0\]\.path"):
                SignalBridge(app)
        finally:
            os.close(reader)


class TestKeySeparation:
    def test_the_audit_key_must_not_be_the_pseudonym_key(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """One secret for both fails at start-up, naming the audit sink's key, value hidden."""
        monkeypatch.setenv("PSEUDONYM_KEY", KEY)
        app = Flask("shop")
        app.config["BRIDGE_PSEUDONYMIZE"] = ["client.address"]
        app.config["BRIDGE_PSEUDONYMIZE_KEY"] = "${PSEUDONYM_KEY}"
        app.config["BRIDGE_SINKS"] = [
            {
                "type": "file",
                "path": str(tmp_path / "a.jsonl"),
                "audit": True,
                "audit_key": "${AUDIT_KEY}",
            }
        ]
        with pytest.raises(ConfigError, match=r"sinks\[0\]\.audit_key") as raised:
            SignalBridge(app)
        assert KEY not in str(raised.value)


class TestPortableCheck:
    def test_a_float_argument_still_verifies_by_bytes(self, tmp_path: Path) -> None:
        """The MAC is over the bytes written, so a number the stdlib would write otherwise
        (1.5e-05 vs 0.000015) does not matter to another verifier."""
        sink = _sink(tmp_path / "a.jsonl")
        sink.submit_many([_line("user-login", ratio=1.5e-5, big=1e21, tiny=1e-7)])
        sink.close(5.0)
        [records] = oracle_chains(lines_of(tmp_path / "a.jsonl")).values()
        assert 1.5e-5 == records[0]["ratio"]

    def test_openssl_checks_a_line_as_the_readme_shows(self, tmp_path: Path) -> None:
        """The README's shell lines (cut the MAC member, HMAC the rest with openssl) give the
        line's audit.mac: no JSON library, no trust in this package needed."""
        sink = _sink(tmp_path / "audit.jsonl")
        sink.submit_many([_line("user-login", note='quote " and ,"audit.mac": inside')])
        sink.close(5.0)
        script = (
            "line=$(sed -n 1p audit.jsonl)\n"
            'printf \'%s}\' "${line%,\\"audit.mac\\":*}" '
            '| openssl dgst -sha256 -hmac "$AUDIT_KEY" -r | cut -d" " -f1\n'
        )
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env={"AUDIT_KEY": KEY, "PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert 0 == done.returncode, done.stderr
        first = json.loads(lines_of(tmp_path / "audit.jsonl")[0])
        assert first["audit.mac"] == done.stdout.strip()

"""The audit file sink attacked the way production treats it: full disks in the middle of a
checkpoint, files renamed, truncated, deleted or replaced by a symlink under the writer, forks
while another thread writes, workers rotating under each other, close() from a signal handler,
hostile arguments and globs. Every file left behind is read back oldest first and checked with
the stdlib oracle of `test_audit_sink` (MACs, seq, prev), and each record a `submit_many`
reported written is found, each one it reported not written accounted for by `audit.lost`."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.audit.sink import AuditSink
from bridge.config import FileSinkSettings
from tests.audit.test_audit_sink import KEY, _line, audit_app, lines_of, oracle_chains
from tests.conftest import LOGIN_SIGNAL
from tests.forks import run_in_child


@pytest.fixture(autouse=True)
def _audit_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_KEY", KEY)


def make_sink(path: Path, *, check_interval: float = 0.0, **overrides: Any) -> AuditSink:
    values: dict[str, Any] = dict(
        type="file", name="audit", path=path, audit=True, audit_key=KEY, events=("*",)
    )
    values.update(sync=True, fsync=False)
    values.update(overrides)
    return AuditSink(FileSinkSettings(**values), check_interval=check_interval)


def events_of(lines: list[bytes]) -> list[str]:
    return [json.loads(line)["event"] for line in lines]


def files_oldest_first(path: Path) -> list[Path]:
    backups = [p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()]
    return [*sorted(backups, key=lambda p: -int(p.suffix[1:])), path]


def until(condition: Any, timeout: float = 30.0) -> bool:
    """Spin until `condition()` (threads of the test are about to make it true), bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
    return True


def _raise_the_limit(signum: int, frame: Any) -> None:
    """Room comes back the moment a write is refused (another process freed space)."""
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))


def _limit_file_size(size: int) -> None:
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))


class TestFullDisk:
    def test_a_cut_inside_a_batch_does_not_stop_logrotate_being_followed(
        self, tmp_path: Path
    ) -> None:
        """A request's records cut by a full disk, room back, then logrotate renames the file:
        the renamed file ends with a rotation checkpoint and the new path gets the rest."""
        path = tmp_path / "a.jsonl"

        def child() -> list[int]:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            sink = make_sink(path)
            sink.submit_many([_line("one")])
            _limit_file_size(path.stat().st_size + 40)  # inside "two", "three" not reached
            cut = sink.submit_many([_line("two"), _line("three")])
            _limit_file_size(resource.RLIM_INFINITY)
            after = sink.submit_many([_line("four")])
            os.rename(path, tmp_path / "a.jsonl-1")
            moved = sink.submit_many([_line("five")])
            sink.close(5.0)
            return [cut, after, moved]

        assert [0, 1, 1] == run_in_child(child, deadline=60.0)
        old, new = lines_of(tmp_path / "a.jsonl-1"), lines_of(path)
        [records] = oracle_chains(old + new).values()
        assert ["one", "two", "four", "audit.checkpoint"] == events_of(old)
        assert ["five", "audit.checkpoint"] == events_of(new)
        assert 1 == records[2]["audit.lost"]  # three

    def test_a_record_cut_then_its_file_renamed_is_finished_in_that_file(
        self, tmp_path: Path
    ) -> None:
        """A record cut by a full disk, logrotate renames the file before room comes back:
        the rest goes to the renamed file (where its start is), then the checkpoint, then
        the new path; the record that never got room is declared once."""
        path = tmp_path / "a.jsonl"

        def child() -> list[int]:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            sink = make_sink(path)
            sink.submit_many([_line("one")])
            _limit_file_size(path.stat().st_size + 40)
            cut = sink.submit_many([_line("two"), _line("three")])
            os.rename(path, tmp_path / "a.jsonl-1")
            _limit_file_size(resource.RLIM_INFINITY)
            after = sink.submit_many([_line("four")])
            sink.close(5.0)
            return [cut, after]

        assert [0, 1] == run_in_child(child, deadline=60.0)
        old, new = lines_of(tmp_path / "a.jsonl-1"), lines_of(path)
        [records] = oracle_chains(old + new).values()
        assert ["one", "two", "audit.checkpoint"] == events_of(old)
        assert ["four", "audit.checkpoint"] == events_of(new)
        assert 1 == records[2]["audit.lost"]  # three: declared by the next record, the checkpoint
        assert 1 == sum(r.get("audit.lost", 0) for r in records)

    def test_a_rotation_checkpoint_cut_by_a_full_disk_is_finished_before_any_record(
        self, tmp_path: Path
    ) -> None:
        """Room runs out inside a rotation checkpoint and comes back at once: the checkpoint
        is finished whole in the file it ends, and the records go to the new file."""
        path = tmp_path / "a.jsonl"

        def child() -> list[int]:
            signal.signal(signal.SIGXFSZ, _raise_the_limit)
            sink = make_sink(path, rotate_bytes=1, backups=9)  # every write rotates
            first = sink.submit_many([_line("one")])
            second = sink.submit_many([_line("two")])
            _limit_file_size(path.stat().st_size + 40)  # inside the checkpoint after "two"
            third = sink.submit_many([_line("three"), _line("four")])
            sink.close(5.0)
            return [first, second, third]

        assert [1, 1, 2] == run_in_child(child, deadline=60.0)
        files = files_oldest_first(path)
        [records] = oracle_chains(lines_of(*files)).values()
        assert ["one", "two", "three", "four"] == [
            r["event"] for r in records if r["event"] != "audit.checkpoint"
        ]
        assert not any("audit.lost" in r for r in records)
        for old in files[:-1]:
            assert "audit.checkpoint" == events_of(lines_of(old))[-1]

    def test_a_checkpoint_that_found_no_room_is_not_counted_as_a_lost_record(
        self, tmp_path: Path
    ) -> None:
        """The directory is removed under the writer, three records fail, it comes back: the
        next record says audit.lost = 3, the records reported not written, not the failed
        checkpoints (which are no events and are not missing from the chain)."""
        directory = tmp_path / "logs"
        path = directory / "a.jsonl"
        sink = make_sink(path)
        try:
            assert 1 == sink.submit_many([_line("one")])
            shutil.rmtree(directory)
            failed = [sink.submit_many([_line(f"lost-{n}")]) for n in range(3)]
            directory.mkdir()
            assert 1 == sink.submit_many([_line("back")])
            stats = sink.stats()
        finally:
            sink.close(5.0)
        assert [0, 0, 0] == failed
        first = json.loads(lines_of(path)[0])
        assert ("back", 3) == (first["event"], first["audit.lost"])
        assert ({"write_error": 3}, 2, 5) == (
            stats["dropped_by_reason"],
            stats["delivered"],  # one and back: events, as enqueued counts them
            stats["enqueued"],
        )

    def test_a_shutdown_checkpoint_cut_by_a_full_disk_is_finished_when_room_came_back(
        self, tmp_path: Path
    ) -> None:
        """Room runs out inside the shutdown checkpoint and comes back at once: the file ends
        with the whole checkpoint."""
        path = tmp_path / "a.jsonl"

        def child() -> bool:
            signal.signal(signal.SIGXFSZ, _raise_the_limit)
            sink = make_sink(path)
            sink.submit_many([_line("one")])
            _limit_file_size(path.stat().st_size + 40)
            return bool(sink.close(5.0))

        run_in_child(child, deadline=60.0)
        [records] = oracle_chains(lines_of(path)).values()
        assert ["one", "audit.checkpoint"] == [r["event"] for r in records]


class TestLifecycle:
    def test_close_from_a_signal_handler_while_the_thread_writes_returns_within_its_timeout(
        self, tmp_path: Path
    ) -> None:
        """A signal lands while the same thread holds the sink's lock (a full disk's SIGXFSZ,
        mid-write) and its handler calls close(): it gives up after its timeout instead of
        waiting for itself forever; a later close() ends the chain."""
        path = tmp_path / "a.jsonl"

        def child() -> list[Any]:
            sink = make_sink(path)
            answers: list[Any] = []

            def handler(signum: int, frame: Any) -> None:
                _raise_the_limit(signum, frame)
                answers.append(sink.close(0.2))

            signal.signal(signal.SIGXFSZ, handler)
            sink.submit_many([_line("one")])
            _limit_file_size(path.stat().st_size + 40)
            answers.append(sink.submit_many([_line("two")]))
            answers.append(sink.submit_many([_line("three")]))
            answers.append(sink.close(5.0))
            return answers

        assert [False, 0, 1, True] == run_in_child(child, deadline=20.0)
        [records] = oracle_chains(lines_of(path)).values()
        assert ["one", "two", "three", "audit.checkpoint"] == [r["event"] for r in records]

    def test_flush_and_close_twice_and_flush_after_close_are_harmless(self, tmp_path: Path) -> None:
        """One shutdown checkpoint however often close() is called; no write after it."""
        path = tmp_path / "a.jsonl"
        sink = make_sink(path, fsync=True)
        sink.submit_many([_line("one")])
        assert [True, True, True, True] == [
            sink.flush(1.0),
            sink.close(1.0),
            sink.close(1.0),
            sink.flush(1.0),
        ]
        assert 0 == sink.submit_many([_line("late")])
        [records] = oracle_chains(lines_of(path)).values()
        assert ["one", "audit.checkpoint"] == [r["event"] for r in records]

    def test_close_racing_with_submitting_threads_and_the_syncer(self, tmp_path: Path) -> None:
        """4 threads submit while the interval syncer runs and close() comes: every record a
        submit reported written is in the file, before the shutdown checkpoint, nothing after."""
        path = tmp_path / "a.jsonl"
        sink = make_sink(path, fsync=0.001)
        started = threading.Barrier(5)
        reported: dict[str, int] = {}

        def submitter(number: int) -> None:
            started.wait(10.0)
            for n in range(400):
                event = f"t{number}-{n}"
                reported[event] = sink.submit_many([_line(event)])

        threads = [threading.Thread(target=submitter, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        started.wait(10.0)
        assert until(lambda: any(reported.values()))  # close() lands among the writes
        assert sink.close(5.0)
        for thread in threads:
            thread.join(30.0)
        [records] = oracle_chains(lines_of(path)).values()
        assert {e for e, n in reported.items() if n} == {r["event"] for r in records[:-1]}
        assert ("audit.checkpoint", "shutdown") == (
            records[-1]["event"],
            records[-1]["audit.reason"],
        )
        assert 1600 == len(reported)

    def test_stats_while_threads_write_never_fail_and_add_up(self, tmp_path: Path) -> None:
        """stats() read in a loop while two threads write: no error; the end adds up."""
        path = tmp_path / "a.jsonl"
        sink = make_sink(path)

        def writer() -> None:
            for n in range(300):
                sink.submit_many([_line(f"e{n}"), _line(f"f{n}")])

        threads = [threading.Thread(target=writer) for _ in range(2)]
        for thread in threads:
            thread.start()
        seen = []
        while any(thread.is_alive() for thread in threads):
            seen.append(sink.stats()["delivered"])
        for thread in threads:
            thread.join(30.0)
        final = sink.stats()
        sink.close(5.0)
        assert seen == sorted(seen)
        assert (1200, 1200, 1200) == (
            final["enqueued"],
            final["delivered"],
            final["chain_records"],
        )


class TestFork:
    def test_a_child_forked_while_another_thread_holds_the_lock_writes_its_own_chain(
        self, tmp_path: Path
    ) -> None:
        """The fork lands while the sink's lock is held: the child does not wait for it, and
        its records form their own valid chain beside the parent's."""
        path = tmp_path / "a.jsonl"
        sink = make_sink(path)
        sink.submit_many([_line("parent-1")])

        def child() -> int:
            written = sink.submit_many([_line("child-1"), _line("child-2")])
            sink.close(5.0)
            return written

        assert 2 == run_in_child(child, deadline=20.0, holding=sink._lock)
        sink.submit_many([_line("parent-2")])
        sink.close(5.0)
        chains = oracle_chains(lines_of(path))
        assert [
            ["child-1", "child-2", "audit.checkpoint"],
            ["parent-1", "parent-2", "audit.checkpoint"],
        ] == sorted([r["event"] for r in records] for records in chains.values())

    def test_a_fork_while_writer_threads_are_mid_write_and_the_syncer_waits(
        self, tmp_path: Path
    ) -> None:
        """Interval fsync, threads writing, a fork among them: the child gets a syncer of its
        own (its record is synced by it) and every chain in the file stays valid."""
        path = tmp_path / "a.jsonl"
        sink = make_sink(path, fsync=0.01)
        stop = threading.Event()

        def writer() -> None:
            while not stop.is_set():
                sink.submit_many([_line("parent")])

        threads = [threading.Thread(target=writer) for _ in range(2)]
        for thread in threads:
            thread.start()

        def child() -> list[Any]:
            synced = threading.Event()
            real = os.fsync

            def fsync(fd: int) -> None:
                real(fd)
                if threading.current_thread().name == "bridge-audit-audit":
                    synced.set()

            os.fsync = fsync
            written = sink.submit_many([_line("child")])
            answer = [written, synced.wait(10.0)]
            sink.close(5.0)
            return answer

        try:
            assert until(lambda: path.stat().st_size > 0)
            answers = [run_in_child(child, deadline=30.0) for _ in range(3)]
        finally:
            stop.set()
            for thread in threads:
                thread.join(30.0)
            sink.close(5.0)
        assert [[1, True]] * 3 == answers
        chains = oracle_chains(lines_of(path))
        children = [r for r in chains.values() if r[0]["event"] == "child"]
        assert [["child", "audit.checkpoint"]] * 3 == [[r["event"] for r in c] for c in children]

    def test_close_in_the_child_leaves_the_parents_chain_alone(self, tmp_path: Path) -> None:
        """The child closes (no records of its own: nothing written); the parent's chain
        goes on and ends with its own checkpoint."""
        path = tmp_path / "a.jsonl"
        sink = make_sink(path)
        sink.submit_many([_line("parent-1")])
        assert [True, True] == run_in_child(
            lambda: [sink.close(5.0), sink.flush(1.0)], deadline=20.0
        )
        sink.submit_many([_line("parent-2")])
        sink.close(5.0)
        [records] = oracle_chains(lines_of(path)).values()
        assert ["parent-1", "parent-2", "audit.checkpoint"] == [r["event"] for r in records]


class TestTheFileUnderTheWriter:
    def test_copytruncate_keeps_the_chain_across_the_copy_and_the_file(
        self, tmp_path: Path
    ) -> None:
        """logrotate's copytruncate: the copy then the truncated file read as one chain."""
        path = tmp_path / "a.jsonl"
        sink = make_sink(path)
        try:
            sink.submit_many([_line("one"), _line("two")])
            shutil.copyfile(path, tmp_path / "a.jsonl.1")
            os.truncate(path, 0)
            assert 1 == sink.submit_many([_line("three")])
        finally:
            sink.close(5.0)
        [records] = oracle_chains(lines_of(tmp_path / "a.jsonl.1", path)).values()
        assert ["one", "two", "three", "audit.checkpoint"] == [r["event"] for r in records]

    def test_a_deleted_file_is_replaced_and_its_successor_starts_after_a_checkpoint(
        self, tmp_path: Path
    ) -> None:
        """rm under the writer: the deleted file got the checkpoint; the new file's first
        record links to it (seq goes on), nothing lost, nothing written into the void after."""
        path = tmp_path / "a.jsonl"
        sink = make_sink(path)
        try:
            sink.submit_many([_line("one")])
            os.unlink(path)
            assert 1 == sink.submit_many([_line("two")])
        finally:
            sink.close(5.0)
        records = [json.loads(line) for line in lines_of(path)]
        assert (["two", "audit.checkpoint"], 3) == (
            [r["event"] for r in records],
            records[0]["audit.seq"],  # one (1) and its rotation checkpoint (2) went with the file
        )
        assert "audit.lost" not in records[0]

    def test_a_symlink_planted_at_the_path_is_never_followed(self, tmp_path: Path) -> None:
        """The file renamed away and a symlink put in its place: the target is untouched, the
        records go on into the renamed file, whose chain stays valid."""
        path = tmp_path / "a.jsonl"
        target = tmp_path / "victim"
        target.write_bytes(b"precious\n")
        sink = make_sink(path)
        try:
            sink.submit_many([_line("one")])
            os.rename(path, tmp_path / "a.jsonl.1")
            os.symlink(target, path)
            answers = [sink.submit_many([_line("two")]), sink.submit_many([_line("three")])]
        finally:
            sink.close(5.0)
        assert b"precious\n" == target.read_bytes()
        [records] = oracle_chains(lines_of(tmp_path / "a.jsonl.1")).values()
        assert [1, 1] == answers
        assert {"one", "two", "three"} <= {r["event"] for r in records}
        assert "shutdown" == records[-1]["audit.reason"]


def _rotating_writer(path: Path, tag: str, rounds: int) -> dict[str, int]:
    sink = make_sink(path, rotate_bytes=3000, backups=80)
    reported = {}
    for n in range(rounds):
        batch = [_line(f"{tag}-{n}-a"), _line(f"{tag}-{n}-b", **{"args.pad": "x" * 200})]
        reported[f"{tag}-{n}"] = sink.submit_many(batch)
    sink.close(5.0)
    return reported


class TestWorkersRotatingUnderEachOther:
    @pytest.mark.parametrize("round_", range(3))
    def test_two_processes_with_rotate_bytes_keep_every_chain_whole(
        self, tmp_path: Path, round_: int
    ) -> None:
        """Parent and child append and rotate the same file at once: read oldest first,
        every chain is valid, each record reported written is there once, and every chain's
        part of a file it left ends with a rotation checkpoint."""
        path = tmp_path / "a.jsonl"
        sink = make_sink(path)  # the fork registers nothing new: a plain start-up file
        sink.close(1.0)
        child_result: list[Any] = []
        child = threading.Thread(
            target=lambda: child_result.append(
                run_in_child(lambda: _rotating_writer(path, "child", 150), deadline=120.0)
            )
        )
        child.start()
        parent = _rotating_writer(path, "parent", 150)
        child.join(150.0)
        [reported] = child_result
        reported.update(parent)
        files = files_oldest_first(path)
        assert len(files) > 10
        chains = oracle_chains(lines_of(*files))
        events = [r["event"] for c in chains.values() for r in c]
        written = [f"{key}-{part}" for key, n in reported.items() for part in "ab"[:n]]
        assert sorted(written) == sorted(e for e in events if e != "audit.checkpoint")
        assert not any("audit.lost" in r for c in chains.values() for r in c)
        ends: dict[str, list[str]] = {}  # chain -> how its part of each file ends, in order
        for file in files:
            last_of: dict[str, str] = {}
            for line in lines_of(file):
                record = json.loads(line)
                last_of[record["audit.chain"]] = record.get("audit.reason", record["event"])
            for chain, reason in last_of.items():
                ends.setdefault(chain, []).append(reason)
        for parts in ends.values():
            assert ["rotation"] * (len(parts) - 1) + ["shutdown"] == parts


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"d": value}
    return value


class TestHostileArguments:
    @pytest.mark.parametrize(
        "arguments",
        [
            {"username": "x" * (1 << 20)},
            {"username": "Zoë 李 \u2028 \x00 \x1f 🙂"},
            {"username": "lone \ud800 surrogate \udfff"},
            {"audit.mac": "0" * 64, "args.audit.mac": "1" * 64, "audit.chain": "evil"},
            {"nested": _nested(300)},
            {"big": 2**80, "small": -(2**70), "ratio": 0.1, "huge": 1e300},
            {"items": list(range(1000))},
        ],
        ids=["1MiB", "non-ascii", "surrogates", "audit-keys", "nested", "numbers", "list"],
    )
    def test_a_login_with_hostile_arguments_is_recorded_in_a_valid_chain(
        self, tmp_path: Path, arguments: dict[str, Any]
    ) -> None:
        """Whatever the app sends, the login is recorded (nothing raised, nothing skipped) and
        the chain verifies, before and after it."""
        app, bridge, audit_path, _ = audit_app(tmp_path)
        try:
            client = app.test_client()
            client.post("/login")
            with app.test_request_context("/"):
                LOGIN_SIGNAL.send(app, **arguments)
            client.post("/login")
        finally:
            bridge.close(5.0)
        [records] = oracle_chains(lines_of(audit_path)).values()
        assert ["user-login"] * 3 + ["audit.checkpoint"] == [r["event"] for r in records]
        assert [1, 2, 3, 4] == [r["audit.seq"] for r in records]
        assert "evil" != records[1]["audit.chain"]


class TestHostileGlobs:
    @pytest.mark.parametrize(
        ("pattern", "matches", "misses"),
        [
            ("[", ["["], ["a"]),
            ("**", ["user-login", ""], []),
            ("a.+?(b)|c", ["a.+?(b)|c"], ["aa(b)", "c"]),
            ("user-[!x]*", ["user-login"], ["user-xray"]),
            ("[z-a]", [], ["z", "a", "-"]),
            ("\\", ["\\"], [""]),
            ("*a*a*a*a*a*a*a*a*a*a*a*a*b", ["a" * 12 + "b"], ["a" * 5000]),
        ],
    )
    def test_an_events_glob_matches_event_names_literally_and_quickly(
        self, tmp_path: Path, pattern: str, matches: list[str], misses: list[str]
    ) -> None:
        """A glob full of regex metacharacters is a glob: no error, no regex meaning, and
        no catastrophic backtracking on a long name."""
        path = tmp_path / "a.jsonl"
        sink = make_sink(path, events=(pattern, "x-never"))
        try:
            started = time.monotonic()
            chosen = [sink.submit_many([_line(name)]) for name in matches + misses]
            took = time.monotonic() - started
        finally:
            sink.close(5.0)
        assert [1] * len(matches) + [0] * len(misses) == chosen
        assert took < 5.0


def _interrupted_worker(path: Path) -> dict[str, Any]:
    """Submits until a timer's handler exits the way gunicorn's SIGQUIT handler does (sys.exit,
    anywhere, often inside the sink), then closes as atexit would."""
    sink = make_sink(path)
    reported: dict[str, int] = {}

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.002)
    try:
        for n in range(100_000):
            reported[f"e{n}"] = 0
            reported[f"e{n}"] = sink.submit_many([_line(f"e{n}"), _line(f"e{n}")])
    except SystemExit:
        pass
    signal.setitimer(signal.ITIMER_REAL, 0)
    closed = sink.close(5.0)
    return {"reported": reported, "closed": closed}


class TestInterrupted:
    @pytest.mark.parametrize("round_", range(8))
    def test_a_signal_handler_exiting_mid_write_leaves_chains_that_verify(
        self, tmp_path: Path, round_: int
    ) -> None:
        """sys.exit() from a signal handler at a random point of a busy worker, then close():
        the file verifies (a chain cut mid-write ends there, without a false checkpoint), and
        every record reported written is in it."""
        path = tmp_path / "a.jsonl"
        result = run_in_child(lambda: _interrupted_worker(path), deadline=60.0)
        chains = oracle_chains(lines_of(path))
        events = {r["event"] for records in chains.values() for r in records}
        assert {e for e, n in result["reported"].items() if n} <= events

"""The audit verifier (`bridge.audit.verify`, `flask bridge verify`, `python -m bridge.audit`):
trails written with `Chain.seal` as the audit sink writes them (several processes' chains
interleaved in one file, checkpoints, rotation), then tampered with: every tampering fails,
naming the line where it shows."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import SignalBridge
from bridge.audit.chain import CHECKPOINT_EVENT, AuditKey, Chain, chain_name
from bridge.audit.trailfiles import reading_order
from bridge.audit.verify import MAX_PROBLEMS, VerifyReport, verify
from bridge.cli import bridge_command
from tests.conftest import build_app
from tests.forks import run_in_child

KEY = AuditKey.of("correct horse battery staple 0123456789")
OLD_KEY = AuditKey.of("an older key, rotated out 9876543210")
OTHER_KEY = AuditKey.of("somebody else's key, not given 0000")
ROOT = Path(__file__).resolve().parent.parent.parent


class Writer:
    """Seals records for several processes (one chain each), as the audit sink does."""

    def __init__(self, key: AuditKey = KEY, host: str = "web-1") -> None:
        self.key = key
        self.host = host
        self.chains: dict[str, tuple[Chain, int]] = {}
        self.clock = 0

    def chain(self, label: str) -> Chain:
        if label not in self.chains:
            pid = 4000 + len(self.chains)
            self.chains[label] = (Chain(self.key, chain_name(self.host, pid)), pid)
        return self.chains[label][0]

    def envelope(self, label: str, event: str) -> dict[str, Any]:
        self.chain(label)
        self.clock += 1
        minute, second = divmod(self.clock, 60)
        return {
            "timestamp": f"2026-12-07T04:{minute:02d}:{second:02d}.000001Z",
            "level": "info",
            "event": event,
            "signal": "",
            "event_id": f"{self.clock:032x}",
            "service.name": "shop",
            "host.name": self.host,
            "process.pid": self.chains[label][1],
        }

    def login(self, label: str) -> bytes:
        record = self.envelope(label, "user-login")
        record.update({"event.outcome": "success", "user.id": f"u{self.clock}"})
        return self.chain(label).seal(record)

    def checkpoint(self, label: str, reason: str) -> bytes:
        chain = self.chain(label)
        record = self.envelope(label, CHECKPOINT_EVENT)
        record.update({"audit.reason": reason, "audit.records": chain.seq})
        return chain.seal(record, own=True)


def three_chains(writer: Writer | None = None) -> list[bytes]:
    """Chains A, B, C of one host interleaved: 4 logins each, then their shutdowns."""
    writer = writer or Writer()
    lines = [writer.login(label) for label in "ABACBACBACBC"]
    return [*lines, writer.checkpoint("B", "shutdown"), writer.checkpoint("A", "shutdown"),
            writer.checkpoint("C", "shutdown")]  # fmt: skip


def write(path: Path, lines: Sequence[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(lines))
    return path


def first(report: VerifyReport) -> tuple[str, int]:
    assert report.problems, "the trail verified"
    return report.problems[0].path, report.problems[0].line


def line_of(lines: Sequence[bytes], label_seq: tuple[str, int], writer: Writer) -> int:
    """The 1-based line of record `seq` of chain `label`."""
    name = writer.chains[label_seq[0]][0].name
    for number, line in enumerate(lines, 1):
        record = json.loads(line)
        if (record["audit.chain"], record["audit.seq"]) == (name, label_seq[1]):
            return number
    raise AssertionError(f"no record {label_seq}")


@pytest.fixture
def trail(tmp_path: Path) -> tuple[Writer, list[bytes], Path]:
    writer = Writer()
    lines = three_chains(writer)
    return writer, lines, tmp_path / "audit.jsonl"


class TestValidTrail:
    def test_interleaved_chains_verify_with_a_summary(
        self, trail: tuple[Writer, list[bytes], Path]
    ) -> None:
        """Three processes' chains in one file verify; the summary counts them."""
        _, lines, path = trail
        report = verify([write(path, lines)], [KEY])
        assert [] == report.problems
        summary = report.summary
        assert (1, 3, 15, 3, 0, 0) == (
            summary.files,
            summary.chains,
            summary.records,
            summary.checkpoints,
            summary.lost,
            summary.open_chains,
        )
        assert "2026-12-07T04:00:01.000001Z" == summary.first_time
        assert "2026-12-07T04:00:15.000001Z" == summary.last_time

    def test_swapping_lines_of_different_chains_still_verifies(
        self, trail: tuple[Writer, list[bytes], Path]
    ) -> None:
        """Processes write in any order relative to each other: only a chain's order counts."""
        _, lines, path = trail
        lines[0], lines[1] = lines[1], lines[0]  # A1 and B1
        assert verify([write(path, lines)], [KEY]).ok

    def test_lost_records_are_counted(self, tmp_path: Path) -> None:
        """`audit.lost` (records the sink could not write) is summed in the summary."""
        writer = Writer()
        lines = [writer.login("A")]
        writer.chain("A").lost = 3
        lines += [writer.login("A"), writer.checkpoint("A", "shutdown")]
        report = verify([write(tmp_path / "a.jsonl", lines)], [KEY])
        assert (True, 3) == (report.ok, report.summary.lost)

    def test_an_old_key_among_the_keys(self, tmp_path: Path) -> None:
        """Records signed with an older key verify when that key is one of those given."""
        old, new = Writer(OLD_KEY), Writer(KEY, host="web-2")
        lines = [old.login("A"), old.checkpoint("A", "shutdown")]
        lines += [new.login("A"), new.checkpoint("A", "shutdown")]
        assert verify([write(tmp_path / "a.jsonl", lines)], [KEY, OLD_KEY]).ok


class TestTampering:
    def test_edited_field_value(self, trail: tuple[Writer, list[bytes], Path]) -> None:
        """An edited value breaks that line's MAC, and only that line is named."""
        writer, lines, path = trail
        number = line_of(lines, ("A", 2), writer)
        lines[number - 1] = lines[number - 1].replace(b'"level":"info"', b'"level":"debug"')
        report = verify([write(path, lines)], [KEY])
        assert [(str(path), number)] == [(p.path, p.line) for p in report.problems]
        assert "the MAC does not match" in report.problems[0].message

    def test_edited_seq(self, trail: tuple[Writer, list[bytes], Path]) -> None:
        """An edited audit.seq is named at its line."""
        writer, lines, path = trail
        number = line_of(lines, ("B", 2), writer)
        lines[number - 1] = lines[number - 1].replace(b'"audit.seq":2', b'"audit.seq":3')
        assert (str(path), number) == first(verify([write(path, lines)], [KEY]))

    def test_respelled_json_with_the_same_values(
        self, trail: tuple[Writer, list[bytes], Path]
    ) -> None:
        """A repeated key (which another reader may take instead) fails although the MAC holds."""
        _, lines, path = trail
        assert lines[4].startswith(b'{"audit.chain"')
        lines[4] = lines[4].replace(b'{"audit.chain"', b'{"user.id":"admin","audit.chain"', 1)
        report = verify([write(path, lines)], [KEY])
        assert (str(path), 5) == first(report)
        assert "the MAC does not match" in report.problems[0].message

    def test_a_line_rewritten_with_other_spacing(
        self, trail: tuple[Writer, list[bytes], Path]
    ) -> None:
        """The same record re-serialized (spaces after separators): not the signed bytes."""
        _, lines, path = trail
        lines[2] = json.dumps(json.loads(lines[2])).encode() + b"\n"
        report = verify([write(path, lines)], [KEY])
        assert (str(path), 3) == first(report)
        assert "not in signed form" in report.problems[0].message

    def test_tail_truncated_by_whole_lines(self, trail: tuple[Writer, list[bytes], Path]) -> None:
        """A cut tail: the chain whose shutdown checkpoint is gone is named at its last line."""
        writer, lines, path = trail
        report = verify([write(path, lines[:-2])], [KEY])  # A's and C's shutdowns
        assert (str(path), line_of(lines, ("A", 4), writer)) == first(report)
        assert "without its shutdown checkpoint" in report.problems[0].message
        assert 2 == report.problem_count

    def test_tail_truncated_mid_line(self, trail: tuple[Writer, list[bytes], Path]) -> None:
        """A file cut mid-line is named at its torn last line."""
        _, lines, path = trail
        lines[-1] = lines[-1][:40]
        report = verify([write(path, lines)], [KEY])
        assert (str(path), len(lines)) == first(report)
        assert "incomplete" in report.problems[0].message

    def test_middle_line_deleted(self, trail: tuple[Writer, list[bytes], Path]) -> None:
        """A deleted record is named as missing before the chain's next line."""
        writer, lines, path = trail
        deleted = line_of(lines, ("C", 2), writer)
        next_line = line_of(lines, ("C", 3), writer) - 1  # one line less above it
        del lines[deleted - 1]
        report = verify([write(path, lines)], [KEY])
        assert [(str(path), next_line)] == [(p.path, p.line) for p in report.problems]
        assert f"record 2 of chain {writer.chain('C').name} missing before this line" in str(
            report.problems[0]
        )

    def test_first_line_of_a_chain_deleted(self, trail: tuple[Writer, list[bytes], Path]) -> None:
        """A chain that starts at record 2 is named at that line."""
        writer, lines, path = trail
        del lines[line_of(lines, ("B", 1), writer) - 1]
        report = verify([write(path, lines)], [KEY])
        assert (str(path), line_of(lines, ("B", 2), writer)) == first(report)
        assert "starts at record 2" in report.problems[0].message

    def test_line_copied_from_another_chain_of_the_set(
        self, trail: tuple[Writer, list[bytes], Path]
    ) -> None:
        """A copy of a record inserted later names the copy and where the record was first."""
        writer, lines, path = trail
        original = line_of(lines, ("C", 1), writer)
        lines.insert(9, lines[original - 1])
        report = verify([write(path, lines)], [KEY])
        assert (str(path), 10) == first(report)
        assert f"a second time (first at {path}:{original})" in report.problems[0].message

    def test_line_copied_before_its_original(self, trail: tuple[Writer, list[bytes], Path]) -> None:
        """A copy inserted ahead of its chain's place is named where it was inserted."""
        writer, lines, path = trail
        lines.insert(0, lines[line_of(lines, ("C", 3), writer) - 1])
        assert (str(path), 1) == first(verify([write(path, lines)], [KEY]))

    @pytest.mark.parametrize("seq", [1, 2])
    def test_line_copied_from_another_trail(
        self, trail: tuple[Writer, list[bytes], Path], seq: int
    ) -> None:
        """A record of a chain that is not in the set (same key): named at the inserted line."""
        _, lines, path = trail
        foreign = Writer(host="web-9")
        records = [foreign.login("Z"), foreign.login("Z")]
        lines.insert(6, records[seq - 1])
        assert (str(path), 7) == first(verify([write(path, lines)], [KEY]))

    def test_two_lines_of_one_chain_reordered(
        self, trail: tuple[Writer, list[bytes], Path]
    ) -> None:
        """Two records of one chain swapped: named at the earlier of the two lines."""
        writer, lines, path = trail
        a2, a3 = line_of(lines, ("A", 2), writer), line_of(lines, ("A", 3), writer)
        lines[a2 - 1], lines[a3 - 1] = lines[a3 - 1], lines[a2 - 1]
        report = verify([write(path, lines)], [KEY])
        assert [a2, a3] == [p.line for p in report.problems]
        assert all("reordered" in p.message for p in report.problems)

    def test_line_forged_with_another_key(self, trail: tuple[Writer, list[bytes], Path]) -> None:
        """A line signed with a key not given is named with its key id."""
        _, lines, path = trail
        lines.insert(3, Writer(OTHER_KEY).login("A"))
        report = verify([write(path, lines)], [KEY])
        assert [(str(path), 4)] == [(p.path, p.line) for p in report.problems]
        assert f"key id {OTHER_KEY.kid}: no key given has that id" in report.problems[0].message

    def test_line_forged_without_a_key(self, trail: tuple[Writer, list[bytes], Path]) -> None:
        """A made-up line with a random MAC (the right key id) fails at that line."""
        writer, lines, path = trail
        record = json.loads(lines[line_of(lines, ("A", 4), writer) - 1])
        record.update({"user.id": "mallory", "audit.seq": 5, "audit.mac": "ab" * 32})
        lines.insert(len(lines) - 1, json.dumps(record, separators=(",", ":")).encode() + b"\n")
        assert (str(path), len(lines) - 1) == first(verify([write(path, lines)], [KEY]))

    def test_wrong_key_given(self, trail: tuple[Writer, list[bytes], Path]) -> None:
        """With a key that signed nothing, the first line is named."""
        _, lines, path = trail
        report = verify([write(path, lines)], [OTHER_KEY])
        assert (str(path), 1) == first(report)
        assert f"key id {KEY.kid}" in report.problems[0].message

    def test_not_json(self, trail: tuple[Writer, list[bytes], Path]) -> None:
        """A line that is not JSON, or not an audit record, is named."""
        _, lines, path = trail
        lines.insert(2, b'{"event":"user-login"}\n')
        lines.insert(1, b"garbage\n")
        report = verify([write(path, lines)], [KEY])
        assert [2, 4] == [p.line for p in report.problems]

    def test_problems_are_bounded(self, tmp_path: Path) -> None:
        """A file of garbage gives every problem a count but keeps only the first ones."""
        report = verify([write(tmp_path / "a", [b"x\n"] * (5 * MAX_PROBLEMS))], [KEY])
        assert (5 * MAX_PROBLEMS, MAX_PROBLEMS) == (report.problem_count, len(report.problems))
        assert list(range(1, MAX_PROBLEMS + 1)) == [p.line for p in report.problems]

    def test_many_gaps_and_copies_stay_bounded(self, tmp_path: Path) -> None:
        """Every other record deleted and every line doubled: each one is counted."""
        writer = Writer()
        lines = [writer.login("A") for _ in range(4 * MAX_PROBLEMS)]
        kept = [line for line in lines[1::2] for _ in range(2)]
        report = verify([write(tmp_path / "a.jsonl", kept)], [KEY])
        # each kept record: a gap before it and a copy after it; and the open tail
        assert len(kept) + 1 == report.problem_count
        assert (str(tmp_path / "a.jsonl"), 1) == first(report)


def rotated(tmp_path: Path, *, gz: bool = False) -> tuple[Path, Path, list[bytes]]:
    """A and B write to audit.jsonl.1, leave it with rotation checkpoints, go on in audit.jsonl."""
    writer = Writer()
    old = [writer.login(label) for label in "ABABA"]
    old += [writer.checkpoint("A", "rotation"), writer.checkpoint("B", "rotation")]
    new = [writer.login(label) for label in "BAB"]
    new += [writer.checkpoint("A", "shutdown"), writer.checkpoint("B", "shutdown")]
    backup = tmp_path / ("audit.jsonl.1.gz" if gz else "audit.jsonl.1")
    if gz:
        backup.write_bytes(gzip.compress(b"".join(old)))
    else:
        write(backup, old)
    return write(tmp_path / "audit.jsonl", new), backup, old


class TestRotation:
    @pytest.mark.parametrize("gz", [False, True])
    def test_both_files_verify_in_any_order_given(self, tmp_path: Path, gz: bool) -> None:
        """The backup is read before the current file, gzipped or not."""
        current, backup, _ = rotated(tmp_path, gz=gz)
        report = verify([current, backup], [KEY])
        assert [] == report.problems
        assert (2, 2, 12, 4) == (
            report.summary.files,
            report.summary.chains,
            report.summary.records,
            report.summary.checkpoints,
        )

    def test_the_current_file_alone_fails(self, tmp_path: Path) -> None:
        """Without the backup the chains start mid-way."""
        current, _, _ = rotated(tmp_path)
        report = verify([current], [KEY])
        assert (str(current), 1) == first(report)
        assert "starts at record 4" in report.problems[0].message

    def test_the_backup_alone_fails(self, tmp_path: Path) -> None:
        """Without the current file the chains end at their rotation checkpoints."""
        _, backup, _ = rotated(tmp_path)
        report = verify([backup], [KEY])
        assert (str(backup), 6) == first(report)
        assert "newer file that was not given" in report.problems[0].message

    def test_the_backup_tail_cut(self, tmp_path: Path) -> None:
        """A backup missing its last lines is named at the last line left of the chain."""
        current, backup, old = rotated(tmp_path)
        write(backup, old[:-3])  # A's login and both rotation checkpoints
        report = verify([backup, current], [KEY])
        assert (str(backup), 3) == first(report)  # A's last record left
        assert "the end of that file was cut" in report.problems[0].message

    def test_a_cut_gzip_backup(self, tmp_path: Path) -> None:
        """A gzip backup cut short is named after its last whole line."""
        current, backup, _ = rotated(tmp_path, gz=True)
        backup.write_bytes(backup.read_bytes()[:-12])
        report = verify([backup, current], [KEY])
        assert str(backup) == first(report)[0]
        assert any("compressed file is cut" in p.message for p in report.problems)

    def test_reading_order(self) -> None:
        """Numbered backups largest first, dated ones by date, each before its file."""
        given = [
            Path("d/audit.jsonl"),
            Path("d/other.jsonl"),
            Path("d/audit.jsonl.1"),
            Path("d/audit.jsonl.2.gz"),
            Path("d/other.jsonl-20261207"),
            Path("d/other.jsonl-20261206.gz"),
        ]
        assert [
            Path("d/audit.jsonl.2.gz"),
            Path("d/audit.jsonl.1"),
            Path("d/audit.jsonl"),
            Path("d/other.jsonl-20261206.gz"),
            Path("d/other.jsonl-20261207"),
            Path("d/other.jsonl"),
        ] == reading_order(given)


class TestPartial:
    def test_open_chain_accepted(self, trail: tuple[Writer, list[bytes], Path]) -> None:
        """A live file (no shutdown checkpoints yet) verifies in partial mode only."""
        _, lines, path = trail
        write(path, lines[:-3])
        assert not verify([path], [KEY]).ok
        report = verify([path], [KEY], partial=True)
        assert (True, 3) == (report.ok, report.summary.open_chains)

    def test_chain_starting_mid_way_accepted(self, tmp_path: Path) -> None:
        """The current file without its backup verifies in partial mode."""
        current, _, _ = rotated(tmp_path)
        assert verify([current], [KEY], partial=True).ok

    def test_tampering_still_fails(self, trail: tuple[Writer, list[bytes], Path]) -> None:
        """Partial mode still names a deleted middle line."""
        writer, lines, path = trail
        del lines[line_of(lines, ("A", 2), writer) - 1]
        report = verify([write(path, lines)], [KEY], partial=True)
        assert (str(path), line_of(lines, ("A", 3), writer)) == first(report)


MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6)),
    st.tuples(st.just("duplicate"), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.tuples(st.just("swap"), st.integers(0, 10**6), st.integers(0, 10**6)),
)


def mutate(lines: list[bytes], mutation: tuple[Any, ...]) -> list[bytes]:
    lines = list(lines)
    kind, at = mutation[0], mutation[1] % len(lines)
    if kind == "flip":
        line = bytearray(lines[at])
        where = mutation[2] % (len(line) - 1)  # inside the line, not its newline
        line[where] ^= mutation[3]
        lines[at] = bytes(line)
    elif kind == "delete":
        del lines[at]
    elif kind == "duplicate":
        lines.insert(mutation[2] % (len(lines) + 1), lines[at])
    else:  # swap two records of the same chain
        chain = json.loads(lines[at])["audit.chain"]
        same = [i for i, line in enumerate(lines) if json.loads(line)["audit.chain"] == chain]
        other = same[mutation[2] % len(same)]
        if other == at:
            other = same[(same.index(at) + 1) % len(same)]
        lines[at], lines[other] = lines[other], lines[at]
    return lines


VALID = three_chains()


class TestAnySingleMutation:
    @settings(
        max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(mutation=MUTATIONS)
    def test_fails_verification(self, tmp_path: Path, mutation: tuple[Any, ...]) -> None:
        """A byte flipped, a line deleted, duplicated, or two of a chain's lines swapped: fails."""
        path = write(tmp_path / "audit.jsonl", mutate(VALID, mutation))
        assert not verify([path], [KEY]).ok


# --- the command line ---------------------------------------------------------------------


def run_module(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.audit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


class TestModuleCommand:
    def test_verified(self, trail: tuple[Writer, list[bytes], Path]) -> None:
        """Exit 0 and the summary, the key from the environment."""
        _, lines, path = trail
        done = run_module("verify", str(write(path, lines)), "--key-env", "THE_KEY",
                          env={"THE_KEY": KEY.secret.decode()})  # fmt: skip
        assert 0 == done.returncode, done.stderr
        assert "verified: 3 chains, 15 records in 1 file" == done.stdout.splitlines()[0]

    def test_tampered(self, trail: tuple[Writer, list[bytes], Path], tmp_path: Path) -> None:
        """Exit 1 naming PATH:LINE first; the key read from a key file with an old key."""
        _, lines, path = trail
        del lines[4]
        keys = tmp_path / "keys"
        keys.write_text(f"{OLD_KEY.secret.decode()}\n{KEY.secret.decode()}\n")
        done = run_module("verify", str(write(path, lines)), "--key-file", str(keys))
        assert 1 == done.returncode, done.stderr
        assert done.stdout.startswith(f"{path}:")

    def test_usage_errors(self, trail: tuple[Writer, list[bytes], Path]) -> None:
        """Exit 2: no key given, an unset variable, a missing file."""
        _, lines, path = trail
        write(path, lines)
        env = {"THE_KEY": KEY.secret.decode()}
        assert 2 == run_module("verify", str(path)).returncode
        assert 2 == run_module("verify", str(path), "--key-env", "UNSET_KEY_XYZ").returncode
        missing = run_module("verify", str(path) + ".nope", "--key-env", "THE_KEY", env=env)
        assert 2 == missing.returncode


def audit_app(tmp_path: Path) -> tuple[Any, SignalBridge, Path]:
    path = tmp_path / "audit" / "audit.jsonl"
    sink = {"type": "file", "path": str(path), "audit": True, "audit_key": "${AUDIT_KEY}"}
    sink["events"] = ["user-login"]
    app = build_app("shop", BRIDGE_SIGNALS=["default", "user-login"], BRIDGE_SINKS=[sink])
    return app, SignalBridge(app), path


class TestFlaskCommand:
    @pytest.fixture(autouse=True)
    def _audit_key(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AUDIT_KEY", KEY.secret.decode())

    def test_the_apps_own_trail_verifies_with_its_key(self, tmp_path: Path) -> None:
        """Logins written by the real audit sink, closed: verified with the app's audit_key."""
        app, bridge, path = audit_app(tmp_path)
        for _ in range(3):
            assert 200 == app.test_client().post("/login").status_code
        assert bridge.close(timeout=5.0)
        result = app.test_cli_runner().invoke(bridge_command, ["verify", str(path), "--json"])
        assert 0 == result.exit_code, result.output
        report = json.loads(result.output)
        assert (True, 1, 4, 1) == (
            report["ok"],
            report["summary"]["chains"],
            report["summary"]["records"],
            report["summary"]["checkpoints"],
        )

    def test_tampered_trail_names_the_line(self, tmp_path: Path) -> None:
        """Exit 1 with PATH:LINE: what first."""
        app, bridge, path = audit_app(tmp_path)
        for _ in range(3):
            app.test_client().post("/login")
        assert bridge.close(timeout=5.0)
        lines = path.read_bytes().splitlines(keepends=True)
        write(path, [lines[0], lines[2], lines[3]])
        result = app.test_cli_runner().invoke(bridge_command, ["verify", str(path)])
        assert 1 == result.exit_code, result.output
        assert result.output.startswith(f"{path}:2: record 2 of chain ")

    def test_open_chain_needs_partial(self, tmp_path: Path) -> None:
        """A running app's file (no shutdown yet) verifies with --partial only."""
        app, bridge, path = audit_app(tmp_path)
        try:
            app.test_client().post("/login")
            runner = app.test_cli_runner()
            assert 1 == runner.invoke(bridge_command, ["verify", str(path)]).exit_code
            result = runner.invoke(bridge_command, ["verify", str(path), "--partial"])
            assert 0 == result.exit_code, result.output
            assert "open chains (no shutdown checkpoint, accepted by --partial): 1" in result.output
        finally:
            bridge.close(timeout=5.0)

    def test_extra_key_from_the_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--key-env adds an old key to the app's own."""
        writer = Writer(OLD_KEY)
        path = write(
            tmp_path / "old.jsonl", [writer.login("A"), writer.checkpoint("A", "shutdown")]
        )
        app, bridge, _ = audit_app(tmp_path)
        try:
            runner = app.test_cli_runner()
            assert 1 == runner.invoke(bridge_command, ["verify", str(path)]).exit_code
            monkeypatch.setenv("OLD_AUDIT_KEY", OLD_KEY.secret.decode())
            result = runner.invoke(
                bridge_command, ["verify", str(path), "--key-env", "OLD_AUDIT_KEY"]
            )
            assert 0 == result.exit_code, result.output
        finally:
            bridge.close(timeout=5.0)

    def test_no_key_is_a_usage_error(self, tmp_path: Path) -> None:
        """An app without an audit sink and no key option: exit 2."""
        app = build_app("shop", BRIDGE_SINKS=[{"type": "file", "path": str(tmp_path / "e.jsonl")}])
        bridge = SignalBridge(app)
        try:
            path = write(tmp_path / "a.jsonl", three_chains())
            result = app.test_cli_runner().invoke(bridge_command, ["verify", str(path)])
            assert 2 == result.exit_code, result.output
            assert "no audit key" in result.output
        finally:
            bridge.close(timeout=5.0)


class TestWorkersOfARealApp:
    @pytest.fixture(autouse=True)
    def _audit_key(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AUDIT_KEY", KEY.secret.decode())

    def test_parent_and_forked_worker_share_a_file(self, tmp_path: Path) -> None:
        """Two processes' chains interleaved by the real audit sink verify; the child's
        shutdown checkpoint cut off is named at the child's last login."""
        app, bridge, path = audit_app(tmp_path)
        app.test_client().post("/login")

        def worker() -> int:
            app.test_client().post("/login")
            app.test_client().post("/login")
            bridge.close(timeout=5.0)
            return os.getpid()

        child = run_in_child(worker, deadline=30.0)
        app.test_client().post("/login")
        assert bridge.close(timeout=5.0)
        report = verify([path], [KEY])
        assert [] == report.problems
        assert (2, 6, 2) == (
            report.summary.chains,
            report.summary.records,
            report.summary.checkpoints,
        )
        lines = path.read_bytes().splitlines(keepends=True)
        pids = [json.loads(line)["process.pid"] for line in lines]
        child_lines = [n for n, pid in enumerate(pids, 1) if pid == child]
        del lines[child_lines[-1] - 1]  # the child's shutdown checkpoint
        assert (str(path), child_lines[-2]) == first(verify([write(path, lines)], [KEY]))

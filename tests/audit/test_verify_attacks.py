"""Red-team attacks on the audit verifier (`bridge.audit.verify`, `python -m bridge.audit`):
an insider who can edit, copy, rename and replace the files but has no key, and files or
options built to make the verifier hang, crash or exhaust memory. Every tampering exits 1
naming the line where it shows; every hostile input ends promptly with exit 1 or 2, never a
traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

from click.testing import CliRunner

from bridge.audit.__main__ import main
from bridge.audit.chain import CHECKPOINT_EVENT, Chain
from bridge.audit.trailfiles import MAX_LINE_BYTES
from bridge.audit.verify import verify
from tests.audit.test_verify import KEY, ROOT, Writer, first, three_chains, write

ENV = {"THE_KEY": KEY.secret.decode()}


def cli(*args: str) -> tuple[int, str]:
    """`python -m bridge.audit` in process: the exit code and everything printed."""
    result = CliRunner().invoke(main, list(args), env=ENV)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def run_module(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m bridge.audit` as a process, for inputs that could hang it."""
    return subprocess.run(
        [sys.executable, "-m", "bridge.audit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **ENV},
    )


def rotated_twice(tmp_path: Path) -> list[Path]:
    """Chain A across three files: audit.jsonl.2, audit.jsonl.1, audit.jsonl (oldest first)."""
    writer = Writer()
    parts = []
    for _ in range(2):
        parts.append([writer.login("A") for _ in range(3)] + [writer.checkpoint("A", "rotation")])
    parts.append([writer.login("A"), writer.checkpoint("A", "shutdown")])
    names = ["audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"]
    return [write(tmp_path / name, part) for name, part in zip(names, parts, strict=True)]


def edited(line: bytes, old: bytes, new: bytes) -> bytes:
    assert old in line
    return line.replace(old, new, 1)


class TestInsiderWithoutTheKey:
    def test_an_older_copy_of_the_file_put_back(self, tmp_path: Path) -> None:
        """The file replaced by a copy taken earlier (chains not closed yet) fails at the end
        of each chain."""
        writer = Writer()
        lines = three_chains(writer)
        path = write(tmp_path / "audit.jsonl", lines[:7])  # what it held seven lines in
        report = verify([path], [KEY])
        assert 3 == report.problem_count
        assert all("without its shutdown checkpoint" in p.message for p in report.problems)

    def test_one_chain_cut_short_without_its_checkpoint(self, tmp_path: Path) -> None:
        """Chain B's last login and checkpoint removed: named at B's last line left."""
        writer = Writer()
        lines = three_chains(writer)
        b = writer.chains["B"][0].name
        kept = [line for line in lines if not (b in line.decode() and (b'"audit.seq":4' in line
                or b'"audit.seq":5' in line))]  # fmt: skip
        path = write(tmp_path / "audit.jsonl", kept)
        report = verify([path], [KEY])
        last_b = max(n for n, line in enumerate(kept, 1) if b in line.decode())
        assert (str(path), last_b) == first(report)
        assert "without its shutdown checkpoint" in report.problems[0].message

    def test_a_shutdown_checkpoint_moved_before_the_last_record(self, tmp_path: Path) -> None:
        """A's checkpoint moved up before A's last login is named where it now stands."""
        writer = Writer()
        lines = three_chains(writer)
        a = writer.chains["A"][0].name
        of_a = [n for n, line in enumerate(lines) if a in line.decode()]
        checkpoint = lines.pop(of_a[-1])
        lines.insert(of_a[-2], checkpoint)
        path = write(tmp_path / "audit.jsonl", lines)
        report = verify([path], [KEY])
        assert (str(path), of_a[-2] + 1) == first(report)
        assert "out of order" in report.problems[0].message

    def test_a_shutdown_checkpoint_moved_later_among_other_chains_verifies(
        self, tmp_path: Path
    ) -> None:
        """Moving a chain's last line past other chains' lines changes nothing it signed."""
        writer = Writer()
        lines = three_chains(writer)
        lines.append(lines.pop(-3))  # B's shutdown after A's and C's
        assert verify([write(tmp_path / "audit.jsonl", lines)], [KEY]).ok

    def test_a_file_copied_under_an_older_rotation_name(self, tmp_path: Path) -> None:
        """audit.jsonl.1 copied to audit.jsonl.3: its lines appear a second time."""
        files = rotated_twice(tmp_path)
        copy = shutil.copyfile(files[1], tmp_path / "audit.jsonl.3")
        report = verify([*files, copy], [KEY])
        assert (str(copy), 1) == first(report)  # read first: the chain cannot start there
        assert "record 5 of chain" in report.problems[0].message

    def test_rotated_files_swapped_by_renaming(self, tmp_path: Path) -> None:
        """audit.jsonl.1 and audit.jsonl.2 swapped: the chain starts mid-way in the first."""
        files = rotated_twice(tmp_path)
        files[0].rename(tmp_path / "swap")
        files[1].rename(files[0])
        (tmp_path / "swap").rename(files[1])
        report = verify(files, [KEY])
        assert (str(files[0]), 1) == first(report)
        assert "out of order" in " ".join(p.message for p in report.problems)

    def test_the_same_file_given_twice_is_read_once(self, tmp_path: Path) -> None:
        """`verify audit.jsonl* audit.jsonl`, or a hard link, is not a copied trail."""
        files = rotated_twice(tmp_path)
        os.link(files[2], tmp_path / "link.jsonl")
        report = verify([*files, files[2], tmp_path / "link.jsonl"], [KEY])
        assert (True, 3) == (report.ok, report.summary.files)

    def test_a_repeated_key_whose_first_value_is_false(self, tmp_path: Path) -> None:
        """A key repeated with a false value first (what a first-wins parser reads) fails."""
        writer = Writer()
        lines = three_chains(writer)
        lines[3] = edited(lines[3], b'{"audit.chain"', b'{"user.id":"admin","audit.chain"')
        path = write(tmp_path / "audit.jsonl", lines)
        report = verify([path], [KEY])
        assert (str(path), 4) == first(report)
        assert "the MAC does not match" in report.problems[0].message

    def test_unicode_escapes_that_parse_to_the_same_record(self, tmp_path: Path) -> None:
        """`\\u0075` for `u`: the same record parsed, another line written: named."""
        writer = Writer()
        lines = three_chains(writer)
        lines[2] = edited(lines[2], b'"user-login"', b'"\\u0075ser-login"')
        path = write(tmp_path / "audit.jsonl", lines)
        assert (str(path), 3) == first(verify([path], [KEY]))

    def test_an_edited_lost_count(self, tmp_path: Path) -> None:
        """`audit.lost` changed from 2 to 0 is an edited line."""
        writer = Writer()
        line = writer.login("A")
        writer.chain("A").lost = 2
        lines = [line, writer.login("A"), writer.checkpoint("A", "shutdown")]
        lines[1] = edited(lines[1], b'"audit.lost":2', b'"audit.lost":0')
        path = write(tmp_path / "audit.jsonl", lines)
        report = verify([path], [KEY])
        assert (str(path), 2) == first(report)
        assert "MAC does not match" in report.problems[0].message

    def test_a_chain_name_reused_by_another_pid(self, tmp_path: Path) -> None:
        """A second chain under an existing name (another process, the same key) is named at
        its first line: the name's seq 1 seen again."""
        writer = Writer()
        lines = three_chains(writer)
        a = writer.chains["A"][0]
        reused = Chain(KEY, a.name)
        record = writer.envelope("B", "user-login")  # B's pid
        lines.append(reused.seal(record))
        path = write(tmp_path / "other.jsonl", lines)
        report = verify([path], [KEY])
        assert [(str(path), len(lines))] == [(p.path, p.line) for p in report.problems]
        assert "record 1 of chain" in report.problems[0].message

    def test_an_event_named_like_a_checkpoint_is_not_one(self, tmp_path: Path) -> None:
        """An app's event named `audit.checkpoint` claiming `audit.reason` = shutdown (sealed
        as an event: its keys moved to args.audit.*) neither ends the chain nor fails a
        trail that has its real checkpoint."""
        writer = Writer()
        chain = writer.chain("A")
        lines = [writer.login("A")]
        spoof = writer.envelope("A", CHECKPOINT_EVENT)
        spoof.update({"audit.reason": "shutdown", "audit.records": 1})
        lines.append(chain.seal(spoof))
        path = write(tmp_path / "audit.jsonl", lines)
        report = verify([path], [KEY])
        assert [(str(path), 2)] == [(p.path, p.line) for p in report.problems]
        assert "without its shutdown checkpoint" in report.problems[0].message
        write(path, [*lines, writer.checkpoint("A", "shutdown")])
        assert verify([path], [KEY]).ok

    def test_a_byte_order_mark_and_crlf(self, tmp_path: Path) -> None:
        """A BOM before the first line and a CRLF ending are each named at their line (the BOM
        line first)."""
        lines = three_chains(Writer())
        lines[0] = b"\xef\xbb\xbf" + lines[0]
        lines[4] = lines[4][:-1] + b"\r\n"
        path = write(tmp_path / "audit.jsonl", lines)
        report = verify([path], [KEY])
        assert (str(path), 1) == first(report)
        assert {1, 5} <= {p.line for p in report.problems}
        assert "signed form" in next(p for p in report.problems if p.line == 5).message

    def test_hostile_tokens_in_a_line(self, tmp_path: Path) -> None:
        """NaN, Infinity, a 100-digit integer, invalid UTF-8 and 100k nested arrays: each line
        is named, nothing raises."""
        lines = three_chains(Writer())
        hostile = [
            edited(lines[1], b'"level":"info"', b'"level":NaN'),
            edited(lines[2], b'"level":"info"', b'"level":-Infinity'),
            edited(lines[3], b'"level":"info"', b'"level":' + b"9" * 100),
            edited(lines[4], b'"level":"info"', b'"level":"\xff\xfe"'),
            b"[" * 100_000 + b"]" * 100_000 + b"\n",
        ]
        path = write(tmp_path / "audit.jsonl", [lines[0], *hostile, *lines[5:]])
        report = verify([path], [KEY])
        assert [2, 3, 4, 5, 6] == sorted({p.line for p in report.problems} & {2, 3, 4, 5, 6})


class TestHostileInputs:
    def test_a_200_mb_line_is_read_in_bounded_memory(self, tmp_path: Path) -> None:
        """A 200 MB line (sparse) is named without being held in memory; the lines after it
        are still checked."""
        path = tmp_path / "audit.jsonl"
        with path.open("wb") as file:
            file.truncate(200 * 1024 * 1024)
            file.seek(0, os.SEEK_END)
            file.write(b"\n" + b"".join(three_chains(Writer())))
        tracemalloc.start()
        try:
            report = verify([path], [KEY])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert [(str(path), 1)] == [(p.path, p.line) for p in report.problems]
        assert f"over {MAX_LINE_BYTES} bytes" in report.problems[0].message
        assert peak < 3 * MAX_LINE_BYTES, peak

    def test_forged_lines_of_new_chains_do_not_grow_memory(self, tmp_path: Path) -> None:
        """50k lines with a known key id, a false MAC and a chain name each: every one named,
        no state kept per forged chain."""
        path = tmp_path / "audit.jsonl"
        with path.open("wb") as file:
            for number in range(50_000):
                record = {
                    "audit.chain": f"web-1:1:{number:016x}",
                    "audit.seq": 1,
                    "audit.prev": "",
                    "audit.kid": KEY.kid,
                    "audit.mac": "0" * 64,
                }
                file.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        tracemalloc.start()
        try:
            report = verify([path], [KEY])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert (50_000, 0) == (report.problem_count, report.summary.chains)
        assert peak < 4 << 20, peak

    def test_a_gzip_bomb_stops_in_bounded_memory_and_time(self, tmp_path: Path) -> None:
        """2 GiB of zeros (or of empty lines) in 2 MB of gzip: reading stops after a few MB
        expanded, with the reason (after the lines read, for empty lines)."""
        for filler in (b"\0", b"\n"):
            squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
            member = squeeze.compress(filler * (16 << 20)) + squeeze.flush()
            path = tmp_path / "audit.jsonl.1.gz"
            path.write_bytes(member * 128)
            started = time.monotonic()
            if filler == b"\0":  # one endless line: memory (tracing slows many short lines)
                tracemalloc.start()
                try:
                    report = verify([path], [KEY])
                    peak = tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
                assert peak < 3 * MAX_LINE_BYTES, peak
                assert "expands more than 50 times" in report.problems[0].message
            else:
                report = verify([path], [KEY])
            assert time.monotonic() - started < 60
            assert report.problem_count < 1 << 20  # not one per line of the 2 GiB

    def test_a_real_gzip_backup_is_not_a_bomb(self, tmp_path: Path) -> None:
        """Thousands of records gzipped verify: their MACs keep the ratio far below the cap."""
        writer = Writer()
        lines = [writer.login(label) for label in "AB" * 3000]
        lines += [writer.checkpoint("A", "shutdown"), writer.checkpoint("B", "shutdown")]
        squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
        path = tmp_path / "audit.jsonl.1.gz"
        path.write_bytes(squeeze.compress(b"".join(lines)) + squeeze.flush())
        assert verify([path], [KEY]).ok

    def test_paths_that_are_not_regular_files(self, tmp_path: Path) -> None:
        """A FIFO, /dev/zero, a symlink to it, a directory: exit 2 at once, no traceback."""
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        link = tmp_path / "zero.jsonl"
        link.symlink_to("/dev/zero")
        for path in (fifo, Path("/dev/zero"), link, tmp_path):
            done = run_module("verify", str(path), "--key-env", "THE_KEY", timeout=30)
            assert 2 == done.returncode, (path, done.stderr)
            assert "Traceback" not in done.stderr

    def test_key_files_that_are_not_key_files(self, tmp_path: Path) -> None:
        """--key-file a FIFO, a huge sparse file, /dev/zero: exit 2 at once, no traceback."""
        trail = write(tmp_path / "audit.jsonl", three_chains(Writer()))
        fifo = tmp_path / "keys.fifo"
        os.mkfifo(fifo)
        huge = tmp_path / "keys.huge"
        with huge.open("wb") as file:
            file.truncate(1 << 30)
        for keys in (fifo, huge, Path("/dev/zero")):
            done = run_module("verify", str(trail), "--key-file", str(keys), timeout=30)
            assert 2 == done.returncode, (keys, done.stderr)
            assert "Traceback" not in done.stderr

    def test_a_key_file_with_invalid_utf8(self, tmp_path: Path) -> None:
        """Key bytes that are not UTF-8 are a key like any other (one that signed nothing)."""
        trail = write(tmp_path / "audit.jsonl", three_chains(Writer()))
        keys = tmp_path / "keys"
        keys.write_bytes(b"\xff\xfe not utf-8 at all, but long enough\n")
        code, output = cli("verify", str(trail), "--key-file", str(keys))
        assert 1 == code
        assert "no key given has that id" in output
        keys.write_bytes(b"\xff\xfe junk line\n" + KEY.secret + b"\n")
        assert 0 == cli("verify", str(trail), "--key-file", str(keys))[0]

    def test_exit_codes(self, tmp_path: Path) -> None:
        """0 verified, 1 tampered, 2 usage (no key, a missing file)."""
        lines = three_chains(Writer())
        good = write(tmp_path / "good.jsonl", lines)
        bad = write(tmp_path / "bad.jsonl", [json.dumps({"x": 1}).encode() + b"\n", *lines])
        assert 0 == cli("verify", str(good), "--key-env", "THE_KEY")[0]
        assert 1 == cli("verify", str(bad), "--key-env", "THE_KEY")[0]
        assert 2 == cli("verify", str(good))[0]
        assert 2 == cli("verify", str(tmp_path / "missing"), "--key-env", "THE_KEY")[0]

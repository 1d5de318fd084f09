"""Verify an audit trail: every record signed, every chain whole, nothing added or moved.

`flask bridge verify` and `python -m bridge.audit verify` run `verify` (the command-line side
is `bridge.audit.verifycli`); the format it checks is `bridge.audit.chain`'s. The files are
read oldest first (`bridge.audit.trailfiles`), streamed, with only a little state per chain.
Each line is checked on its own (JSON, audit keys, a known key id, and its MAC over the bytes
as written, `chain.split_signed`: nothing is serialized again) and within its chain: seq
contiguous from 1, `audit.prev` the MAC of the record before, a checkpoint's count, host and
pid matching the chain's name, and the chain ending in its shutdown checkpoint. Chains of
different processes interleave freely.

The problem named is the first in reading order (file, then line); the rest are kept, up to
`MAX_PROBLEMS`. A line found twice is named with where it was first seen (a second pass over
the files, only then). `partial=True` accepts a chain that starts after record 1 or ends
without its shutdown checkpoint (a live file, some rotated files, a killed worker); it then
cannot tell a chain spliced in mid-way from another trail signed with the same key, nor a
tail cut off the file. A complete chain (record 1 to its shutdown checkpoint) copied from
another trail signed with the same key passes in either mode: keys are per deployment.

The files may be an attacker's: memory stays bounded whatever they hold (lines are read in at
most `trailfiles.MAX_LINE_BYTES`, a gzip bomb stops, a line whose MAC fails opens no chain),
and a file given twice, by two names, is read once.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import hmac
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from bridge.audit.chain import AUDIT_KEYS, CHECKPOINT_EVENT, AuditKey, split_signed
from bridge.audit.trailfiles import MAX_LINE_BYTES, ExpansionError, file_lines, reading_order

__all__ = ["MAX_PROBLEMS", "Problem", "Summary", "VerifyReport", "verify"]

MAX_PROBLEMS = 100  # kept in the report (the count is of all of them)
_CUT = (EOFError, gzip.BadGzipFile, zlib.error, ExpansionError)


class _Loc(NamedTuple):
    file: int  # its index in reading order
    line: int
    path: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong, and the line (1-based) of the file where it shows."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(slots=True)
class Summary:
    files: int = 0
    chains: int = 0
    records: int = 0
    checkpoints: int = 0
    lost: int = 0  # records the sink noted as not written (`audit.lost`), a full disk
    open_chains: int = 0  # chains without their shutdown checkpoint (partial mode)
    first_time: str | None = None
    last_time: str | None = None


@dataclass(frozen=True, slots=True)
class VerifyReport:
    problems: list[Problem]  # the first MAX_PROBLEMS, in reading order
    problem_count: int
    summary: Summary

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


def _seqs(first: int, last: int) -> str:
    return f"record {first}" if first == last else f"records {first}..{last}"


@dataclass(slots=True)
class _Gap:
    """Records of a chain not seen where they belong: missing, or coming later (reordered)."""

    at: _Loc  # the record after them
    at_seq: int
    before: _Loc | None  # the record before them (None: the chain starts after record 1)
    after_rotation: bool
    missing: list[tuple[int, int]]  # (first, last) seqs not seen yet
    late: list[tuple[int, _Loc]] = field(default_factory=list)


@dataclass(slots=True)
class _Chain:
    name: str
    seq: int = 0  # the highest record seen
    prev: str = ""  # its MAC
    last: _Loc | None = None  # its line
    reason: str = ""  # its `audit.reason`, when it is a checkpoint
    shutdown: _Loc | None = None
    gaps: list[_Gap] = field(default_factory=list)


class _Problems:
    def __init__(self) -> None:
        self.found: list[tuple[_Loc, int, str]] = []  # the count: found first, shown first
        self.count = 0

    def add(self, loc: _Loc, message: str) -> None:
        self.count += 1
        self.found.append((loc, self.count, message))
        if len(self.found) > 4 * MAX_PROBLEMS:  # keep the first in reading order, bounded
            self.found = sorted(self.found)[:MAX_PROBLEMS]

    def first(self) -> list[tuple[_Loc, int, str]]:
        return sorted(self.found)[:MAX_PROBLEMS]


class _Verifier:
    def __init__(self, keys: Iterable[AuditKey], partial: bool) -> None:
        self.keys = {key.kid: key for key in keys}
        self.partial = partial
        self.chains: dict[str, _Chain] = {}
        self.problems = _Problems()
        self.summary = Summary()
        self.copies: list[tuple[_Loc, str, int]] = []  # (line, chain, seq) seen before
        self.torn: dict[int, _Loc] = {}  # file -> its last line, cut mid-line

    def line(self, loc: _Loc, line: bytes) -> None:
        if len(line) > MAX_LINE_BYTES:
            self.problems.add(loc, f"a line over {MAX_LINE_BYTES} bytes: not an audit record")
            return
        if not line.endswith(b"\n"):
            self.problems.add(loc, "the last line is incomplete (no newline): cut mid-line")
            self.torn[loc.file] = loc
            return
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.problems.add(loc, "not JSON: the line was damaged or is not an audit record")
            return
        if not isinstance(record, dict):
            self.problems.add(loc, "not a JSON object: not an audit record")
            return
        missing = [name for name in AUDIT_KEYS if name not in record]
        if missing:
            self.problems.add(loc, f"not an audit record: no {', '.join(missing)}")
            return
        name, seq, kid, mac = (
            record[k] for k in ("audit.chain", "audit.seq", "audit.kid", "audit.mac")
        )
        if not (isinstance(name, str) and isinstance(kid, str) and isinstance(mac, str)) or (
            type(seq) is not int or seq < 1 or not isinstance(record["audit.prev"], str)
        ):
            self.problems.add(loc, "audit keys of the wrong type: the line was edited")
            return
        key = self.keys.get(kid)
        if key is None:
            self.problems.add(loc, f"signed with key id {kid}: no key given has that id")
            return
        signed_form = split_signed(line)
        if signed_form is None:
            self.problems.add(
                loc,
                'not in signed form (`,"audit.mac":"<64 hex>"` is not its last member as '
                "written): the line was re-written",
            )
            signed = False
        else:  # the MAC is over the bytes as written: nothing is serialized again
            body, written_mac = signed_form
            expected = hmac.new(key.secret, body, hashlib.sha256).hexdigest()
            signed = hmac.compare_digest(expected, written_mac) and written_mac == mac
            if not signed:
                self.problems.add(
                    loc, "the MAC does not match: the line was edited, or forged without the key"
                )
        self.record(loc, record, signed)

    def record(self, loc: _Loc, record: dict[str, Any], signed: bool) -> None:
        name, seq = record["audit.chain"], record["audit.seq"]
        chain = self.chains.get(name)
        if chain is None:
            if not signed:  # its name is not to be trusted: a file of such lines must not
                return  # grow a chain per line
            chain = self.chains[name] = _Chain(name)
        if seq <= chain.seq:
            if signed:
                self.behind(loc, chain, seq)
            return
        if not signed and seq != chain.seq + 1:
            return  # an edited seq: the chain goes on without it
        if seq > chain.seq + 1:
            missing = [(chain.seq + 1, seq - 1)]
            if len(chain.gaps) < MAX_PROBLEMS:  # a file of garbage must not grow memory
                chain.gaps.append(_Gap(loc, seq, chain.last, chain.reason == "rotation", missing))
            else:
                self.problems.add(
                    loc, f"{_seqs(*missing[0])} of chain {name} missing before this line"
                )
        elif record["audit.prev"] != chain.prev and signed:
            self.problems.add(
                loc,
                f"audit.prev is not the MAC of record {seq - 1} of chain {name} ({chain.last}):"
                " this line comes from another copy of the chain",
            )
        if chain.shutdown is not None and signed:
            self.problems.add(
                loc,
                f"record {seq} of chain {name} comes after the chain's shutdown checkpoint"
                f" ({chain.shutdown})",
            )
        chain.seq, chain.prev, chain.last = seq, record["audit.mac"], loc
        chain.reason = ""
        if signed:
            self.check(loc, chain, record)

    def check(self, loc: _Loc, chain: _Chain, record: dict[str, Any]) -> None:
        seq = record["audit.seq"]
        host, _, pid = chain.name.rpartition(":")[0].rpartition(":")
        if ("host.name" in record and record["host.name"] != host) or (
            "process.pid" in record and str(record["process.pid"]) != pid
        ):
            self.problems.add(loc, f"host.name or process.pid differ from chain {chain.name}")
        lost = record.get("audit.lost", 0)
        self.summary.lost += lost if type(lost) is int else 0
        self.summary.records += 1
        stamp = record.get("timestamp")
        if isinstance(stamp, str):
            first, last = self.summary.first_time, self.summary.last_time
            self.summary.first_time = stamp if first is None else min(first, stamp)
            self.summary.last_time = stamp if last is None else max(last, stamp)
        if record.get("event") != CHECKPOINT_EVENT or "audit.reason" not in record:
            return  # an event merely named so: the chain moves its audit.* keys to args.audit.*
        self.summary.checkpoints += 1
        chain.reason = reason = str(record.get("audit.reason"))
        if reason == "shutdown":
            chain.shutdown = loc
        elif reason != "rotation":
            self.problems.add(loc, f"a checkpoint with an unknown audit.reason {reason!r}")
        if record.get("audit.records") != seq - 1:
            self.problems.add(
                loc,
                f"the checkpoint counts {record.get('audit.records')!r} records before it,"
                f" but it is record {seq} of chain {chain.name}",
            )

    def behind(self, loc: _Loc, chain: _Chain, seq: int) -> None:
        """A record whose place in the chain was passed: reordered, or a copy."""
        for gap in chain.gaps:
            for number, (first, last) in enumerate(gap.missing):
                if first <= seq <= last:
                    gap.missing[number : number + 1] = [
                        r for r in ((first, seq - 1), (seq + 1, last)) if r[0] <= r[1]
                    ]
                    gap.late.append((seq, loc))
                    self.problems.add(
                        loc,
                        f"record {seq} of chain {chain.name} is out of order: it comes after"
                        f" record {gap.at_seq} ({gap.at}): reordered",
                    )
                    return
        if len(self.copies) < MAX_PROBLEMS:  # where each was first: looked up at the end
            self.copies.append((loc, chain.name, seq))
        else:
            self.problems.add(loc, f"record {seq} of chain {chain.name} appears a second time")

    def finish(self, copies_at: dict[tuple[str, int], _Loc]) -> None:
        for chain in self.chains.values():
            if chain.last is None:
                continue
            self.summary.chains += 1
            for gap in chain.gaps:
                self.gap(chain, gap)
            if chain.reason == "shutdown":
                continue
            if self.partial:
                self.summary.open_chains += 1
            elif chain.reason == "rotation":
                self.problems.add(
                    chain.last,
                    f"chain {chain.name} continues after this rotation checkpoint in a newer"
                    " file that was not given",
                )
            elif chain.last.file in self.torn:  # the cut shows at the end of the file
                self.problems.add(
                    self.torn[chain.last.file],
                    f"chain {chain.name} has no shutdown checkpoint after its last record"
                    f" ({chain.last}): the file was cut",
                )
            else:
                self.problems.add(
                    chain.last,
                    f"chain {chain.name} ends here without its shutdown checkpoint: the records"
                    " after this line are missing (the file was truncated, or the process was"
                    " killed or is still running)",
                )
        for loc, name, seq in self.copies:
            first = copies_at.get((name, seq))
            self.problems.add(
                loc,
                f"record {seq} of chain {name} appears a second time"
                + (f" (first at {first})" if first else "")
                + ": a copied line",
            )

    def gap(self, chain: _Chain, gap: _Gap) -> None:
        name = chain.name
        if gap.late:
            seqs = ", ".join(str(seq) for seq, _ in gap.late[:5])
            self.problems.add(
                gap.at,
                f"record {gap.at_seq} of chain {name} is out of order: record(s) {seqs}"
                f" come after it ({gap.late[0][1]}): reordered",
            )
        for first, last in gap.missing:
            if gap.before is None:
                if not self.partial:
                    self.problems.add(
                        gap.at,
                        f"chain {name} starts at record {gap.at_seq}: {_seqs(first, last)}"
                        " missing before this line (deleted, or this line was spliced in"
                        " from another file)",
                    )
            elif gap.before.file != gap.at.file and not gap.after_rotation:
                self.problems.add(
                    self.torn.get(gap.before.file, gap.before),
                    f"{_seqs(first, last)} of chain {name} missing after {gap.before}: the end"
                    f" of that file was cut (the chain goes on at {gap.at})",
                )
            else:
                self.problems.add(
                    gap.at, f"{_seqs(first, last)} of chain {name} missing before this line"
                )


def _lines(paths: Sequence[Path], verifier: _Verifier | None) -> Iterable[tuple[_Loc, bytes]]:
    for index, path in enumerate(paths):
        number = 0
        try:
            for number, line in enumerate(file_lines(path), start=1):
                yield _Loc(index, number, str(path)), line
        except _CUT as exc:
            if verifier is not None:
                loc = _Loc(index, number + 1, str(path))
                verifier.problems.add(loc, f"the compressed file is cut or damaged ({exc})")


def _first_seen(paths: Sequence[Path], copies: list[tuple[_Loc, str, int]]) -> dict[Any, _Loc]:
    """Where each copied record was seen first: a second pass, only when there are copies."""
    wanted = {(name, seq) for _, name, seq in copies}
    names = {name.encode() for name, _ in wanted}
    found: dict[Any, _Loc] = {}
    for loc, line in _lines(paths, None):
        if not any(name in line for name in names):
            continue
        try:
            record = orjson.loads(line)
            where = (record["audit.chain"], record["audit.seq"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
        if where in wanted and where not in found:
            found[where] = loc
            if len(found) == len(wanted):
                break
    return found


def verify(
    paths: Sequence[Path | str], keys: Iterable[AuditKey], *, partial: bool = False
) -> VerifyReport:
    """Check the audit files `paths` (read oldest first) with `keys` (any of them may have
    signed a record: old keys after a rotation). Raises OSError for a file that cannot be
    opened; everything wrong inside the files is in the report."""
    ordered = reading_order([Path(p) for p in paths])
    for path in ordered:
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
        if not path.is_file():  # a FIFO would block, a device never end
            raise OSError(errno.EINVAL, "not a regular file", str(path))
    verifier = _Verifier(keys, partial)
    for loc, line in _lines(ordered, verifier):
        verifier.line(loc, line)
    verifier.finish(_first_seen(ordered, verifier.copies) if verifier.copies else {})
    verifier.summary.files = len(ordered)
    problems = [Problem(loc.path, loc.line, text) for loc, _, text in verifier.problems.first()]
    return VerifyReport(problems, verifier.problems.count, verifier.summary)

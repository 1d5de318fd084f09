"""`flask bridge replay`: read a dead-letter file, resend its events, remove what was delivered.

A dead-letter record (`bridge.delivery.deadletter`) holds the original event line, the sink
that refused it (`sink`), the reason, the status and the time. Replay resends the original
lines unchanged (same `event_id`, so a collector can deduplicate) in chunks: submit a chunk,
flush it, read the sink's counters. A chunk is delivered when the sink acknowledged all of it;
a chunk not acknowledged within the timeout stops the replay (the collector is still down:
sending the rest would only queue it).

The file changes only once events are delivered: delivered records are removed by rewriting
the file (a temporary file renamed over it, 0600), every other record is kept, unreadable ones
included. Records appended while the replay ran (a worker, or the sink dead-lettering a
replayed event again into this same file) are carried over, and a kept record whose event was
just dead-lettered again is kept once, as its new record. Delivery is at least once: an event
whose chunk timed out may still reach the collector later, and stays in the file.

    cli (replay command) -> replay -> sinks (submit, flush, stats)
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bridge.config import HttpSinkSettings, SinkSettings
from bridge.safefs import open_nofollow
from bridge.sinks.base import Sink
from bridge.sinks.http import dead_letter_path
from bridge.tail import read_file, terminal_safe

__all__ = [
    "DeadRecord",
    "ReplayResult",
    "Summary",
    "assign_sinks",
    "dry_run_report",
    "original_line",
    "parse_records",
    "read_dead_letters",
    "replay_records",
    "rewrite_without",
    "summarize",
]

FILE_MODE = 0o600


def original_line(record: Any) -> bytes | None:
    """The event line a dead-letter record holds (`line`: text, or `event`: the object)."""
    if not isinstance(record, dict):
        return None
    value = record.get("line", record.get("event"))
    if isinstance(value, str):
        data = value.rstrip("\n").encode("utf-8")
    elif isinstance(value, dict):
        data = orjson.dumps(value)
    else:
        return None
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return data + b"\n" if isinstance(parsed, dict) else None


@dataclass(frozen=True, slots=True)
class DeadRecord:
    """One line of the dead-letter file: its number, its bytes, and what it holds (`line` is
    None when it is not a dead-letter record)."""

    number: int
    raw: bytes
    line: bytes | None
    sink: str | None = None
    time: str | None = None
    reason: str | None = None


def read_dead_letters(path: Path) -> tuple[list[DeadRecord], int]:
    """Every record of the file, and the size read (what is appended later is not ours)."""
    return parse_records(path.read_bytes())


def parse_records(data: bytes) -> tuple[list[DeadRecord], int]:
    """The records of a dead-letter file's bytes, numbered from 1, and their size."""
    records = []
    for line in read_file(io.BytesIO(data)):
        event = line.event or {}
        records.append(
            DeadRecord(
                line.number,
                line.raw,
                original_line(line.event),
                *(_text(event.get(key)) for key in ("sink", "time", "reason")),
            )
        )
    return records, len(data)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Summary:
    """What `--dry-run` shows: how many, from when to when, why."""

    count: int
    first: str | None
    last: str | None
    reasons: Counter[str]


def summarize(records: Sequence[DeadRecord]) -> Summary:
    times = sorted(r.time for r in records if r.time is not None)
    reasons = Counter(r.reason or "(none)" for r in records)
    return Summary(len(records), times[0] if times else None, times[-1] if times else None, reasons)


def assign_sinks(
    records: Sequence[DeadRecord],
    sinks: Sequence[SinkSettings],
    path: Path,
    name: str | None,
) -> dict[str, list[DeadRecord]]:
    """Each record's sink: `name` (--sink), else the sink named in the record, else the http
    sink that writes this dead-letter file, else the first http sink. LookupError when a
    record has none of them."""
    names = {sink.name for sink in sinks}
    http = [s for s in sinks if isinstance(s, HttpSinkSettings)]
    owner = next((s.name for s in http if _same_file(dead_letter_path(s), path)), None)
    default = name or owner or (http[0].name if http else None)
    targets: dict[str, list[DeadRecord]] = {}
    for record in records:
        target = name or (record.sink if record.sink in names else None) or default
        if target is None:
            raise LookupError("no sink to replay to")
        targets.setdefault(target, []).append(record)
    return targets


def _same_file(configured: Path | None, path: Path) -> bool:
    return configured is not None and configured.absolute() == path.absolute()


def dry_run_report(path: Path, targets: dict[str, list[DeadRecord]]) -> list[str]:
    """What `--dry-run` prints: count, first and last time, reasons, events per sink."""
    summary = summarize([r for records in targets.values() for r in records])
    lines = [f"{path}: {summary.count} dead-lettered events"]
    if summary.first is not None:
        lines += [
            f"  first: {terminal_safe(summary.first)}",
            f"  last:  {terminal_safe(summary.last or '')}",
        ]
    reasons = ", ".join(f"{reason} {n}" for reason, n in summary.reasons.most_common())
    lines.append(f"  reasons: {terminal_safe(reasons)}")
    lines += [f"  to {name}: {len(records)}" for name, records in targets.items()]
    return [*lines, "dry run: nothing sent, the file is unchanged"]


def _count(stats: dict[str, Any], key: str) -> int:
    value = stats.get(key, 0)
    return int(value) if isinstance(value, int) else 0


@dataclass
class ReplayResult:
    """What happened to the records given to one sink."""

    delivered: list[DeadRecord] = field(default_factory=list)
    refused: int = 0  # refused by the sink's queue at submit
    dead_lettered_again: int = 0
    timed_out: bool = False  # a chunk was not acknowledged in time; the rest was not sent
    sent: int = 0


def replay_records(
    records: Sequence[DeadRecord],
    sink: Sink,
    *,
    timeout: float,
    chunk: int,
    progress: Callable[[int, int], None],
) -> ReplayResult:
    """Resend `records` to `sink`, `chunk` at a time; `progress(done, total)` after each."""
    result = ReplayResult()
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        before = sink.stats()
        accepted = sum(1 for record in part if record.line is not None and sink.submit(record.line))
        flushed = sink.flush(timeout)
        after = sink.stats()
        result.sent += accepted
        result.refused += len(part) - accepted
        again = _count(after, "dead_lettered") - _count(before, "dead_lettered")
        result.dead_lettered_again += again
        delivered = _count(after, "delivered") - _count(before, "delivered")
        if flushed and accepted == len(part) and again == 0 and delivered >= len(part):
            result.delivered.extend(part)
        progress(start + len(part), len(records))
        if not flushed:
            result.timed_out = True
            break
    return result


def rewrite_without(path: Path, delivered: Sequence[DeadRecord], read_size: int) -> None:
    """Rewrite the file without the `delivered` records, keeping every other record and what
    was appended after the first `read_size` bytes; a kept record whose event line appears in
    an appended record (dead-lettered again) is kept once, as the appended record."""
    gone = {record.number for record in delivered}
    with path.open("rb") as handle:
        old = handle.read(read_size)
        appended = handle.read()
        records, _ = parse_records(old)
        again = {r.line for r in parse_records(appended)[0] if r.line is not None}
        kept = [r.raw + b"\n" for r in records if r.number not in gone and r.line not in again]
        data = b"".join(kept) + appended
        # mkstemp: a new name, created 0600 with O_EXCL, beside the file (same filesystem).
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.replay-")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            os.close(fd)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        # A worker opens the path for each write: one that opened it before the rename wrote
        # into the old file; carry that over too.
        late = handle.read()
    if late:
        fd = open_nofollow(path, os.O_WRONLY | os.O_APPEND, FILE_MODE)
        try:
            os.write(fd, late)
        finally:
            os.close(fd)

"""The audit file sink (`audit = true`): chosen events, signed and chained, on disk before the
response.

    emitter -> sink.submit_many -> AuditSink (this module) -> FileOutput -> the file
                                     `-> Chain.seal (bridge.audit.chain)

It shares the plain file sink's `FileOutput` (O_APPEND, several workers on one file, size
rotation, logrotate followed, symlinks and FIFOs never planted) but not its writer: an audit
record is written on the calling thread, under the sink's lock, in the order it was sealed,
so that file order is chain order. Nothing is queued for later: the request that logged in
waits for the disk (and for fsync, by policy), which is the promise an audit trail makes.

- Which records: `events`, globs on the event name; "auth" stands for every authentication
  event (`event.category` = `authentication`); "*" for all.
- Rotation: before the output follows a rotation (its own by `rotate_bytes`, a sibling
  worker's, or logrotate's), the chain writes a `rotation` checkpoint into the file it is
  leaving; at `close()` (exit, SIGTERM from gunicorn) a `shutdown` checkpoint ends the chain,
  so a cut tail shows in `flask bridge verify`.
- A write that fails (a full disk) rewinds the chain past the records it could not write;
  the next record written says how many with `audit.lost`, signed. A record cut by a partial
  write is finished first at the next write (its start is already in the file).
- `fsync`: true after every write (a request's records: one fsync), an interval in seconds
  (a thread syncs at most that long after a write), or false (the OS decides).
- A forked child starts its own chain (new pid, new name); the parent's goes on.
- A write interrupted by a signal handler that raises (gunicorn's SIGQUIT and SIGINT exit
  that way) ends its chain where it stands, as a killed worker's: a new chain follows.
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import orjson

from bridge import forking
from bridge.audit.chain import CHECKPOINT_EVENT, AuditKey, Chain, new_chain
from bridge.auditsettings import AUTH_CATEGORY
from bridge.config import FileSinkSettings
from bridge.diagnostics import report
from bridge.events import HOST_NAME, timestamp_and_id
from bridge.sinks.file import open_output
from bridge.sinks.output import LineAbandoned
from bridge.stats import SinkStats

__all__ = ["AuditSink", "EventFilter"]


class EventFilter:
    """Which events an audit sink records: `events` globs; "auth" = authentication events."""

    __slots__ = ("_all", "_auth", "_names")

    def __init__(self, patterns: Sequence[str]) -> None:
        self._auth = "auth" in patterns
        globs = [p for p in patterns if p != "auth"]
        self._all = "*" in globs
        self._names = re.compile("|".join(fnmatch.translate(g) for g in globs)) if globs else None

    def may_select(self, line: bytes) -> bool:
        """False when the line cannot be chosen, known without parsing it: with "auth" alone,
        a line without an `event.category` key (an access log line). Inside a JSON string
        a quote is escaped, so the bytes below appear only as a key."""
        return self._all or self._names is not None or b'"event.category":' in line

    def __call__(self, record: dict[str, Any]) -> bool:
        if self._all:
            return True
        category = record.get("event.category")
        if self._auth and (
            category == AUTH_CATEGORY or (isinstance(category, list) and AUTH_CATEGORY in category)
        ):  # ECS allows a list of categories
            return True
        event = record.get("event")
        return self._names is not None and isinstance(event, str) and bool(self._names.match(event))


class AuditSink:
    """Appends chosen events to `settings.path` as a signed chain; see the module docstring."""

    kind = "file"
    sync = True  # the emitter never delays an event meant for it

    def __init__(
        self,
        settings: FileSinkSettings,
        *,
        config_key: str = "sinks",
        check_interval: float = 1.0,
    ) -> None:
        self.name = settings.name
        self.settings = settings
        self.selects = EventFilter(settings.events)
        self._key = AuditKey.of(settings.audit_key)
        self._stats = SinkStats()
        self._output = open_output(settings, config_key, check_interval, audit=True)
        self._fsync = settings.fsync  # True, False, or an interval in seconds
        self._closed = False
        self._start()
        forking.reset_in_child(self)

    def _start(self) -> None:
        self._lock = threading.Lock()
        self._chain: Chain = new_chain(self._key, HOST_NAME)
        self._service = ""  # the service of the records sealed, for the checkpoints
        self._owed = b""  # the rest of a record a partial write cut: the next bytes written
        self._in_write = False  # between sealing and accounting for what reached the file
        self._checkpointed = 0  # chain.seq at the last rotation checkpoint tried: one per turn
        self._written = 0
        self._accepted = 0
        self._dirty = False  # written since the last fsync
        self._synced_at = time.monotonic()
        self._syncer: threading.Thread | None = None
        self._wake = threading.Condition(self._lock)

    def after_fork_in_child(self) -> None:
        """The parent's chain and its unfinished record are the parent's: a new chain."""
        self._start()

    # --- calling thread ----------------------------------------------------------------------

    def submit(self, line: bytes) -> bool:
        return self.submit_many([line]) == 1

    def submit_many(self, lines: list[bytes]) -> int:
        """Seal and write the chosen lines before returning; how many were written. Lines
        this sink does not record are not counted at all. Never raises."""
        records = []
        for line in lines:
            if not self.selects.may_select(line):
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # never made by the emitter
            if isinstance(record, dict) and self.selects(record):
                records.append(record)
        if not records:
            return 0
        notes: list[tuple[str, str]] = []
        with self._lock:
            if self._closed:
                self._stats.count_dropped("closed", len(records))
                return 0
            self._accepted += len(records)
            written = self._write_records(records, notes)
        for note in notes:
            report(*note)
        return written

    def _write_records(self, records: list[dict[str, Any]], notes: list[tuple[str, str]]) -> int:
        """Under the lock: seal and write, marked as under way: a signal handler that raises
        in there (gunicorn's SIGQUIT and SIGINT call sys.exit) leaves the mark on."""
        if self._in_write:
            self._abandon_chain(notes)
        self._in_write = True
        done = self._seal_and_write(records, notes)
        self._in_write = False
        return done

    def _abandon_chain(self, notes: list[tuple[str, str]]) -> None:
        """A write was interrupted: how much of it reached the file is unknown, so this chain
        ends there (as a killed worker's does) and a new one begins; no checkpoint claims
        to follow what may be missing."""
        ended = self._chain.name
        message = f"audit sink {self.name}: a write was interrupted; chain {ended} ends there"
        notes.append((f"audit-interrupted-{self.name}", message))
        self._chain = new_chain(self._key, HOST_NAME)
        self._owed = b""
        self._output.settle_partial(0)
        self._in_write = False

    def _seal_and_write(self, records: list[dict[str, Any]], notes: list[tuple[str, str]]) -> int:
        """Follow a rotation (checkpoint first), seal, write, fsync."""
        if not self._pay_owed(notes):
            self._lose(records, self._chain.mark(), notes, "the rest of a cut record is owed")
            return 0
        if self._output.maintenance_due(time.monotonic()) and not self._follow_rotation(notes):
            self._lose(records, self._chain.mark(), notes, "a checkpoint's rest is owed")
            return 0
        service = records[-1].get("service.name")
        if isinstance(service, str):
            self._service = service
        before = self._chain.mark()
        sealed = [(self._chain.seal(record), self._chain.mark()) for record in records]
        done = self._write_sealed(sealed, before, notes)
        self._after_write(notes)
        return done

    def _write_sealed(
        self,
        sealed: list[tuple[bytes, tuple[int, str, int]]],
        before: tuple[int, str, int],
        notes: list[tuple[str, str]],
        *,
        events: bool = True,
    ) -> int:
        """One `write()` of the sealed lines if it can; on a failure the chain is rewound to
        the last record that reached the file (whole, or cut: its rest is owed). A checkpoint
        (`events=False`) that is not written is no lost event: the chain skips nothing."""
        data = b"".join(line for line, _ in sealed)
        sent = 0
        failure: OSError | None = None
        while sent < len(data):
            try:
                sent += self._output.write(memoryview(data)[sent:])  # type: ignore[arg-type]
            except OSError as exc:
                failure = exc
                break
        if failure is None:
            self._written += len(sealed) if events else 0  # stats count events, as enqueued
            self._dirty = True
            return len(sealed)
        whole, offset = 0, 0
        for line, _ in sealed:
            if offset + len(line) > sent:
                break
            offset += len(line)
            whole += 1
        out = whole
        if sent > offset:  # a record cut: it is in the file, its rest comes next
            self._owed = data[sent : offset + len(sealed[whole][0])]
            out += 1
        if sent:  # the output counted the whole batch as owed: only the cut record's rest is
            self._output.settle_partial(len(self._owed))
        self._written += whole if events else 0
        self._dirty = self._dirty or bool(sent)
        mark = sealed[out - 1][1] if out else before
        unwritten = len(sealed) - out if events else 0
        self._chain.rewind(mark, unwritten)
        self._stats.count_dropped("write_error", unwritten)
        self._stats.record_error(f"write failed: {failure}")
        what = f"{unwritten} records not written" if events else "a checkpoint not written whole"
        said = "; the next record says so (audit.lost)" if unwritten else ""
        notes.append(
            (f"audit-write-{self.name}", f"audit sink {self.name}: {what} ({failure}){said}")
        )
        return whole

    def _pay_owed(self, notes: list[tuple[str, str]]) -> bool:
        """Finish the record a partial write cut; False while that still fails."""
        while self._owed:
            try:
                sent = self._output.write(self._owed)
            except LineAbandoned:  # its start is in a file no longer written: torn there
                self._owed = b""
                self._written += 1
                return True
            except OSError as exc:
                self._stats.record_error(f"write failed: {exc}")
                return False
            self._owed = self._owed[sent:]
            if not self._owed:
                self._written += 1
        return True

    def _lose(
        self,
        records: list[dict[str, Any]],
        mark: tuple[int, str, int],
        notes: list[tuple[str, str]],
        why: str,
    ) -> None:
        self._chain.rewind(mark, len(records))
        self._stats.count_dropped("write_error", len(records))
        notes.append(
            (
                f"audit-write-{self.name}",
                f"audit sink {self.name}: {len(records)} records "
                f"not written ({why}); the next record says so (audit.lost)",
            )
        )

    def _follow_rotation(self, notes: list[tuple[str, str]]) -> bool:
        """Rotate or reopen; first, a checkpoint ends this chain's part of the old file. False
        while the checkpoint is cut: the file is left only after its rest is written."""
        if self._chain.seq and self._checkpointed != self._chain.seq:
            whole = self._write_checkpoint("rotation", notes)
            self._checkpointed = self._chain.seq
            if not whole:
                return False
        try:
            self._output.maintain()
        except OSError as exc:
            self._stats.record_error(str(exc))
            notes.append((f"audit-reopen-{self.name}", f"audit sink {self.name}: {exc}"))
        return True

    def _write_checkpoint(self, reason: str, notes: list[tuple[str, str]]) -> bool:
        """Seal and write a checkpoint; False while a cut leaves its rest owed."""
        timestamp, event_id = timestamp_and_id()
        record = {
            "timestamp": timestamp,
            "level": "info",
            "event": CHECKPOINT_EVENT,
            "signal": "",
            "event_id": event_id,
            "service.name": self._service,
            "host.name": HOST_NAME,
            "process.pid": os.getpid(),
            "audit.reason": reason,
            "audit.records": self._chain.seq,
        }
        before = self._chain.mark()
        line = self._chain.seal(record, own=True)
        self._write_sealed([(line, self._chain.mark())], before, notes, events=False)
        return self._pay_owed(notes)  # once more at once: room may be back, and it ends a file

    def _after_write(self, notes: list[tuple[str, str]]) -> None:
        """fsync by policy: now (true), or by the syncer thread within the interval."""
        if not self._dirty or self._fsync is False:
            return
        if self._fsync is True or time.monotonic() - self._synced_at >= self._fsync:
            self._sync(notes)
            return
        if self._syncer is None or not self._syncer.is_alive():
            syncer = threading.Thread(
                target=self._sync_later, name=f"bridge-audit-{self.name}", daemon=True
            )
            try:
                syncer.start()
            except RuntimeError:  # the interpreter is shutting down: no thread, sync now
                self._sync(notes)
                return
            self._syncer = syncer
        self._wake.notify()

    def _sync(self, notes: list[tuple[str, str]]) -> None:
        try:
            self._output.fsync()
        except OSError as exc:
            self._stats.record_error(f"fsync failed: {exc}")
            notes.append((f"audit-fsync-{self.name}", f"audit sink {self.name}: fsync: {exc}"))
            return
        self._dirty = False
        self._synced_at = time.monotonic()

    def _sync_later(self) -> None:
        """The interval policy's thread: fsync what was written, at most `fsync` s later."""
        interval = float(self._fsync)
        notes: list[tuple[str, str]] = []
        with self._lock:
            while not self._closed:
                if not self._dirty:
                    self._wake.wait()
                    continue
                due = self._synced_at + interval - time.monotonic()
                if due > 0:
                    self._wake.wait(due)
                    continue
                self._sync(notes)
                if notes:
                    break
        for note in notes:
            report(*note)

    # --- lifecycle ---------------------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Everything is written already; make it durable unless fsync is false. False when
        that failed or the lock was not free within `timeout`."""
        notes: list[tuple[str, str]] = []
        if not self._lock.acquire(timeout=max(0.0, timeout)):
            return False  # a write hangs, or a signal handler interrupted this thread's own
        try:
            if self._dirty and self._fsync is not False and not self._closed:
                self._sync(notes)
        finally:
            self._lock.release()
        for note in notes:
            report(*note)
        return not notes

    def close(self, timeout: float) -> bool:
        """End the chain with its shutdown checkpoint, sync, close the file. Idempotent; False
        (nothing done) when the lock was not free within `timeout`."""
        notes: list[tuple[str, str]] = []
        if not self._lock.acquire(timeout=max(0.0, timeout)):
            return False  # as flush(): a later close() still ends the chain
        try:
            if self._closed:
                return True
            if self._in_write:
                self._abandon_chain(notes)
            self._in_write = True  # the checkpoint is a write too
            if self._chain.seq and self._pay_owed(notes):
                self._write_checkpoint("shutdown", notes)
            self._in_write = False
            if self._dirty and self._fsync is not False:
                self._sync(notes)
            self._closed = True
            self._wake.notify_all()
            self._output.close()
        finally:
            self._lock.release()
        for note in notes:
            report(*note)
        return not notes

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.settings.path), "audit": True}

    def stats(self) -> dict[str, Any]:
        self._stats.publish_progress(enqueued=self._accepted, delivered=self._written)
        snapshot = self._stats.snapshot(queue_depth=0)
        snapshot["type"] = self.kind
        snapshot.update(self.describe())
        snapshot["chain"] = self._chain.name  # this process's (`flask bridge verify` names it)
        snapshot["chain_records"] = self._chain.seq
        return snapshot

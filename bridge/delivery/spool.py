"""The disk spool: a write-ahead log between the request thread and the HTTP delivery engine.

An event is accepted once `append` has written it to this process's current segment (one
`os.write`, O_APPEND; the page cache survives a killed process, the fsync policy covers power
loss). The engine `read`s records, sends them, and `ack`s them; a segment is deleted once it
is no longer written and every record in it is acknowledged. Segments of dead processes are
adopted and replayed, so delivery is at least once (collectors deduplicate on `event_id`).
File names, the record frame and adoption are described in `bridge.delivery.segments`.

Acknowledgements live in memory: a process that dies replays its unfinished segments whole,
acknowledged records included (so a fully acknowledged current segment is rolled and deleted
once it passes 64 KiB, which bounds that replay). Never delete a live process's `.lock` file:
it is how siblings know the process, and its segments, are alive.

Losses are counted in `SinkStats.dropped_by_reason`, never silent: `spool_write_failed` (the
write failed; the engine may fall back), `spool_full` (evicted by the size cap),
`spool_corrupt` (CRC failure or a record torn by a crash) and `ttl_expired`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bridge.delivery import segments
from bridge.diagnostics import report
from bridge.sinks.base import SinkStats

__all__ = ["Spool", "SpoolRecord"]

SEGMENT_BYTES = 4 * 1024 * 1024
DRAINED_ROLL_BYTES = 64 * 1024  # roll a fully acked current segment past this, to limit replay
READ_CHUNK = 256 * 1024
RESCAN_INTERVAL = 5.0
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One spooled line handed to the engine; `segment` and `offset` are opaque to it."""

    segment: str
    offset: int
    line: bytes


@dataclass(slots=True, eq=False)
class _Segment:
    """Bookkeeping for one segment file; guarded by `Spool._lock`."""

    name: str
    adopted: bool
    sealed: bool = False  # no more appends: a short record at `limit` is torn, not pending
    limit: int = 0  # bytes known complete (appended by us, or the file size when adopted)
    records: int = 0
    read_pos: int = 0
    read_fd: int = -1
    in_corrupt: bool = False
    handed: dict[int, tuple[int, int]] = field(default_factory=dict)  # offset: (size, time)
    released: dict[int, tuple[SpoolRecord, int, int]] = field(default_factory=dict)
    done_records: int = 0  # acked, expired or damaged
    done_bytes: int = 0

    def drained(self) -> bool:
        return self.read_pos >= self.limit and not self.handed and not self.released


class Spool:
    """This process's spool in `directory`, plus whatever it adopted from dead processes.

    `append` may be called from any thread; `read`, `ack`, `release`, `sync` and
    `maybe_sync` belong to the engine thread. `fsync` is "never", "batch" (the engine calls
    `sync()` before each send) or a number of seconds between fsyncs (`maybe_sync()`).
    The constructor adopts dead owners' segments, reading through their headers once to count
    their records (so the size cap counts its losses exactly; about 5 ms per MiB); it raises
    OSError if the directory cannot be created or locked.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        fsync: str | float,
        event_ttl: float,
        stats: SinkStats,
        clock: Callable[[], float] = time.time,
        segment_bytes: int | None = None,
        rescan_interval: float = RESCAN_INTERVAL,
    ) -> None:
        self._dir = Path(directory)
        self._max_bytes = max_bytes
        self._fsync = fsync
        self._ttl_us = event_ttl * 1_000_000
        self._stats = stats
        self._clock = clock
        self._segment_bytes = segment_bytes or min(SEGMENT_BYTES, max(64 * 1024, max_bytes // 8))
        self._rescan_interval = rescan_interval
        if not self._dir.is_dir():
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self._dir, 0o700)
        self._reset()
        self._rescan()

    def _reset(self, *, register: bool = True) -> None:
        """Fresh state and a fresh owner: at construction and in a forked child."""
        self._pid = os.getpid()
        self._lock = threading.Lock()  # all bookkeeping below; held briefly, never during reads
        self._reader_lock = threading.Lock()  # one reader at a time; only it closes read fds
        self._sync_lock = threading.Lock()
        self._seq = 0
        self._adopted: dict[str, _Segment] = {}
        self._own: dict[str, _Segment] = {}
        self._evicted: dict[str, _Segment] = {}  # deleted with records still handed out
        self._current: _Segment | None = None
        self._write_fd = -1
        self._retired: list[int] = []  # write fds of rolled segments, closed by sync/read
        self._dead_fds: list[int] = []  # read fds of deleted segments, closed by the reader
        self._pending_bytes = 0
        self._dirty = False
        self._dir_dirty = False
        self._last_sync = time.monotonic()
        self._next_rescan = 0.0
        self._closed = not register
        self._lock_fd = -1
        if register:
            self._owner, self._lock_fd = segments.register_owner(self._dir)

    # -- request thread -------------------------------------------------------------------

    def append(self, line: bytes) -> bool:
        """Write one line to disk; False (counted `spool_write_failed`) when the write failed."""
        if self._pid != os.getpid():
            self.after_fork_in_child()
        record = segments.encode_record(line, int(self._clock() * 1_000_000))
        size = len(record)
        with self._lock:
            if self._closed:
                return self._write_failed("spool closed")
            if size > self._max_bytes or (
                self._pending_bytes + size > self._max_bytes and not self._make_room(size)
            ):
                self._stats.count_dropped("spool_full")
                return False
            seg = self._current
            try:
                if seg is None or (seg.limit and seg.limit + size > self._segment_bytes):
                    seg = self._roll()
                written = os.write(self._write_fd, record)
            except OSError as exc:
                return self._write_failed(f"spool write failed: {exc}")
            if written != size:
                self._undo_short_write(seg)
                return self._write_failed("spool write failed: short write (disk full?)")
            seg.limit += size
            seg.records += 1
            self._pending_bytes += size
            self._stats.spool_bytes = self._pending_bytes
            self._dirty = True
        self._stats.count_spooled()
        return True

    def _write_failed(self, message: str) -> bool:
        self._stats.count_dropped("spool_write_failed")
        report("spool_write_failed", message)
        return False

    def _roll(self) -> _Segment:
        """Seal the current segment and start a new one (lock held)."""
        self._seal_current()
        name = segments.segment_name(self._owner, self._next_seq())
        fd = os.open(self._dir / name, _WRITE_FLAGS, segments.FILE_MODE)
        seg = _Segment(name, adopted=False)
        self._own[name] = seg
        self._current, self._write_fd = seg, fd
        self._dir_dirty = True
        return seg

    def _seal_current(self) -> None:
        seg = self._current
        if seg is None:
            return
        seg.sealed = True
        self._current = None
        self._retired.append(self._write_fd)
        self._write_fd = -1
        self._maybe_delete(seg)

    def _undo_short_write(self, seg: _Segment) -> None:
        """Cut a partial record off again; if that fails, never write after it."""
        try:
            os.ftruncate(self._write_fd, seg.limit)
        except OSError:
            self._seal_current()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _make_room(self, size: int) -> bool:
        """Evict the oldest segments until `size` more bytes fit under the cap (lock held)."""
        while self._pending_bytes + size > self._max_bytes:
            candidates = [
                s for s in (*self._adopted.values(), *self._own.values()) if s is not self._current
            ]
            idle = [s for s in candidates if not s.handed]
            if idle or candidates:
                self._evict((idle or candidates)[0])
            elif self._current is not None and self._current.limit:
                current = self._current
                self._seal_current()
                if current.name in self._own:
                    self._evict(current)
            else:
                return False
        return True

    def _evict(self, seg: _Segment) -> None:
        lost = max(0, seg.records - seg.done_records - len(seg.handed))
        if lost:
            self._stats.count_dropped("spool_full", lost)
            report("spool_full", f"spool over {self._max_bytes} bytes: dropped the oldest events")
        self._delete(seg)
        if seg.handed:
            self._evicted[seg.name] = seg
        seg.released.clear()

    # -- engine thread --------------------------------------------------------------------

    def read(self, max_events: int, max_bytes: int) -> list[SpoolRecord]:
        """The next records not handed out yet, oldest first: at most `max_events`, and at
        most `max_bytes` of lines unless a single line is larger (then just that one)."""
        if self._pid != os.getpid():
            self.after_fork_in_child()
        out: list[SpoolRecord] = []
        with self._reader_lock:
            if self._closed:
                return out
            self._close_dead_fds()
            if self._fsync == "never":
                self._drain_retired(fsync=False)
            if time.monotonic() >= self._next_rescan:
                self._rescan()
            with self._lock:
                order = [*self._adopted.values(), *self._own.values()]
            budget = [max_events, max_bytes]
            for seg in order:
                if budget[0] <= 0 or (out and budget[1] <= 0):
                    break
                self._take_released(seg, out, budget)
                self._read_new(seg, out, budget)
        return out

    def _take_released(self, seg: _Segment, out: list[SpoolRecord], budget: list[int]) -> None:
        now_us = self._clock() * 1_000_000
        expired = 0
        with self._lock:
            for offset in sorted(seg.released):
                record, size, time_us = seg.released[offset]
                if budget[0] <= 0 or (out and len(record.line) > budget[1]):
                    budget[0] = 0  # keep the order: nothing newer goes out before it
                    break
                del seg.released[offset]
                if now_us - time_us > self._ttl_us:
                    expired += 1
                    self._mark_done(seg, size)
                    continue
                seg.handed[offset] = (size, time_us)
                out.append(record)
                budget[0] -= 1
                budget[1] -= len(record.line)
            self._maybe_delete(seg)
        if expired:
            self._stats.count_dropped("ttl_expired", expired)

    def _read_new(self, seg: _Segment, out: list[SpoolRecord], budget: list[int]) -> None:
        need = 0
        while budget[0] > 0 and (budget[1] > 0 or not out):
            with self._lock:
                if seg.name not in self._own and seg.name not in self._adopted:
                    return
                pos, limit, final, in_corrupt = seg.read_pos, seg.limit, seg.sealed, seg.in_corrupt
                if pos >= limit:
                    return
                if seg.read_fd < 0:
                    try:
                        seg.read_fd = os.open(self._dir / seg.name, os.O_RDONLY | os.O_CLOEXEC)
                    except OSError as exc:
                        report("spool_read_failed", f"spool read failed: {exc}")
                        return
                fd = seg.read_fd
            guess = max(budget[1], 0) + budget[0] * segments.HEADER_SIZE + 4096
            want = min(limit - pos, max(need, min(READ_CHUNK, guess)))
            try:
                buf = os.pread(fd, want, pos)
            except OSError as exc:
                report("spool_read_failed", f"spool read failed: {exc}")
                return
            if len(buf) < want:  # the file is shorter than we knew: somebody truncated it
                final, limit = self._shorten(seg, pos + len(buf)), pos + len(buf)
            parsed = segments.parse(
                buf,
                pos,
                final=final and pos + len(buf) >= limit,
                in_corrupt=in_corrupt,
                max_events=budget[0],
                max_bytes=budget[1],
                oversize_ok=not out,
            )
            if not self._commit(seg, parsed, out, budget):
                return
            if parsed.full:
                budget[0] = 0  # keep the order: nothing newer goes out before the next one
                return
            if parsed.end == pos and (parsed.need <= len(buf) or pos + len(buf) >= limit):
                return  # the rest is not written yet
            need = parsed.need

    def _shorten(self, seg: _Segment, end: int) -> bool:
        """Believe the file's real end; what is cut off is gone (and a torn tail is counted)."""
        with self._lock:
            if seg is self._current:
                self._seal_current()
            if seg.limit > end:
                self._pending_bytes -= seg.limit - end
                seg.limit = end
            return seg.sealed

    def _commit(
        self, seg: _Segment, parsed: segments.Parsed, out: list[SpoolRecord], budget: list[int]
    ) -> bool:
        """Hand out what `parse` found, unless the segment was evicted meanwhile."""
        now_us = self._clock() * 1_000_000
        expired = 0
        with self._lock:
            if seg.name not in self._own and seg.name not in self._adopted:
                return False  # evicted meanwhile: its records were counted as lost
            seg.read_pos = parsed.end
            seg.in_corrupt = parsed.in_corrupt
            if parsed.corrupt_bytes:
                # The adoption scan counted only records with an intact header.
                damaged = parsed.bad_payloads if seg.adopted else parsed.corrupt
                self._mark_done(seg, parsed.corrupt_bytes, damaged)
            for offset, size, time_us, line in parsed.records:
                if now_us - time_us > self._ttl_us:
                    expired += 1
                    self._mark_done(seg, size)
                    continue
                seg.handed[offset] = (size, time_us)
                out.append(SpoolRecord(seg.name, offset, line))
                budget[0] -= 1
                budget[1] -= len(line)
            self._maybe_delete(seg)
        if parsed.corrupt:
            self._stats.count_dropped("spool_corrupt", parsed.corrupt)
            report("spool_corrupt", f"spool segment {seg.name}: skipped damaged records")
        if expired:
            self._stats.count_dropped("ttl_expired", expired)
        return True

    def ack(self, records: Sequence[SpoolRecord]) -> None:
        """Forget delivered (or dead-lettered) records; delete segments that are all done."""
        with self._lock:
            if self._closed:
                return
            touched: dict[str, _Segment] = {}
            for record in records:
                seg = self._find(record.segment)
                if seg is None or (entry := seg.handed.pop(record.offset, None)) is None:
                    continue
                touched[seg.name] = seg
                if seg.name not in self._evicted:
                    self._mark_done(seg, entry[0])
            for seg in touched.values():
                self._maybe_delete(seg)
            current = self._current
            if (
                current is not None
                and current.limit >= DRAINED_ROLL_BYTES
                and current.done_records >= current.records
                and current.drained()
            ):
                self._seal_current()

    def release(self, records: Sequence[SpoolRecord]) -> None:
        """Put handed-out records back: a later `read` hands them out again."""
        lost = 0
        with self._lock:
            if self._closed:
                return
            for record in records:
                seg = self._find(record.segment)
                if seg is None or (entry := seg.handed.pop(record.offset, None)) is None:
                    continue
                if seg.name in self._evicted:
                    lost += 1  # its file is gone: the size cap took it
                    self._maybe_delete(seg)
                else:
                    seg.released[record.offset] = (record, *entry)
        if lost:
            self._stats.count_dropped("spool_full", lost)

    def _find(self, name: str) -> _Segment | None:
        return self._own.get(name) or self._adopted.get(name) or self._evicted.get(name)

    def _mark_done(self, seg: _Segment, size: int, records: int = 1) -> None:
        seg.done_records += records
        seg.done_bytes += size
        self._pending_bytes -= size
        self._stats.spool_bytes = self._pending_bytes

    def _maybe_delete(self, seg: _Segment) -> None:
        """Delete a sealed segment whose every record is done (lock held)."""
        if seg.name in self._evicted:
            if not seg.handed:
                del self._evicted[seg.name]
        elif seg.sealed and seg.drained() and not seg.in_corrupt:
            self._delete(seg)

    def _delete(self, seg: _Segment) -> None:
        self._own.pop(seg.name, None)
        self._adopted.pop(seg.name, None)
        self._pending_bytes -= seg.limit - seg.done_bytes
        self._stats.spool_bytes = self._pending_bytes
        if seg.read_fd >= 0:
            self._dead_fds.append(seg.read_fd)
            seg.read_fd = -1
        try:
            os.unlink(self._dir / seg.name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            report("spool_delete_failed", f"spool could not delete {seg.name}: {exc}")

    def _rescan(self) -> None:
        """Adopt the segments of dead owners (reader lock held, or in the constructor)."""
        self._next_rescan = time.monotonic() + self._rescan_interval
        with self._lock:
            owner = self._owner
        try:
            claimed = segments.claim_orphans(self._dir, owner, self._locked_next_seq)
        except OSError as exc:
            report("spool_adopt_failed", f"spool could not adopt segments: {exc}")
            return
        for name, size in claimed:
            seg = _Segment(name, adopted=True, sealed=True, limit=size)
            try:
                seg.read_fd = os.open(self._dir / name, os.O_RDONLY | os.O_CLOEXEC)
                seg.records = segments.count_records(seg.read_fd, size)
            except OSError as exc:
                report("spool_adopt_failed", f"spool could not read {name}: {exc}")
            with self._lock:
                self._adopted[name] = seg
                self._pending_bytes += size
                self._dir_dirty = True
                self._maybe_delete(seg)
                if self._pending_bytes > self._max_bytes:
                    self._make_room(0)
                self._stats.spool_bytes = self._pending_bytes

    def _locked_next_seq(self) -> int:
        with self._lock:
            return self._next_seq()

    def _close_dead_fds(self) -> None:
        with self._lock:
            dead, self._dead_fds = self._dead_fds, []
        for fd in dead:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _drain_retired(self, *, fsync: bool) -> None:
        with self._sync_lock:
            with self._lock:
                retired, self._retired = self._retired, []
            for fd in retired:
                if fsync:
                    _fsync(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)

    def sync(self) -> None:
        """fsync the current segment (and segments rolled since the last sync) now.

        Never raises: a failed fsync is reported to stderr (the data stays in the page cache).
        """
        self._drain_retired(fsync=True)
        with self._sync_lock:
            with self._lock:
                fd, dirty, dir_dirty = self._write_fd, self._dirty, self._dir_dirty
                self._dirty = self._dir_dirty = False
                self._last_sync = time.monotonic()
            # The fd stays open while we hold the sync lock: rolling only retires it.
            if dirty and fd >= 0:
                _fsync(fd)
            if dir_dirty:
                try:
                    dir_fd = os.open(self._dir, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    report("spool_fsync_failed", f"spool fsync failed: {exc}")
                    return
                _fsync(dir_fd)
                os.close(dir_fd)

    def maybe_sync(self) -> None:
        """fsync if the interval policy says it is due; also closes rolled segments' fds."""
        if isinstance(self._fsync, int | float):
            if time.monotonic() - self._last_sync >= self._fsync:
                self.sync()
        elif self._fsync == "never":
            self._drain_retired(fsync=False)

    def pending_bytes(self) -> int:
        """Bytes on disk not acknowledged yet."""
        return self._pending_bytes

    def pending_events(self) -> int:
        """Records on disk not acknowledged yet."""
        with self._lock:
            return sum(
                max(0, s.records - s.done_records)
                for s in (*self._adopted.values(), *self._own.values())
            )

    def close(self) -> None:
        """Sync, close every fd and release the process lock; unacked segments stay on disk
        for the next process. Idempotent; `append` returns False afterwards."""
        with self._reader_lock:
            with self._lock:
                if self._closed:
                    return
                self._closed = True
            if self._fsync != "never":
                self.sync()
            with self._lock:
                self._seal_current()
                remaining = [*self._adopted.values(), *self._own.values()]
                dead, self._dead_fds = self._dead_fds, []
                dead += [s.read_fd for s in remaining if s.read_fd >= 0]
                for seg in remaining:
                    seg.read_fd = -1
                self._adopted.clear()
                self._own.clear()
                self._evicted.clear()
                lock_fd, self._lock_fd = self._lock_fd, -1
            self._drain_retired(fsync=False)
            for fd in dead:
                os.close(fd)
            if not remaining:
                (self._dir / f"{self._owner}.lock").unlink(missing_ok=True)
            os.close(lock_fd)

    def after_fork_in_child(self) -> None:
        """In a forked child: drop the parent's fds (without unlocking: the lock is shared
        with the parent) and start over as a new owner. The parent's segments stay its own."""
        if self._pid == os.getpid():
            return
        fds = [self._lock_fd, self._write_fd, *self._retired, *self._dead_fds]
        fds += [s.read_fd for s in (*self._adopted.values(), *self._own.values())]
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        # A parent's thread may have held one of our locks at the fork: _reset makes new ones.
        try:
            self._reset(register=not self._closed)
        except OSError as exc:  # no lock, no segment: appends fail and are counted
            report("spool_fork_failed", f"spool could not start over after fork: {exc}")
            self._closed = True


def _fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        report("spool_fsync_failed", f"spool fsync failed: {exc}")

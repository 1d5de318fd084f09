"""The spool's writer: `append` (the request thread), rolling segments, fsync.

An event is accepted once `append` has written its record to this process's current segment
(one `os.write`, O_APPEND). `append` is the only spool code on the request thread, so what it
needs is one attribute away on the writer: the segment being written, its fd, the table lock.
It compares the segment's `limit` with its `end` (kept current by the bookkeeping, `table`)
and leaves every other case (no segment yet, segment full, size cap reached, sealed by the
bookkeeping, spool closed) to `_make_way`. Lines appended are also kept in memory behind the
segment (its tail, at most `TAIL_BYTES`) for a reader that keeps up.

`append_many` takes a request's lines: encoded and joined outside the lock, one `os.write`
when they fit the segment; otherwise one write per run that fits, each line that does not
going through `_make_way` as its own `append` would, so rolls, evictions and refusals fall
exactly where N appends put them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable

from bridge.delivery.spool import owners
from bridge.delivery.spool.header import new_segment_header
from bridge.delivery.spool.records import RECORD_OVERHEAD, encode_record, encode_records
from bridge.delivery.spool.segment import Segment
from bridge.delivery.spool.table import SegmentTable
from bridge.diagnostics import report
from bridge.safefs import open_nofollow
from bridge.stats import SinkStats

__all__ = ["TAIL_BYTES", "SpoolWriter"]

TAIL_BYTES = 4 * 1024 * 1024  # lines kept in memory for the reader, behind the current segment
WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND


class SpoolWriter:
    """Appends (any thread), segment rolls, and the fsync policy: `fsync` is "never",
    "batch" (the engine calls `sync()` before each send) or seconds between fsyncs."""

    def __init__(
        self,
        table: SegmentTable,
        *,
        fsync: str | float,
        stats: SinkStats,
        clock: Callable[[], float],
    ) -> None:
        self._table = table
        self.fsync = fsync
        self._stats = stats
        self._clock = clock
        self._wall_clock = clock is time.time  # then time_ns() gives µs without a float
        self.reset()

    def reset(self) -> None:
        """Fresh state (after the table's reset): at construction and in a forked child."""
        self._lock = self._table.lock
        self.sync_lock = threading.Lock()
        self._current: Segment | None = None
        self._write_fd = -1
        self.retired: list[int] = []  # write fds of rolled segments, closed by sync/read
        self._synced: tuple[int, int] = (-1, 0)  # (write fd, its segment's limit) last fsynced
        self._last_sync = time.monotonic()

    def fds(self) -> list[int]:
        """Every write fd (a forked child closes them)."""
        return [self._write_fd, *self.retired]

    # -- request thread ---------------------------------------------------------------------

    def append(self, line: bytes) -> bool:
        """Write one line to disk; False (counted `spool_write_failed`) when the write failed."""
        now = time.time_ns() // 1000 if self._wall_clock else int(self._clock() * 1_000_000)
        record = encode_record(line, now)
        size = len(record)
        with self._lock:
            seg = self._current
            if seg is None or seg.limit + size > seg.end:
                seg = self._make_way(size)  # closed, a new segment, or the size cap
                if seg is None:
                    return False
            try:
                written = os.write(self._write_fd, record)
            except OSError as exc:
                return self._write_failed(f"spool write failed: {exc}")
            if written != size:
                self._undo_short_write(seg)
                return self._write_failed("spool write failed: short write (disk full?)")
            seg.limit += size
            seg.records += 1
            tail = seg.tail
            if tail is not None:
                tail.append(line)
                if now < seg.tail_floor:
                    seg.tail_floor = now
                if seg.limit - seg.tail_pos > TAIL_BYTES:
                    seg.drop_tail()  # the reader is far behind: it reads the disk
        return True

    def append_many(self, lines: list[bytes]) -> tuple[int, int]:
        """Write several lines to disk in order, with one `os.write` when they fit the current
        segment; how many were accepted, and their bytes. Each line is decided as `append`
        would decide it, one after the other (a roll, an eviction, a refusal counted by
        reason), so a batch that does not fit is split at record boundaries."""
        if not lines:
            return 0, 0
        now = time.time_ns() // 1000 if self._wall_clock else int(self._clock() * 1_000_000)
        data = encode_records(lines, now)
        size = len(data)
        with self._lock:
            seg = self._current
            if seg is None or seg.limit + size > seg.end:
                return self._append_in_runs(lines, data, now)
            kept = self._write_run(seg, data, lines, now)
        if kept == len(lines):
            return kept, size - kept * RECORD_OVERHEAD
        return kept, sum(map(len, lines[:kept]))

    def _append_in_runs(self, lines: list[bytes], data: bytes, now: int) -> tuple[int, int]:
        """`append_many` when the batch does not fit the current segment (lock held): the
        lines that fit are written as one run; the line that does not goes through
        `_make_way` exactly as an `append` of it would, after the run before it is on disk
        (the roll, the size cap and its evictions see what N appends would leave)."""
        view = memoryview(data)
        accepted = accepted_bytes = 0
        seg = self._current
        first = start = pos = 0  # the run being gathered: lines[first:i], data[start:pos]
        for i, line in enumerate(lines):
            size = len(line) + RECORD_OVERHEAD
            if seg is None or seg.limit + (pos - start) + size > seg.end:
                if pos > start:
                    assert seg is not None
                    kept = self._write_run(seg, view[start:pos], lines[first:i], now)
                    accepted += kept
                    accepted_bytes += sum(map(len, lines[first : first + kept]))
                    if kept < i - first:  # a failed write: the rest of the batch with it
                        self._refuse_lines(len(lines) - i, "spool write failed")
                        return accepted, accepted_bytes
                seg = self._make_way(size)
                first, start = i, pos
                if seg is None:  # refused and counted, as `append` does
                    first, start = i + 1, pos + size
            pos += size
        if pos > start:
            assert seg is not None
            kept = self._write_run(seg, view[start:pos], lines[first:], now)
            accepted += kept
            accepted_bytes += sum(map(len, lines[first : first + kept]))
        return accepted, accepted_bytes

    def _write_run(
        self, seg: Segment, data: bytes | memoryview, lines: list[bytes], now: int
    ) -> int:
        """Write the records of `lines` (`data`) to `seg` with one `os.write` (lock held); how
        many were accepted. After a short write the records that made it whole are kept and
        the file is cut right after them, so it ends at a record boundary (what a reader and
        a crash replay expect); the others are refused, counted."""
        try:
            written = os.write(self._write_fd, data)
        except OSError as exc:
            self._refuse_lines(len(lines), f"spool write failed: {exc}")
            return 0
        kept = len(lines)
        if written != len(data):
            kept, written = _whole_records(lines, written)
        seg.limit += written
        seg.records += kept
        tail = seg.tail
        if tail is not None and kept:
            tail.extend(lines if kept == len(lines) else lines[:kept])
            if now < seg.tail_floor:
                seg.tail_floor = now
            if seg.limit - seg.tail_pos > TAIL_BYTES:
                seg.drop_tail()  # the reader is far behind: it reads the disk
        if kept < len(lines):
            self._undo_short_write(seg)
            self._refuse_lines(len(lines) - kept, "spool write failed: short write (disk full?)")
        return kept

    def _refuse_lines(self, count: int, message: str) -> None:
        self._stats.count_dropped("spool_write_failed", count)
        report("spool_write_failed", message)

    def _make_way(self, size: int) -> Segment | None:
        """The segment to append `size` bytes to (lock held): roll or evict as needed. None
        (counted) when the spool is closed, cannot start a segment, or the line cannot fit."""
        table = self._table
        if table.closed:
            self._write_failed("spool closed")
            return None
        if not table.fits(size) and not table.make_room(size):
            self._stats.count_dropped("spool_full")
            return None
        seg = self._current
        if seg is not None and seg.sealed:  # by the bookkeeping: evicted, or cut short
            self._retire()
            seg = None
        if seg is None or (seg.records and seg.limit + size > table.segment_bytes):
            try:
                seg = self._roll()
            except OSError as exc:
                self._write_failed(f"spool write failed: {exc}")
                return None
        return seg

    def _write_failed(self, message: str) -> bool:
        self._stats.count_dropped("spool_write_failed")
        report("spool_write_failed", message)
        return False

    def _roll(self) -> Segment:
        """Seal the current segment and start a new one with its header (lock held)."""
        table = self._table
        self.seal()
        name = owners.segment_name(table.owner, table.next_seq())
        path = table.dir / name
        fd = open_nofollow(path, WRITE_FLAGS, owners.FILE_MODE)
        head = new_segment_header()
        try:
            if os.write(fd, head) != len(head):
                raise OSError(errno.ENOSPC, "short write of a segment header")
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        seg = table.start_segment(name)
        self._current, self._write_fd = seg, fd
        return seg

    def _undo_short_write(self, seg: Segment) -> None:
        """Cut a partial record off again (the file ends at `seg.limit`, a record boundary);
        if that fails, never write after it."""
        try:
            os.ftruncate(self._write_fd, seg.limit)
        except OSError:
            self.seal()

    def seal(self) -> None:
        """No more appends to the current segment (table lock held); its fd is retired."""
        self._table.seal_writing()
        self._retire()

    def _retire(self) -> None:
        if self._write_fd >= 0:
            self.retired.append(self._write_fd)
        self._current, self._write_fd = None, -1

    # -- engine thread ----------------------------------------------------------------------

    def sync(self) -> None:
        """fsync the current segment (and segments rolled since the last sync) now.

        Never raises: a failed fsync is reported to stderr (the data stays in the page cache).
        """
        self.drain_retired(fsync=True)
        table = self._table
        with self.sync_lock:
            with table.lock:
                fd, dir_dirty = self._write_fd, table.dir_dirty
                written = (fd, self._current.limit if self._current is not None else 0)
                dirty, self._synced = written != self._synced, written
                table.dir_dirty = False
                self._last_sync = time.monotonic()
            # The fd stays open while we hold the sync lock: rolling only retires it.
            if dirty and fd >= 0:
                _fsync(fd)
            if dir_dirty:
                try:
                    dir_fd = os.open(table.dir, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    report("spool_fsync_failed", f"spool fsync failed: {exc}")
                    return
                _fsync(dir_fd)
                os.close(dir_fd)

    def maybe_sync(self) -> None:
        """fsync if the interval policy says it is due; also closes rolled segments' fds."""
        if isinstance(self.fsync, int | float):
            if time.monotonic() - self._last_sync >= self.fsync:
                self.sync()
        elif self.fsync == "never":
            self.drain_retired(fsync=False)

    def drain_retired(self, *, fsync: bool) -> None:
        """Close the write fds of rolled segments, fsyncing them first if asked (table lock
        not held)."""
        with self.sync_lock:
            with self._table.lock:
                retired, self.retired = self.retired, []
            for fd in retired:
                if fsync:
                    _fsync(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)


def _whole_records(lines: list[bytes], written: int) -> tuple[int, int]:
    """How many records of `lines`, from the first, lie whole in `written` bytes; their size."""
    kept = end = 0
    for line in lines:
        size = len(line) + RECORD_OVERHEAD
        if end + size > written:
            break
        kept += 1
        end += size
    return kept, end


def _fsync(fd: int) -> None:
    """fsync, reporting (not raising) a failure: the data stays in the page cache."""
    try:
        os.fsync(fd)
    except OSError as exc:
        report("spool_fsync_failed", f"spool fsync failed: {exc}")

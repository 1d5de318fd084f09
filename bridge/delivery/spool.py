"""The disk spool: a write-ahead log between the request thread and the HTTP delivery engine.

An event is accepted once `append` has written it to this process's current segment (one
`os.write`, O_APPEND; the page cache survives a killed process, the fsync policy covers power
loss). The engine `read`s records, sends them, and `ack`s them; a segment is deleted once it
is no longer written and every record in it is acknowledged. Segments of dead processes are
adopted and replayed, so delivery is at least once (collectors deduplicate on `event_id`).
File names, the segment header, the record frame and adoption are described in
`bridge.delivery.segments`. `Spool` is the facade: appends, fsync and lifecycle here; the
segment table in `spooltable`, the read side in `spoolread`, acknowledgements in
`spoolack`, and the records they share in `spooltypes`.

Acknowledgements are kept in memory and, as the acknowledged prefix of each segment (every
record before an offset is done), in the segment's header: one pwrite per `ack` call, in the
page cache like the records. A process killed while a batch is in flight therefore replays
at most the records after that prefix: the batch in flight, and any batch acknowledged out of
order ahead of it. Never delete a live process's `.lock` file: it is how siblings know the
process, and its segments, are alive.

The engine's side works on batches, not records. Lines this process appended are also kept
in memory behind the current segment (the "tail", at most `TAIL_BYTES`), so a reader that
keeps up hands them out with list slices and never reads back what it just wrote; anything
else (adopted segments, a reader left behind) is parsed from disk in one pass over a 1 MiB
buffer, a whole run checked with one CRC. A read hands out each segment's records as one
run, with `SpoolRecord` handles (plain ints: segment and offset); an `ack` of the list `read`
returned settles its runs whole, and only partial acks and releases go record by record.

Losses are counted in `SinkStats.dropped_by_reason`, never silent: `spool_write_failed` (the
write failed; the engine may fall back), `spool_full` (evicted by the size cap),
`spool_corrupt` (CRC failure or a record torn by a crash) and `ttl_expired`. The spool is the
only writer of `SinkStats.spooled` and `spool_bytes`; `append` leaves them to each `read` and
`pending_events()` (which `stats()` calls), so the request thread does not touch them.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bridge import forking
from bridge.delivery import segments
from bridge.delivery.spoolack import _SpoolAcks
from bridge.delivery.spoolread import _SpoolReader
from bridge.delivery.spooltable import _fsync
from bridge.delivery.spooltypes import SpoolRead, SpoolRecord, _drop_tail, _Run, _Segment
from bridge.diagnostics import report
from bridge.safefs import make_dirs, open_nofollow
from bridge.stats import SinkStats

__all__ = ["Spool", "SpoolRead", "SpoolRecord"]

SEGMENT_BYTES = 4 * 1024 * 1024
TAIL_BYTES = 4 * 1024 * 1024  # lines kept in memory for the reader, behind the current segment
RESCAN_INTERVAL = 5.0
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND


class Spool(_SpoolReader, _SpoolAcks):
    """This process's spool in `directory`, plus whatever it adopted from dead processes.

    `append` may be called from any thread; `read`, `ack`, `release`, `sync` and
    `maybe_sync` belong to the engine thread. `fsync` is "never", "batch" (the engine calls
    `sync()` before each send) or a number of seconds between fsyncs (`maybe_sync()`).
    The constructor adopts dead owners' segments, counting the records after their
    acknowledged prefix (so the size cap counts its losses exactly); it raises OSError if the
    directory cannot be created or locked.
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
        self._wall_clock = clock is time.time  # then time_ns() gives µs without a float
        self._segment_bytes = segment_bytes or min(SEGMENT_BYTES, max(64 * 1024, max_bytes // 8))
        self._rescan_interval = rescan_interval
        make_dirs(self._dir, segments.DIR_MODE)
        self._reset()
        forking.reset_in_child(self)  # `append` checks nothing per call
        self._rescan()

    def _reset(self, *, register: bool = True) -> None:
        """Fresh state and a fresh owner: at construction and in a forked child."""
        self._pid = os.getpid()
        self._lock = threading.Lock()  # all bookkeeping below; held briefly, never during reads
        self._reader_lock = threading.Lock()  # one reader at a time; only it closes read fds
        self._sync_lock = threading.Lock()
        self._seq = 0
        self._ids = itertools.count(1)
        self._adopted: dict[str, _Segment] = {}
        self._own: dict[str, _Segment] = {}
        self._by_key: dict[int, _Segment] = {}  # live, and deleted ones with records handed out
        self._batches: dict[int, tuple[list[int], list[_Run]]] = {}  # id(handles): runs
        self._reading: list[_Run] = []  # the runs of the read in progress (reader lock)
        self._current: _Segment | None = None
        self._sealed_tail: _Segment | None = None  # the last sealed segment, if it has a tail
        self._write_fd = -1
        self._retired: list[int] = []  # write fds of rolled segments, closed by sync/read
        self._dead_fds: list[int] = []  # read fds of deleted segments, closed by the reader
        self._pending_bytes = 0
        self._synced: tuple[int, int] = (-1, 0)  # (write fd, its segment's limit) last fsynced
        self._spooled_before = 0  # records appended to own segments deleted since
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
        now = time.time_ns() // 1000 if self._wall_clock else int(self._clock() * 1_000_000)
        record = segments.encode_record(line, now)
        size = len(record)
        with self._lock:
            seg = self._current
            if (
                seg is None
                or seg.limit + size > self._segment_bytes
                or self._pending_bytes + size > self._max_bytes
            ):
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
                    _drop_tail(seg)  # the reader is far behind: it reads the disk
            self._pending_bytes += size
        return True

    def _make_way(self, size: int) -> _Segment | None:
        """The segment to append `size` bytes to (lock held): roll or evict as needed. None
        (counted) when the spool is closed, cannot start a segment, or the line cannot fit."""
        if self._closed:
            self._write_failed("spool closed")
            return None
        if self._pending_bytes + size > self._max_bytes and (
            size > self._max_bytes or not self._make_room(size)
        ):
            self._stats.count_dropped("spool_full")
            return None
        seg = self._current
        if seg is None or (seg.records and seg.limit + size > self._segment_bytes):
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

    def _roll(self) -> _Segment:
        """Seal the current segment and start a new one with its header (lock held)."""
        self._seal_current()
        name = segments.segment_name(self._owner, self._next_seq())
        path = self._dir / name
        fd = open_nofollow(path, _WRITE_FLAGS, segments.FILE_MODE)
        header = segments.new_segment_header()
        try:
            if os.write(fd, header) != len(header):
                raise OSError(errno.ENOSPC, "short write of a segment header")
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        seg = self._new_segment(name, adopted=False)
        seg.tail = []
        self._own[name] = self._by_key[seg.key] = seg
        self._current, self._write_fd = seg, fd
        self._dir_dirty = True
        return seg

    def _undo_short_write(self, seg: _Segment) -> None:
        """Cut a partial record off again; if that fails, never write after it."""
        try:
            os.ftruncate(self._write_fd, seg.limit)
        except OSError:
            self._seal_current()

    def sync(self) -> None:
        """fsync the current segment (and segments rolled since the last sync) now.

        Never raises: a failed fsync is reported to stderr (the data stays in the page cache).
        """
        self._drain_retired(fsync=True)
        with self._sync_lock:
            with self._lock:
                fd, dir_dirty = self._write_fd, self._dir_dirty
                written = (fd, self._current.limit if self._current is not None else 0)
                dirty, self._synced = written != self._synced, written
                self._dir_dirty = False
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

    def appended(self) -> int:
        """Records this spool appended (in this process), ever."""
        with self._lock:
            return self._spooled_before + sum(s.records for s in self._own.values())

    def pending_events(self) -> int:
        """Records on disk not acknowledged yet (and the stats brought up to date)."""
        with self._lock:
            self._publish()
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
                self._publish()
                remaining = [*self._adopted.values(), *self._own.values()]
                dead, self._dead_fds = self._dead_fds, []
                dead += [s.fd for s in remaining if s.fd >= 0]
                for seg in remaining:
                    seg.fd = -1
                self._adopted.clear()
                self._own.clear()
                self._by_key.clear()
                self._batches.clear()
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
        fds += [s.fd for s in (*self._adopted.values(), *self._own.values())]
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

"""`Spool`: one process's spool directory, composed of the bookkeeping (`table`), the writer
(`writer`) and the reader (`reader`); construction, close and the fork reset live here.

The design (files, when a record counts as accepted, crashes, adoption, losses) is in the
package docstring (`bridge.delivery.spool`); the locks in `table`'s.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bridge import forking
from bridge.delivery.spool import owners
from bridge.delivery.spool.reader import SpoolRead, SpoolReader
from bridge.delivery.spool.segment import SpoolRecord
from bridge.delivery.spool.table import SegmentTable
from bridge.delivery.spool.writer import SpoolWriter
from bridge.diagnostics import report
from bridge.safefs import make_dirs
from bridge.stats import SinkStats

__all__ = ["RESCAN_INTERVAL", "SEGMENT_BYTES", "Spool"]

SEGMENT_BYTES = 4 * 1024 * 1024
RESCAN_INTERVAL = 5.0


class Spool:
    """This process's spool in `directory`, plus whatever it adopted from dead processes.

    `append` may be called from any thread; `read`, `ack`, `release`, `sync` and
    `maybe_sync` belong to the engine thread. `fsync` is "never", "batch" (the engine calls
    `sync()` before each send) or a number of seconds between fsyncs (`maybe_sync()`).
    The constructor adopts dead owners' segments, counting the records after their
    acknowledged prefix (so the size cap counts its losses exactly); it raises OSError if the
    directory cannot be created or locked.
    """

    append: Callable[[bytes], bool]
    """Write one line to disk; False (counted `spool_write_failed`) when the write failed.
    (`SpoolWriter.append`, bound here: the request thread calls it without a hop.)"""

    append_many: Callable[[list[bytes]], tuple[int, int]]
    """Write several lines in order, with one write when they fit the current segment; how
    many were accepted, and their bytes. Each line is decided (rolled, evicted for, refused
    and counted) exactly as `append` would decide it. (`SpoolWriter.append_many`, bound.)"""

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
        self._stats = stats
        make_dirs(self._dir, owners.DIR_MODE)
        self._table = SegmentTable(
            self._dir,
            max_bytes=max_bytes,
            segment_bytes=segment_bytes or min(SEGMENT_BYTES, max(64 * 1024, max_bytes // 8)),
            stats=stats,
        )
        self._writer = SpoolWriter(self._table, fsync=fsync, stats=stats, clock=clock)
        self._reader = SpoolReader(
            self._table,
            event_ttl=event_ttl,
            stats=stats,
            clock=clock,
            rescan_interval=rescan_interval,
        )
        self.append = self._writer.append
        self.append_many = self._writer.append_many
        self._lock_fd = -1
        self._reset()
        forking.reset_in_child(self)  # `append` checks nothing per call
        self._reader.rescan()

    def _reset(self, *, register: bool = True) -> None:
        """Fresh state and a fresh owner: at construction and in a forked child. The parts
        are reset in place: `append` may be bound elsewhere (`SpoolFeed`)."""
        self._pid = os.getpid()
        self._table.reset("", closed=True)
        self._writer.reset()
        self._reader.reset()
        self._lock_fd = -1
        if register:
            self._table.owner, self._lock_fd = owners.register_owner(self._dir)
            self._table.closed = False

    def read(self, max_events: int, max_bytes: int) -> SpoolRead:
        """The next lines not handed out yet, oldest first, and their handles: at most
        `max_events`, and at most `max_bytes` of lines unless a single line is larger (then
        just that one)."""
        if self._pid != os.getpid():
            self.after_fork_in_child()
        if self._writer.fsync == "never":
            self._writer.drain_retired(fsync=False)
        return self._reader.read(max_events, max_bytes)

    def ack(self, records: Sequence[SpoolRecord]) -> None:
        """Forget delivered (or dead-lettered) records, save each segment's acknowledged
        prefix in its header, and delete segments that are all done. Unknown or repeated
        handles are ignored. The list `read` returned is acked whole and cheaply: never
        change it (take a subset as a new list)."""
        self._reader.ack(records)

    def release(self, records: Sequence[SpoolRecord]) -> None:
        """Put handed-out records back: a later `read` hands them out again."""
        self._reader.release(records)

    def sync(self) -> None:
        """fsync the current segment (and segments rolled since the last sync) now.

        Never raises: a failed fsync is reported to stderr (the data stays in the page cache).
        """
        self._writer.sync()

    def maybe_sync(self) -> None:
        """fsync if the interval policy says it is due; also closes rolled segments' fds."""
        self._writer.maybe_sync()

    def pending_bytes(self) -> int:
        """Bytes on disk not acknowledged yet."""
        return self._table.pending_bytes

    def appended(self) -> int:
        """Records this spool appended (in this process), ever."""
        with self._table.lock:
            return self._table.appended()

    def pending_events(self) -> int:
        """Records on disk not acknowledged yet (and the stats brought up to date)."""
        with self._table.lock:
            self._table.publish()
            return self._table.pending_events()

    def close(self) -> None:
        """Sync, close every fd and release the process lock; unacked segments stay on disk
        for the next process. Idempotent; `append` returns False afterwards."""
        table = self._table
        with self._reader.lock:
            with table.lock:
                if table.closed:
                    return
                table.closed = True
            if self._writer.fsync != "never":
                self._writer.sync()
            with table.lock:
                self._writer.seal()
                table.publish()
                remaining, fds = table.forget_all()
                lock_fd, self._lock_fd = self._lock_fd, -1
            self._writer.drain_retired(fsync=False)
            for fd in fds:
                os.close(fd)
            if not remaining:
                (self._dir / f"{table.owner}.lock").unlink(missing_ok=True)
            os.close(lock_fd)

    def after_fork_in_child(self) -> None:
        """In a forked child: drop the parent's fds (without unlocking: the lock is shared
        with the parent) and start over as a new owner. The parent's segments stay its own."""
        if self._pid == os.getpid():
            return
        for fd in [self._lock_fd, *self._writer.fds(), *self._table.all_fds()]:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        # A parent's thread may have held one of our locks at the fork: the resets make new ones.
        try:
            self._reset(register=not self._table.closed)
        except OSError as exc:  # no lock, no segment: appends fail and are counted
            report("spool_fork_failed", f"spool could not start over after fork: {exc}")
            self._table.closed = True

"""The spool's segment table: which segments exist, their bytes and records, and the
fds that reach them; sealing, eviction under the size cap, deletion, adoption.

The base of `Spool` (`bridge.delivery.spool`): the read side (`spoolread`) and
acknowledgements (`spoolack`) build on it. Its attributes are declared here and set by
`Spool._reset`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bridge.delivery import segments
from bridge.delivery.segments import SEGMENT_HEADER
from bridge.delivery.spooltypes import _SHIFT, _drop_tail, _Run, _Segment
from bridge.diagnostics import report
from bridge.stats import SinkStats


class _SpoolTable:
    """Segments and their fds; the bookkeeping shared by appends, reads and acks."""

    _dir: Path
    _max_bytes: int
    _fsync: str | float
    _ttl_us: float
    _stats: SinkStats
    _clock: Callable[[], float]
    _wall_clock: bool
    _segment_bytes: int
    _rescan_interval: float
    _pid: int
    _lock: threading.Lock
    _reader_lock: threading.Lock
    _sync_lock: threading.Lock
    _seq: int
    _ids: itertools.count[int]
    _adopted: dict[str, _Segment]
    _own: dict[str, _Segment]
    _by_key: dict[int, _Segment]
    _batches: dict[int, tuple[list[int], list[_Run]]]
    _reading: list[_Run]
    _current: _Segment | None
    _sealed_tail: _Segment | None
    _write_fd: int
    _retired: list[int]
    _dead_fds: list[int]
    _pending_bytes: int
    _synced: tuple[int, int]
    _spooled_before: int
    _dir_dirty: bool
    _last_sync: float
    _next_rescan: float
    _closed: bool
    _lock_fd: int
    _owner: str

    def _new_segment(self, name: str, *, adopted: bool, size: int = SEGMENT_HEADER) -> _Segment:
        start = min(SEGMENT_HEADER, size)
        seg = _Segment(name, next(self._ids) << _SHIFT, adopted, sealed=adopted, limit=size)
        seg.read_pos = seg.done_bytes = seg.acked = start
        return seg

    def _seal_current(self) -> None:
        seg = self._current
        if seg is None:
            return
        seg.sealed = True
        # Its tail stays until read (the reader is usually right behind); one such, at most.
        if self._sealed_tail is not None:
            _drop_tail(self._sealed_tail)
        self._sealed_tail = seg if seg.tail is not None else None
        self._current = None
        self._retired.append(self._write_fd)
        self._write_fd = -1
        self._maybe_delete(seg)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _make_room(self, size: int) -> bool:
        """Evict the oldest segments until `size` more bytes fit under the cap (lock held)."""
        while self._pending_bytes + size > self._max_bytes:
            candidates = [
                s for s in (*self._adopted.values(), *self._own.values()) if s is not self._current
            ]
            idle = [s for s in candidates if not s.busy()]
            if idle or candidates:
                self._evict((idle or candidates)[0])
            elif self._current is not None and self._current.records:
                current = self._current
                self._seal_current()
                if not current.deleted:
                    self._evict(current)
            else:
                return False
        return True

    def _evict(self, seg: _Segment) -> None:
        lost = max(0, seg.records - seg.done_records - seg.in_flight())
        if lost:
            self._stats.count_dropped("spool_full", lost)
            report("spool_full", f"spool over {self._max_bytes} bytes: dropped the oldest events")
        seg.released.clear()
        self._delete(seg)

    def _open(self, seg: _Segment) -> int:
        """The segment's read/ack fd, opened on first use (lock held); -1 if it cannot be."""
        if seg.fd < 0 and not seg.deleted:
            try:
                seg.fd = segments.open_segment(self._dir / seg.name)
            except OSError as exc:
                report("spool_read_failed", f"spool could not open {seg.name}: {exc}")
        return seg.fd

    def _mark_done(self, seg: _Segment, size: int, records: int = 1) -> None:
        seg.done_records += records
        seg.done_bytes += size
        self._pending_bytes -= size
        self._publish()

    def _maybe_delete(self, seg: _Segment) -> bool:
        """Delete a sealed segment whose every record is done (lock held); True when the
        segment is gone (now or before)."""
        if seg.deleted:
            if not seg.busy():
                self._by_key.pop(seg.key, None)
            return True
        if seg.sealed and seg.drained() and not seg.in_corrupt:
            self._delete(seg)
            return True
        return False

    def _delete(self, seg: _Segment) -> None:
        if self._own.pop(seg.name, None) is not None:
            self._spooled_before += seg.records
        self._adopted.pop(seg.name, None)
        if not seg.busy():
            self._by_key.pop(seg.key, None)
        seg.deleted = True
        seg.buf = b""
        _drop_tail(seg)
        if self._sealed_tail is seg:
            self._sealed_tail = None
        self._pending_bytes -= seg.limit - seg.done_bytes
        self._publish()
        if seg.fd >= 0:
            self._dead_fds.append(seg.fd)
            seg.fd = -1
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
            seg = self._new_segment(name, adopted=True, size=size)
            try:
                seg.fd = segments.open_segment(self._dir / name)
                seg.acked, seg.ack_seq = segments.read_acked(seg.fd, size)
                seg.read_pos = seg.done_bytes = seg.acked
                seg.records = segments.count_records(seg.fd, seg.acked, size)
            except OSError as exc:
                report("spool_adopt_failed", f"spool could not read {name}: {exc}")
            with self._lock:
                self._adopted[name] = self._by_key[seg.key] = seg
                self._pending_bytes += size - seg.done_bytes
                self._dir_dirty = True
                self._maybe_delete(seg)
                if self._pending_bytes > self._max_bytes:
                    self._make_room(0)
                self._publish()

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

    def _publish(self) -> None:
        """Lock held: bring `spooled` and `spool_bytes` up to date (appends leave them)."""
        spooled = self._spooled_before + sum(s.records for s in self._own.values())
        self._stats.publish_spool(spooled=spooled, spool_bytes=self._pending_bytes)


def _fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        report("spool_fsync_failed", f"spool fsync failed: {exc}")

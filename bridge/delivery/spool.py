"""The disk spool: a write-ahead log between the request thread and the HTTP delivery engine.

An event is accepted once `append` has written it to this process's current segment (one
`os.write`, O_APPEND; the page cache survives a killed process, the fsync policy covers power
loss). The engine `read`s records, sends them, and `ack`s them; a segment is deleted once it
is no longer written and every record in it is acknowledged. Segments of dead processes are
adopted and replayed, so delivery is at least once (collectors deduplicate on `event_id`).
File names, the segment header, the record frame and adoption are described in
`bridge.delivery.segments`.

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
import math
import os
import threading
import time
import weakref
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, NewType, cast

from bridge.delivery import segments
from bridge.delivery.segments import RECORD_OVERHEAD, SEGMENT_HEADER
from bridge.diagnostics import report
from bridge.sinks.base import SinkStats

__all__ = ["Spool", "SpoolRead", "SpoolRecord"]

SEGMENT_BYTES = 4 * 1024 * 1024
READ_CHUNK = 1024 * 1024
TAIL_BYTES = 4 * 1024 * 1024  # lines kept in memory for the reader, behind the current segment
_NO_FLOOR = 1 << 62
_plus_overhead = RECORD_OVERHEAD.__add__
RESCAN_INTERVAL = 5.0
_SHIFT = 40  # a handle is (segment id << _SHIFT) | file offset
_OFFSET = (1 << _SHIFT) - 1
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC

_live_spools: weakref.WeakSet[Spool] = weakref.WeakSet()


def _reset_spools_after_fork() -> None:
    """A forked child starts every spool over at once: `append` checks nothing per call."""
    for spool in list(_live_spools):
        spool.after_fork_in_child()


os.register_at_fork(after_in_child=_reset_spools_after_fork)

SpoolRecord = NewType("SpoolRecord", int)
"""An opaque handle to one record handed out by `Spool.read` (to `ack` or `release` it)."""


class SpoolRead(NamedTuple):
    """What `Spool.read` handed out, and what the caller's append counter cannot know."""

    lines: list[bytes]
    records: list[SpoolRecord]
    """One handle per line, to `ack` or `release` it."""
    fresh: int
    """How many of the lines this spool appended itself and hands out for the first time."""
    fresh_bytes: int
    drained: bool
    """The read stopped because nothing more was readable (not on its limits)."""
    hidden: bool
    """Released or adopted records are still waiting: read again without new appends."""


@dataclass(slots=True, eq=False)
class _Run:
    """Records of one segment handed out together by one `read`. An `ack` of the very list
    `read` returned settles its runs whole; anything else breaks them up into
    `_Segment.handed` first."""

    seg: _Segment
    handles: list[int]
    lines: list[bytes]
    size: int  # bytes on disk
    batch: int = 0  # the key of its read in `Spool._batches`


@dataclass(slots=True, eq=False)
class _Segment:
    """Bookkeeping for one segment file; guarded by `Spool._lock` (the read buffer belongs
    to the reader)."""

    name: str
    key: int  # the high bits of this segment's handles
    adopted: bool
    sealed: bool = False  # no more appends: a short record at `limit` is torn, not pending
    limit: int = SEGMENT_HEADER  # bytes known complete (appended, or the size when adopted)
    records: int = 0
    read_pos: int = SEGMENT_HEADER
    fd: int = -1  # O_RDWR: reads and ack slots; closed only by the reader
    in_corrupt: bool = False
    deleted: bool = False  # evicted or deleted; kept while records are still handed out
    buf: bytes = b""  # read ahead: the file from `buf_base`
    buf_base: int = 0
    # The lines appended from `tail_pos` on, unread from `tail_i` on: the reader takes them
    # from here instead of reading back what this process just wrote. None: read the disk.
    tail: list[bytes] | None = None
    tail_pos: int = SEGMENT_HEADER
    tail_i: int = 0
    tail_floor: int = _NO_FLOOR  # the oldest append time in the tail
    runs: list[_Run] = field(default_factory=list)  # handed out, usually one
    handed: dict[int, bytes] = field(default_factory=dict)  # handle: line, from broken runs
    released: dict[int, tuple[bytes, int]] = field(default_factory=dict)  # (line, time µs)
    done_records: int = 0  # acked, expired or damaged
    done_bytes: int = SEGMENT_HEADER
    acked: int = SEGMENT_HEADER  # the acknowledged prefix saved in the header
    ack_seq: int = 0

    def drained(self) -> bool:
        return self.read_pos >= self.limit and not self.busy() and not self.released

    def busy(self) -> bool:
        """Are any of its records handed out?"""
        return bool(self.runs or self.handed)

    def in_flight(self) -> int:
        return len(self.handed) + sum(len(run.handles) for run in self.runs)


class Spool:
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
        if not self._dir.is_dir():
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self._dir, 0o700)
        self._reset()
        _live_spools.add(self)
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

    def _new_segment(self, name: str, *, adopted: bool, size: int = SEGMENT_HEADER) -> _Segment:
        start = min(SEGMENT_HEADER, size)
        seg = _Segment(name, next(self._ids) << _SHIFT, adopted, sealed=adopted, limit=size)
        seg.read_pos = seg.done_bytes = seg.acked = start
        return seg

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
        fd = os.open(path, _WRITE_FLAGS, segments.FILE_MODE)
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

    # -- engine thread --------------------------------------------------------------------

    def read(self, max_events: int, max_bytes: int) -> SpoolRead:
        """The next lines not handed out yet, oldest first, and their handles: at most
        `max_events`, and at most `max_bytes` of lines unless a single line is larger (then
        just that one)."""
        if self._pid != os.getpid():
            self.after_fork_in_child()
        lines: list[bytes] = []
        handles: list[int] = []
        with self._reader_lock:
            if self._closed:
                return SpoolRead(lines, [], 0, 0, drained=True, hidden=False)
            self._close_dead_fds()
            if self._fsync == "never":
                self._drain_retired(fsync=False)
            if time.monotonic() >= self._next_rescan:
                self._rescan()
            with self._lock:
                order = [*self._adopted.values(), *self._own.values()]
            budget = [max_events, max_bytes, 0, 0]  # and the fresh lines and bytes taken
            self._reading = []
            cutoff = segments.NO_CUTOFF
            if math.isfinite(self._ttl_us):
                cutoff = math.ceil(self._clock() * 1_000_000 - self._ttl_us)
            for seg in order:
                if budget[0] <= 0 or (lines and budget[1] <= 0):
                    break
                if seg.released:
                    self._take_released(seg, lines, handles, budget, cutoff)
                self._read_new(seg, lines, handles, budget, cutoff)
            with self._lock:
                if self._reading:
                    key = id(handles)
                    for run in self._reading:
                        run.batch = key
                    self._batches[key] = (handles, self._reading)
                    self._reading = []
                self._publish()
                hidden = any(s.released for s in order) or any(
                    s.read_pos < s.limit for s in self._adopted.values()
                )
        drained = budget[0] > 0 and (budget[1] > 0 or not lines)
        records = cast("list[SpoolRecord]", handles)
        return SpoolRead(lines, records, budget[2], budget[3], drained, hidden)

    def _take_released(
        self, seg: _Segment, lines: list[bytes], handles: list[int], budget: list[int], cutoff: int
    ) -> None:
        expired = 0
        run = _Run(seg, [], [], 0)
        with self._lock:
            for handle in sorted(seg.released):
                line, time_us = seg.released[handle]
                if budget[0] <= 0 or (lines and len(line) > budget[1]):
                    budget[0] = 0  # keep the order: nothing newer goes out before it
                    break
                del seg.released[handle]
                if time_us < cutoff:
                    expired += 1
                    self._mark_done(seg, len(line) + RECORD_OVERHEAD)
                    continue
                run.handles.append(handle)
                run.lines.append(line)
                run.size += len(line) + RECORD_OVERHEAD
                lines.append(line)
                handles.append(handle)
                budget[0] -= 1
                budget[1] -= len(line)
            if run.handles:
                self._hand_out(run)
            self._maybe_delete(seg)
        if expired:
            self._stats.count_dropped("ttl_expired", expired)

    def _read_new(
        self, seg: _Segment, lines: list[bytes], handles: list[int], budget: list[int], cutoff: int
    ) -> None:
        need = 1  # bytes wanted in the buffer from the read position before parsing
        while budget[0] > 0 and (budget[1] > 0 or not lines):
            with self._lock:
                if seg.deleted:
                    return
                pos, limit, final, in_corrupt = seg.read_pos, seg.limit, seg.sealed, seg.in_corrupt
                if seg.tail is not None:
                    if pos == seg.tail_pos and seg.tail_floor >= cutoff:
                        self._take_tail(seg, lines, handles, budget)
                        return
                    if pos >= seg.tail_pos:
                        _drop_tail(seg)  # an old line in it: the disk path checks each age
                    else:
                        limit = seg.tail_pos  # the disk up to the tail, then the tail
                elif pos >= limit and seg is self._current and not in_corrupt:
                    seg.tail, seg.tail_pos = [], pos  # caught up: serve new lines from memory
                if pos >= limit:
                    return
                fd, buf, base = self._open(seg), seg.buf, seg.buf_base
                if fd < 0:
                    return
            if not base <= pos <= base + len(buf):
                buf, base = b"", pos
            if base + len(buf) < limit and base + len(buf) - pos < need:
                want = min(limit - pos, max(READ_CHUNK, need))
                try:
                    buf, base = os.pread(fd, want, pos), pos
                except OSError as exc:
                    report("spool_read_failed", f"spool read failed: {exc}")
                    return
                if len(buf) < want:  # the file is shorter than we knew: somebody truncated it
                    final, limit = self._shorten(seg, pos + len(buf)), pos + len(buf)
            end = base + len(buf)
            parsed = segments.parse(
                buf,
                pos - base,
                final=final and end >= limit,
                origin=seg.key + base,
                in_corrupt=in_corrupt,
                max_events=budget[0],
                max_bytes=budget[1],
                oversize_ok=not lines,
                cutoff_us=cutoff,
            )
            if not self._commit(seg, parsed, buf, base, lines, handles, budget):
                return
            if parsed.full:
                budget[0] = 0  # keep the order: nothing newer goes out before the next one
                return
            if end >= limit:
                return  # the rest is not written yet
            need = max(parsed.need, end - base - parsed.end + 1)

    def _take_tail(
        self, seg: _Segment, lines: list[bytes], handles: list[int], budget: list[int]
    ) -> None:
        """Hand out lines from the tail (lock held): C-level slices and sums, no parsing."""
        tail, first = seg.tail, seg.tail_i
        assert tail is not None
        chunk = tail[first : first + budget[0]]
        if not chunk:
            return
        full = len(chunk) == budget[0]
        taken = sum(map(len, chunk))
        if taken > budget[1]:
            sizes = list(itertools.accumulate(map(len, chunk)))
            fit = bisect_right(sizes, budget[1]) or (0 if lines else 1)
            del chunk[fit:]
            full = True
            if not chunk:
                budget[0] = 0
                return
            taken = sizes[len(chunk) - 1]
        starts = list(
            itertools.accumulate(
                map(_plus_overhead, map(len, chunk)), initial=seg.key + seg.read_pos
            )
        )
        end = starts.pop() & _OFFSET
        self._hand_out(_Run(seg, starts, chunk, end - seg.read_pos))
        seg.read_pos = seg.tail_pos = end
        seg.buf = b""
        lines += chunk
        handles += starts
        seg.tail_i = first + len(chunk)
        if seg.tail_i * 2 >= len(tail):  # drop what was read: amortized O(1) per line
            del tail[: seg.tail_i]
            seg.tail_i = 0
        budget[0] = 0 if full else budget[0] - len(chunk)
        budget[1] -= taken
        budget[2] += len(chunk)
        budget[3] += taken

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
        self,
        seg: _Segment,
        parsed: segments.Parsed,
        buf: bytes,
        base: int,
        lines: list[bytes],
        handles: list[int],
        budget: list[int],
    ) -> bool:
        """Hand out what `parse` found, unless the segment was evicted meanwhile."""
        with self._lock:
            if seg.deleted:
                return False  # evicted meanwhile: its records were counted as lost
            seg.read_pos = base + parsed.end
            seg.in_corrupt = parsed.in_corrupt
            seg.buf, seg.buf_base = (buf, base) if parsed.end < len(buf) else (b"", 0)
            if parsed.corrupt_bytes:
                # The adoption scan counted only records with an intact header.
                damaged = parsed.bad_payloads if seg.adopted else parsed.corrupt
                self._mark_done(seg, parsed.corrupt_bytes, damaged)
            if parsed.expired:
                self._mark_done(seg, parsed.expired_bytes, parsed.expired)
            if parsed.lines:
                taken = sum(map(len, parsed.lines))
                size = taken + len(parsed.lines) * RECORD_OVERHEAD
                self._hand_out(_Run(seg, parsed.handles, parsed.lines, size))
                lines += parsed.lines
                handles += parsed.handles
                budget[0] -= len(parsed.lines)
                budget[1] -= taken
                if not seg.adopted:
                    budget[2] += len(parsed.lines)
                    budget[3] += taken
            self._maybe_delete(seg)
        if parsed.corrupt:
            self._stats.count_dropped("spool_corrupt", parsed.corrupt)
            report("spool_corrupt", f"spool segment {seg.name}: skipped damaged records")
        if parsed.expired:
            self._stats.count_dropped("ttl_expired", parsed.expired)
        return True

    def ack(self, records: Sequence[SpoolRecord]) -> None:
        """Forget delivered (or dead-lettered) records, save each segment's acknowledged
        prefix in its header, and delete segments that are all done. Unknown or repeated
        handles are ignored. The list `read` returned is acked whole and cheaply: never
        change it (take a subset as a new list)."""
        if not records:
            return
        with self._lock:
            if self._closed:
                return
            entry = self._batches.pop(id(records), None)  # it holds the list: ids are unique
            if entry is not None:
                self._settle_runs(entry[1])  # the whole read: no per-record work
                return
            for seg, group in self._by_segment(records):
                self._break_runs(seg)
                popped = list(map(seg.handed.pop, group, itertools.repeat(None)))
                count = len(popped) - popped.count(None)
                if not count:
                    continue
                if seg.deleted:  # evicted: its bytes were settled then
                    self._maybe_delete(seg)
                    continue
                done = sum(map(len, filter(None, popped))) + count * RECORD_OVERHEAD
                self._mark_done(seg, done, count)
                if not self._maybe_delete(seg):
                    self._save_progress(seg)

    def release(self, records: Sequence[SpoolRecord]) -> None:
        """Put handed-out records back: a later `read` hands them out again."""
        lost = 0
        with self._lock:
            if self._closed:
                return
            for seg, group in self._by_segment(records):
                self._break_runs(seg)
                taken = [(h, seg.handed.pop(h)) for h in group if h in seg.handed]
                if seg.deleted:
                    lost += len(taken)  # its file is gone: the size cap took it
                    self._maybe_delete(seg)
                    continue
                times = self._append_times(seg, [h for h, _ in taken])
                for (handle, line), time_us in zip(taken, times, strict=True):
                    seg.released[handle] = (line, time_us)
        if lost:
            self._stats.count_dropped("spool_full", lost)

    def _hand_out(self, run: _Run) -> None:
        """Lock held: `run` is in flight (and part of the read in progress)."""
        run.seg.runs.append(run)
        self._reading.append(run)

    def _settle_runs(self, runs: list[_Run]) -> None:
        """Lock held: every record of `runs` was acknowledged."""
        touched: dict[int, _Segment] = {}
        for run in runs:
            seg = run.seg
            seg.runs.remove(run)
            if not seg.deleted:  # evicted: its bytes were settled then
                self._mark_done(seg, run.size, len(run.handles))
            touched[seg.key] = seg
        for seg in touched.values():
            if not self._maybe_delete(seg):
                self._save_progress(seg)

    def _break_runs(self, seg: _Segment) -> None:
        """Lock held: a partial ack or a release. The runs of `seg`, and of the reads they
        came with, become records in `handed`."""
        for run in list(seg.runs):
            _, runs = self._batches.pop(run.batch, (None, [run]))
            for broken in runs:
                if broken in broken.seg.runs:
                    broken.seg.runs.remove(broken)
                    broken.seg.handed.update(zip(broken.handles, broken.lines, strict=True))

    def _by_segment(self, records: Iterable[int]) -> list[tuple[_Segment, list[int]]]:
        """Handles grouped by their segment (lock held); a batch is usually one segment."""
        handles = records if isinstance(records, list) else list(records)
        if not handles:
            return []
        low, high = min(handles), max(handles)
        if low >> _SHIFT == high >> _SHIFT:
            seg = self._by_key.get(low >> _SHIFT << _SHIFT)
            return [] if seg is None else [(seg, handles)]
        groups: dict[int, list[int]] = {}
        for handle in handles:
            groups.setdefault(handle >> _SHIFT << _SHIFT, []).append(handle)
        return [(self._by_key[k], g) for k, g in groups.items() if k in self._by_key]

    def _append_times(self, seg: _Segment, handles: list[int]) -> list[int]:
        """The append times of records being released, read back from their headers (lock
        held; a failure path, so one pread of the span is fine). Unreadable: now."""
        if not handles:
            return []
        offsets = [h & _OFFSET for h in handles]
        low, high = min(offsets), max(offsets) + RECORD_OVERHEAD
        try:
            if seg.buf_base <= low and high <= seg.buf_base + len(seg.buf):
                span, base = seg.buf, seg.buf_base
            else:
                span, base = os.pread(self._open(seg), high - low, low), low
            return [segments.record_time(span, offset - base) for offset in offsets]
        except (OSError, ValueError) as exc:
            report("spool_read_failed", f"spool read failed: {exc}")
            return [int(self._clock() * 1_000_000)] * len(handles)

    def _save_progress(self, seg: _Segment) -> None:
        """Write the acknowledged prefix to the segment header when it moved (lock held)."""
        prefix = seg.read_pos
        if seg.handed:
            prefix = min(prefix, min(seg.handed) & _OFFSET)
        for run in seg.runs:
            prefix = min(prefix, run.handles[0] & _OFFSET)
        if seg.released:
            prefix = min(prefix, min(seg.released) & _OFFSET)
        if prefix <= seg.acked or self._open(seg) < 0:
            return
        at, slot = segments.ack_slot(prefix, seg.ack_seq + 1)
        try:
            os.pwrite(seg.fd, slot, at)
        except OSError as exc:
            report("spool_ack_failed", f"spool could not save acknowledgements: {exc}")
            return
        seg.acked, seg.ack_seq = prefix, seg.ack_seq + 1

    def _open(self, seg: _Segment) -> int:
        """The segment's read/ack fd, opened on first use (lock held); -1 if it cannot be."""
        if seg.fd < 0 and not seg.deleted:
            try:
                seg.fd = os.open(self._dir / seg.name, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                report("spool_read_failed", f"spool could not open {seg.name}: {exc}")
        return seg.fd

    def _mark_done(self, seg: _Segment, size: int, records: int = 1) -> None:
        seg.done_records += records
        seg.done_bytes += size
        self._pending_bytes -= size
        self._stats.spool_bytes = self._pending_bytes

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
        self._stats.spool_bytes = self._pending_bytes
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
                seg.fd = os.open(self._dir / name, os.O_RDWR | os.O_CLOEXEC)
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

    def _publish(self) -> None:
        """Lock held: bring `spooled` and `spool_bytes` up to date (appends leave them)."""
        stats = self._stats
        stats.spool_bytes = self._pending_bytes
        stats.spooled = self._spooled_before + sum(s.records for s in self._own.values())

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


def _drop_tail(seg: _Segment) -> None:
    seg.tail, seg.tail_i, seg.tail_floor = None, 0, _NO_FLOOR


def _fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        report("spool_fsync_failed", f"spool fsync failed: {exc}")

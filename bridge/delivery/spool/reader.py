"""The spool's reader: hands out records in runs and settles their acknowledgements.

Lines this process appended are also kept in memory behind the segment being written (its
"tail"), so a reader that keeps up hands them out with list slices and never reads back what
it just wrote; anything else (adopted segments, a reader left behind) is parsed from disk
(`records`) in one pass over a 1 MiB buffer. Each segment's records go out as one `Run`;
an `ack` of the very list `read` returned settles its runs whole, and only a partial ack or a
release breaks them up record by record (`SegmentTable.break_runs`). Everything here belongs
to the engine thread; the reader lock keeps a second reader out.
"""

from __future__ import annotations

import itertools
import math
import os
import struct
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import NamedTuple, cast

from bridge.delivery.spool import records
from bridge.delivery.spool.records import RECORD_OVERHEAD
from bridge.delivery.spool.segment import OFFSET, Run, Segment, SpoolRecord
from bridge.delivery.spool.table import SegmentTable
from bridge.diagnostics import report
from bridge.stats import SinkStats

__all__ = ["READ_CHUNK", "SpoolRead", "SpoolReader"]

READ_CHUNK = 1024 * 1024
_plus_overhead = RECORD_OVERHEAD.__add__


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


class SpoolReader:
    """`read`, `ack` and `release`, and the periodic adoption of dead owners' segments."""

    def __init__(
        self,
        table: SegmentTable,
        *,
        event_ttl: float,
        stats: SinkStats,
        clock: Callable[[], float],
        rescan_interval: float,
    ) -> None:
        self._table = table
        self._ttl_us = event_ttl * 1_000_000
        self._stats = stats
        self._clock = clock
        self._rescan_interval = rescan_interval
        self.reset()

    def reset(self) -> None:
        """Fresh state: at construction and in a forked child."""
        self.lock = threading.Lock()  # one reader at a time; only it closes read fds
        self._reading: list[Run] = []  # the runs of the read in progress (reader lock)
        self._next_rescan = 0.0

    def rescan(self) -> None:
        """Adopt dead owners' segments now (reader lock held, or in the constructor)."""
        self._next_rescan = time.monotonic() + self._rescan_interval
        self._table.adopt_orphans()

    def read(self, max_events: int, max_bytes: int) -> SpoolRead:
        """The next lines not handed out yet, oldest first, and their handles: at most
        `max_events`, and at most `max_bytes` of lines unless a single line is larger (then
        just that one)."""
        table = self._table
        lines: list[bytes] = []
        handles: list[int] = []
        with self.lock:
            if table.closed:
                return SpoolRead(lines, [], 0, 0, drained=True, hidden=False)
            table.close_dead_fds()
            if time.monotonic() >= self._next_rescan:
                self.rescan()
            with table.lock:
                order = [*table.adopted.values(), *table.own.values()]
            budget = [max_events, max_bytes, 0, 0]  # and the fresh lines and bytes taken
            self._reading = []
            cutoff = records.NO_CUTOFF
            if math.isfinite(self._ttl_us):
                cutoff = math.ceil(self._clock() * 1_000_000 - self._ttl_us)
            for seg in order:
                if budget[0] <= 0 or (lines and budget[1] <= 0):
                    break
                if seg.released:
                    self._take_released(seg, lines, handles, budget, cutoff)
                self._read_new(seg, lines, handles, budget, cutoff)
            with table.lock:
                if self._reading:
                    key = id(handles)
                    for run in self._reading:
                        run.batch = key
                    table.batches[key] = (handles, self._reading)
                    self._reading = []
                table.publish()
                hidden = any(s.released for s in order) or any(
                    s.read_pos < s.limit for s in table.adopted.values()
                )
        drained = budget[0] > 0 and (budget[1] > 0 or not lines)
        got = cast("list[SpoolRecord]", handles)
        return SpoolRead(lines, got, budget[2], budget[3], drained, hidden)

    def _take_released(
        self, seg: Segment, lines: list[bytes], handles: list[int], budget: list[int], cutoff: int
    ) -> None:
        expired = 0
        run = Run(seg, [], [], 0)
        with self._table.lock:
            for handle in sorted(seg.released):
                line, time_us = seg.released[handle]
                if budget[0] <= 0 or (lines and len(line) > budget[1]):
                    budget[0] = 0  # keep the order: nothing newer goes out before it
                    break
                del seg.released[handle]
                if time_us < cutoff:
                    expired += 1
                    self._table.mark_done(seg, len(line) + RECORD_OVERHEAD)
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
            self._table.maybe_delete(seg)
        if expired:
            self._stats.count_dropped("ttl_expired", expired)

    def _read_new(
        self, seg: Segment, lines: list[bytes], handles: list[int], budget: list[int], cutoff: int
    ) -> None:
        need = 1  # bytes wanted in the buffer from the read position before parsing
        while budget[0] > 0 and (budget[1] > 0 or not lines):
            with self._table.lock:
                if seg.deleted:
                    return
                pos, limit, final, in_corrupt = seg.read_pos, seg.limit, seg.sealed, seg.in_corrupt
                if seg.tail is not None:
                    if pos == seg.tail_pos and seg.tail_floor >= cutoff:
                        self._take_tail(seg, lines, handles, budget)
                        return
                    if pos >= seg.tail_pos:
                        seg.drop_tail()  # an old line in it: the disk path checks each age
                    else:
                        limit = seg.tail_pos  # the disk up to the tail, then the tail
                elif pos >= limit and seg is self._table.writing and not in_corrupt:
                    seg.tail, seg.tail_pos = [], pos  # caught up: serve new lines from memory
                if pos >= limit:
                    return
                fd, buf, base = self._table.open(seg), seg.buf, seg.buf_base
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
            parsed = records.parse(
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
        self, seg: Segment, lines: list[bytes], handles: list[int], budget: list[int]
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
        end = starts.pop() & OFFSET
        self._hand_out(Run(seg, starts, chunk, end - seg.read_pos))
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

    def _shorten(self, seg: Segment, end: int) -> bool:
        """Believe the file's real end; what is cut off is gone (and a torn tail is counted)."""
        with self._table.lock:
            return self._table.shorten(seg, end)

    def _commit(
        self,
        seg: Segment,
        parsed: records.Parsed,
        buf: bytes,
        base: int,
        lines: list[bytes],
        handles: list[int],
        budget: list[int],
    ) -> bool:
        """Hand out what `parse` found, unless the segment was evicted meanwhile."""
        with self._table.lock:
            if seg.deleted:
                return False  # evicted meanwhile: its records were counted as lost
            seg.read_pos = base + parsed.end
            seg.in_corrupt = parsed.in_corrupt
            seg.buf, seg.buf_base = (buf, base) if parsed.end < len(buf) else (b"", 0)
            if parsed.corrupt_bytes:
                # The adoption scan counted only records with an intact header.
                damaged = parsed.bad_payloads if seg.adopted else parsed.corrupt
                self._table.mark_done(seg, parsed.corrupt_bytes, damaged)
            if parsed.expired:
                self._table.mark_done(seg, parsed.expired_bytes, parsed.expired)
            if parsed.lines:
                taken = sum(map(len, parsed.lines))
                size = taken + len(parsed.lines) * RECORD_OVERHEAD
                self._hand_out(Run(seg, parsed.handles, parsed.lines, size))
                lines += parsed.lines
                handles += parsed.handles
                budget[0] -= len(parsed.lines)
                budget[1] -= taken
                if not seg.adopted:
                    budget[2] += len(parsed.lines)
                    budget[3] += taken
            self._table.maybe_delete(seg)
        if parsed.corrupt:
            self._stats.count_dropped("spool_corrupt", parsed.corrupt)
            report("spool_corrupt", f"spool segment {seg.name}: skipped damaged records")
        if parsed.expired:
            self._stats.count_dropped("ttl_expired", parsed.expired)
        return True

    def _hand_out(self, run: Run) -> None:
        """Lock held: `run` is in flight (and part of the read in progress)."""
        run.seg.runs.append(run)
        self._reading.append(run)

    # -- acknowledgements -------------------------------------------------------------------

    def ack(self, handles: Sequence[SpoolRecord]) -> None:
        """Forget delivered (or dead-lettered) records, save each segment's acknowledged
        prefix in its header, and delete segments that are all done. Unknown or repeated
        handles are ignored. The list `read` returned is acked whole and cheaply: never
        change it (take a subset as a new list)."""
        if not handles:
            return
        table = self._table
        with table.lock:
            if table.closed:
                return
            entry = table.batches.pop(id(handles), None)  # it holds the list: ids are unique
            if entry is not None:
                table.settle_runs(entry[1])  # the whole read: no per-record work
                return
            for seg, group in table.by_segment(handles):
                table.break_runs(seg)
                popped = list(map(seg.handed.pop, group, itertools.repeat(None)))
                count = len(popped) - popped.count(None)
                if not count:
                    continue
                if seg.deleted:  # evicted: its bytes were settled then
                    table.maybe_delete(seg)
                    continue
                done = sum(map(len, filter(None, popped))) + count * RECORD_OVERHEAD
                table.mark_done(seg, done, count)
                if not table.maybe_delete(seg):
                    table.save_progress(seg)

    def release(self, handles: Sequence[SpoolRecord]) -> None:
        """Put handed-out records back: a later `read` hands them out again."""
        table = self._table
        lost = 0
        with table.lock:
            if table.closed:
                return
            for seg, group in table.by_segment(handles):
                table.break_runs(seg)
                taken = [(h, seg.handed.pop(h)) for h in group if h in seg.handed]
                if seg.deleted:
                    lost += len(taken)  # its file is gone: the size cap took it
                    table.maybe_delete(seg)
                    continue
                times = self._append_times(seg, [h for h, _ in taken])
                for (handle, line), time_us in zip(taken, times, strict=True):
                    seg.released[handle] = (line, time_us)
        if lost:
            self._stats.count_dropped("spool_full", lost)

    def _append_times(self, seg: Segment, handles: list[int]) -> list[int]:
        """The append times of records being released, read back from their headers (table
        lock held; a failure path, so one pread of the span is fine). Unreadable: now."""
        if not handles:
            return []
        offsets = [h & OFFSET for h in handles]
        low, high = min(offsets), max(offsets) + RECORD_OVERHEAD
        try:
            if seg.buf_base <= low and high <= seg.buf_base + len(seg.buf):
                span, base = seg.buf, seg.buf_base
            else:
                span, base = os.pread(self._table.open(seg), high - low, low), low
            return [records.record_time(span, offset - base) for offset in offsets]
        except (OSError, ValueError, struct.error) as exc:  # struct.error: the file was cut
            report("spool_read_failed", f"spool read failed: {exc}")
            return [int(self._clock() * 1_000_000)] * len(handles)

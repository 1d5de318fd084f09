"""The spool's read side: handing out records in runs, from the in-memory tail or the disk.

Lines this process appended are also kept in memory behind the current segment (the
"tail"), so a reader that keeps up hands them out with list slices and never reads back
what it just wrote; anything else (adopted segments, a reader left behind) is parsed from
disk (`bridge.delivery.records`) in one pass over a 1 MiB buffer. Each segment's records
go out as one `_Run`, which `spoolack` settles. Part of `Spool` (`bridge.delivery.spool`),
built on the segment table (`spooltable`).
"""

from __future__ import annotations

import itertools
import math
import os
import time
from bisect import bisect_right
from typing import TYPE_CHECKING, cast

from bridge.delivery import segments
from bridge.delivery.segments import RECORD_OVERHEAD
from bridge.delivery.spooltable import _SpoolTable
from bridge.delivery.spooltypes import (
    _OFFSET,
    SpoolRead,
    SpoolRecord,
    _drop_tail,
    _Run,
    _Segment,
)
from bridge.diagnostics import report

READ_CHUNK = 1024 * 1024
_plus_overhead = RECORD_OVERHEAD.__add__


class _SpoolReader(_SpoolTable):
    """`read` and what it needs; `read` belongs to the engine thread."""

    if TYPE_CHECKING:

        def after_fork_in_child(self) -> None: ...

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

    def _hand_out(self, run: _Run) -> None:
        """Lock held: `run` is in flight (and part of the read in progress)."""
        run.seg.runs.append(run)
        self._reading.append(run)

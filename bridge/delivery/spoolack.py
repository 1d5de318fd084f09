"""The spool's acknowledgements: settling or releasing what `read` handed out.

An `ack` of the very list `read` returned settles its runs whole; a partial ack or a
release breaks them up record by record first. Progress is saved as each segment's
acknowledged prefix in its header (`bridge.delivery.segheader`). Part of `Spool`
(`bridge.delivery.spool`), built on the segment table (`spooltable`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence

from bridge.delivery import segments
from bridge.delivery.segments import RECORD_OVERHEAD
from bridge.delivery.spooltable import _SpoolTable
from bridge.delivery.spooltypes import _OFFSET, _SHIFT, SpoolRecord, _Run, _Segment
from bridge.diagnostics import report


class _SpoolAcks(_SpoolTable):
    """`ack` and `release`; both belong to the engine thread."""

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

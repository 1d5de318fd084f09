"""The spool's shared bookkeeping: which segments exist, their bytes and records, the runs
handed out from them, the bytes pending under the size cap; eviction, deletion, adoption.

The writer (`writer`) and the reader (`reader`) are each given the one `SegmentTable` of
their `Spool` (`facade`). Three locks, always taken in this order, never the other way:

    reader lock  (`SpoolReader.lock`) one reader at a time: `read`, the adoption rescan and
                 `close`; only its holder closes read fds and touches read buffers
    sync lock    (`SpoolWriter.sync_lock`) fsyncs and closes the write fds of rolled segments
                 while no one else can close them
    table lock   (`SegmentTable.lock`) every field here and in each `Segment`; held briefly
                 (an append's one write, a run's bookkeeping), never during reads or fsyncs

Pending bytes are kept as `base` plus the `limit` of the segment being written, so an append
moves them by growing that segment's `limit` and nothing else; whenever `base` changes, the
segment's `end` (where an append must stop and ask the writer's slow path) moves with it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from bridge import overflow
from bridge.delivery.spool import header, owners, records
from bridge.delivery.spool.header import SEGMENT_HEADER
from bridge.delivery.spool.segment import OFFSET, SHIFT, Run, Segment
from bridge.diagnostics import report
from bridge.stats import SinkStats

__all__ = ["SegmentTable"]


class SegmentTable:
    """This spool's segments (its own and adopted ones) and their fds; a `Room` for
    `bridge.overflow.make_room` under the "drop_oldest" policy. Every method expects the
    table lock held, except where its docstring says otherwise."""

    def __init__(
        self, directory: Path, *, max_bytes: int, segment_bytes: int, stats: SinkStats
    ) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.stats = stats
        self.reset("", closed=True)

    def reset(self, owner: str, *, closed: bool = False) -> None:
        """Fresh state for `owner`: at construction and in a forked child."""
        self.lock = threading.Lock()
        self.owner = owner
        self.closed = closed
        self.seq = 0
        self.ids = itertools.count(1)
        self.adopted: dict[str, Segment] = {}
        self.own: dict[str, Segment] = {}
        self.by_key: dict[int, Segment] = {}  # live, and deleted ones with records handed out
        self.batches: dict[int, tuple[list[int], list[Run]]] = {}  # id(handles): runs
        self.writing: Segment | None = None  # the segment the writer appends to
        self.sealed_tail: Segment | None = None  # the last sealed segment, if it has a tail
        self.dead_fds: list[int] = []  # read fds of deleted segments, closed by the reader
        self.base = 0  # pending bytes, less the `limit` of the segment being written
        self.spooled_before = 0  # records appended to own segments deleted since
        self.dir_dirty = False

    @property
    def pending_bytes(self) -> int:
        """Bytes on disk not acknowledged yet. Exact under the lock; without it, at worst a
        moment behind (`base` is read before the segment being written)."""
        base, seg = self.base, self.writing
        return base + (seg.limit if seg is not None else 0)

    def _move_base(self, delta: int) -> None:
        self.base += delta
        seg = self.writing
        if seg is not None:
            seg.end = min(self.segment_bytes, self.max_bytes - self.base)

    # -- segments ---------------------------------------------------------------------------

    def new_segment(self, name: str, *, adopted: bool, size: int = SEGMENT_HEADER) -> Segment:
        start = min(SEGMENT_HEADER, size)
        seg = Segment(name, next(self.ids) << SHIFT, adopted, sealed=adopted, limit=size)
        seg.read_pos = seg.done_bytes = seg.acked = start
        return seg

    def start_segment(self, name: str) -> Segment:
        """A new own segment (its header written), now the one being written."""
        seg = self.new_segment(name, adopted=False)
        seg.tail = []
        self.own[name] = self.by_key[seg.key] = seg
        self.base -= seg.done_bytes  # before it counts: an unlocked reader may only lag
        self.writing = seg
        self._move_base(0)  # its `end`
        self.dir_dirty = True
        return seg

    def seal_writing(self) -> None:
        """No more appends to the segment being written; the writer rolls before its next
        append (its `end` is 0)."""
        seg = self.writing
        if seg is None:
            return
        self.writing = None  # before `base` grows: an unlocked reader may only lag
        self.base += seg.limit
        seg.sealed = True
        seg.end = 0
        # Its tail stays until read (the reader is usually right behind); one such, at most.
        if self.sealed_tail is not None:
            self.sealed_tail.drop_tail()
        self.sealed_tail = seg if seg.tail is not None else None
        self.maybe_delete(seg)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def next_seq_locked(self) -> int:
        """`next_seq`, taking the lock (for `owners.claim_orphans`)."""
        with self.lock:
            return self.next_seq()

    def open(self, seg: Segment) -> int:
        """The segment's read/ack fd, opened on first use; -1 if it cannot be."""
        if seg.fd < 0 and not seg.deleted:
            try:
                seg.fd = owners.open_segment(self.dir / seg.name)
            except OSError as exc:
                report("spool_read_failed", f"spool could not open {seg.name}: {exc}")
        return seg.fd

    def mark_done(self, seg: Segment, size: int, count: int = 1) -> None:
        seg.done_records += count
        seg.done_bytes += size
        self._move_base(-size)
        self.publish()

    def shorten(self, seg: Segment, end: int) -> bool:
        """Believe the file's real end: what is cut off is gone (and a torn tail is counted
        when read). Whether the segment is sealed now."""
        if seg is self.writing:
            self.seal_writing()
        if seg.limit > end:
            self._move_base(end - seg.limit)
            seg.limit = end
        return seg.sealed

    def maybe_delete(self, seg: Segment) -> bool:
        """Delete a sealed segment whose every record is done; True when the segment is gone
        (now or before)."""
        if seg.deleted:
            if not seg.busy():
                self.by_key.pop(seg.key, None)
            return True
        if seg.sealed and seg.drained() and not seg.in_corrupt:
            self._delete(seg)
            return True
        return False

    def _delete(self, seg: Segment) -> None:
        if self.own.pop(seg.name, None) is not None:
            self.spooled_before += seg.records
        self.adopted.pop(seg.name, None)
        if not seg.busy():
            self.by_key.pop(seg.key, None)
        seg.deleted = True
        seg.buf = b""
        seg.drop_tail()
        if self.sealed_tail is seg:
            self.sealed_tail = None
        self._move_base(seg.done_bytes - seg.limit)
        self.publish()
        if seg.fd >= 0:
            self.dead_fds.append(seg.fd)
            seg.fd = -1
        try:
            os.unlink(self.dir / seg.name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            report("spool_delete_failed", f"spool could not delete {seg.name}: {exc}")

    # -- the size cap: a `bridge.overflow.Room` ---------------------------------------------

    def make_room(self, size: int) -> bool:
        """Evict the oldest segments until `size` more bytes fit under the cap."""
        return size <= self.max_bytes and overflow.make_room(self, size, "drop_oldest")

    def fits(self, size: int) -> bool:
        return self.pending_bytes + size <= self.max_bytes

    def evict_oldest(self) -> bool:
        """Evict the oldest segment, sparing those with records handed out while others are
        left, and the one being written until it is the last."""
        writing = self.writing
        candidates = [s for s in (*self.adopted.values(), *self.own.values()) if s is not writing]
        idle = [s for s in candidates if not s.busy()]
        if idle or candidates:
            self._evict((idle or candidates)[0])
            return True
        if writing is not None and writing.records:
            self.seal_writing()
            if not writing.deleted:
                self._evict(writing)
            return True
        return False

    def wait_for_room(self, remaining: float) -> bool:
        return False  # the spool's consumer is the delivery worker: nobody to wait for here

    def _evict(self, seg: Segment) -> None:
        lost = max(0, seg.records - seg.done_records - seg.in_flight())
        if lost:
            self.stats.count_dropped("spool_full", lost)
            report("spool_full", f"spool over {self.max_bytes} bytes: dropped the oldest events")
        seg.released.clear()
        self._delete(seg)

    # -- adoption ---------------------------------------------------------------------------

    def adopt_orphans(self) -> None:
        """Adopt the segments of dead owners (lock NOT held: reader lock held, or in the
        constructor), counting the records after their acknowledged prefix."""
        with self.lock:
            owner = self.owner
        try:
            claimed = owners.claim_orphans(self.dir, owner, self.next_seq_locked)
        except OSError as exc:
            report("spool_adopt_failed", f"spool could not adopt segments: {exc}")
            return
        for name, size in claimed:
            seg = self.new_segment(name, adopted=True, size=size)
            try:
                seg.fd = owners.open_segment(self.dir / name)
                seg.acked, seg.ack_seq = header.read_acked(seg.fd, size)
                seg.read_pos = seg.done_bytes = seg.acked
                seg.records = records.count_records(seg.fd, seg.acked, size)
            except OSError as exc:
                report("spool_adopt_failed", f"spool could not read {name}: {exc}")
            with self.lock:
                self.adopted[name] = self.by_key[seg.key] = seg
                self._move_base(size - seg.done_bytes)
                self.dir_dirty = True
                self.maybe_delete(seg)
                self.make_room(0)
                self.publish()

    # -- settling runs ----------------------------------------------------------------------

    def settle_runs(self, runs: list[Run]) -> None:
        """Every record of `runs` was acknowledged."""
        touched: dict[int, Segment] = {}
        for run in runs:
            seg = run.seg
            seg.runs.remove(run)
            if not seg.deleted:  # evicted: its bytes were settled then
                self.mark_done(seg, run.size, len(run.handles))
            touched[seg.key] = seg
        for seg in touched.values():
            if not self.maybe_delete(seg):
                self.save_progress(seg)

    def break_runs(self, seg: Segment) -> None:
        """A partial ack or a release. The runs of `seg`, and of the reads they came with,
        become records in `handed`."""
        for run in list(seg.runs):
            _, runs = self.batches.pop(run.batch, (None, [run]))
            for broken in runs:
                if broken in broken.seg.runs:
                    broken.seg.runs.remove(broken)
                    broken.seg.handed.update(zip(broken.handles, broken.lines, strict=True))

    def by_segment(self, handles: Iterable[int]) -> list[tuple[Segment, list[int]]]:
        """Handles grouped by their segment; a batch is usually one segment."""
        handles = handles if isinstance(handles, list) else list(handles)
        if not handles:
            return []
        low, high = min(handles), max(handles)
        if low >> SHIFT == high >> SHIFT:
            seg = self.by_key.get(low >> SHIFT << SHIFT)
            return [] if seg is None else [(seg, handles)]
        groups: dict[int, list[int]] = {}
        for handle in handles:
            groups.setdefault(handle >> SHIFT << SHIFT, []).append(handle)
        return [(self.by_key[k], g) for k, g in groups.items() if k in self.by_key]

    def save_progress(self, seg: Segment) -> None:
        """Write the acknowledged prefix to the segment header when it moved."""
        prefix = seg.read_pos
        if seg.handed:
            prefix = min(prefix, min(seg.handed) & OFFSET)
        for run in seg.runs:
            prefix = min(prefix, run.handles[0] & OFFSET)
        if seg.released:
            prefix = min(prefix, min(seg.released) & OFFSET)
        if prefix <= seg.acked or self.open(seg) < 0:
            return
        at, slot = header.ack_slot(prefix, seg.ack_seq + 1)
        try:
            os.pwrite(seg.fd, slot, at)
        except OSError as exc:
            report("spool_ack_failed", f"spool could not save acknowledgements: {exc}")
            return
        seg.acked, seg.ack_seq = prefix, seg.ack_seq + 1

    # -- counting and closing ---------------------------------------------------------------

    def publish(self) -> None:
        """Bring `spooled` and `spool_bytes` up to date (appends leave them)."""
        self.stats.publish_spool(spooled=self.appended(), spool_bytes=self.pending_bytes)

    def appended(self) -> int:
        return self.spooled_before + sum(s.records for s in self.own.values())

    def pending_events(self) -> int:
        return sum(
            max(0, s.records - s.done_records) for s in (*self.adopted.values(), *self.own.values())
        )

    def all_fds(self) -> list[int]:
        """Every read fd (a forked child closes them; lock not needed there)."""
        segs = (*self.adopted.values(), *self.own.values())
        return [*self.dead_fds, *(s.fd for s in segs if s.fd >= 0)]

    def forget_all(self) -> tuple[bool, list[int]]:
        """At close: forget every segment (they stay on disk); whether any was left, and
        the read fds to close."""
        remaining = [*self.adopted.values(), *self.own.values()]
        fds, self.dead_fds = self.dead_fds, []
        fds += [s.fd for s in remaining if s.fd >= 0]
        for seg in remaining:
            seg.fd = -1
        self.adopted.clear()
        self.own.clear()
        self.by_key.clear()
        self.batches.clear()
        return bool(remaining), fds

    def close_dead_fds(self) -> None:
        """Close the read fds of deleted segments (lock NOT held; the reader's job)."""
        with self.lock:
            dead, self.dead_fds = self.dead_fds, []
        for fd in dead:
            with contextlib.suppress(OSError):
                os.close(fd)

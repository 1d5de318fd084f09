"""One segment's bookkeeping, the runs of records handed out from it, and record handles.

Plain data shared by the spool's bookkeeping (`table`), writer and reader: every field is
guarded by the bookkeeping lock, except the read buffer (`buf`), which belongs to the reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NewType

from bridge.delivery.spool.header import SEGMENT_HEADER

__all__ = ["OFFSET", "SHIFT", "Run", "Segment", "SpoolRecord"]

NO_FLOOR = 1 << 62
SHIFT = 40  # a handle is (segment key) | file offset; a segment key is its id << SHIFT
OFFSET = (1 << SHIFT) - 1

SpoolRecord = NewType("SpoolRecord", int)
"""An opaque handle to one record handed out by `Spool.read` (to `ack` or `release` it)."""


@dataclass(slots=True, eq=False)
class Run:
    """Records of one segment handed out together by one `read`. An `ack` of the very list
    `read` returned settles its runs whole; anything else breaks them up into
    `Segment.handed` first."""

    seg: Segment
    handles: list[int]
    lines: list[bytes]
    size: int  # bytes on disk
    batch: int = 0  # the key of its read in `SegmentTable.batches`


@dataclass(slots=True, eq=False)
class Segment:
    """Bookkeeping for one segment file."""

    name: str
    key: int  # the high bits of this segment's handles
    adopted: bool
    sealed: bool = False  # no more appends: a short record at `limit` is torn, not pending
    limit: int = SEGMENT_HEADER  # bytes known complete (appended, or the size when adopted)
    # While this is the segment being written: the `limit` an append may not pass (the
    # segment size, or the room left under the size cap, whichever is less). The bookkeeping
    # keeps it current, so `append` compares one number; 0 once sealed.
    end: int = 0
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
    tail_floor: int = NO_FLOOR  # the oldest append time in the tail
    runs: list[Run] = field(default_factory=list)  # handed out, usually one
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

    def drop_tail(self) -> None:
        """Forget the in-memory tail: the reader reads these lines from the disk."""
        self.tail, self.tail_i, self.tail_floor = None, 0, NO_FLOOR

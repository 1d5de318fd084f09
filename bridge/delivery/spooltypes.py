"""The spool's bookkeeping records: handles, what a read returns, segments and runs.

Shared by the parts of `Spool` (`bridge.delivery.spool`): the segment table
(`spooltable`), the read side (`spoolread`) and acknowledgements (`spoolack`). Plain data:
every field is guarded by the owning spool's lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, NewType

from bridge.delivery.segments import SEGMENT_HEADER

__all__ = ["SpoolRead", "SpoolRecord"]

_NO_FLOOR = 1 << 62
_SHIFT = 40  # a handle is (segment id << _SHIFT) | file offset
_OFFSET = (1 << _SHIFT) - 1

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


def _drop_tail(seg: _Segment) -> None:
    seg.tail, seg.tail_i, seg.tail_floor = None, 0, _NO_FLOOR

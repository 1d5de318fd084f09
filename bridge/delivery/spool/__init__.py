"""The disk spool: a write-ahead log between the request thread and the HTTP delivery engine.

Design
======

What is on disk. One directory (0700) that every process of a deployment may share. Each
`Spool` is an owner, `{pid}-{8 hex digits}`, that holds `flock` on `{owner}.lock` for its
lifetime and appends to its own segments, `{owner}.{seq:010d}.seg` (files 0600, O_APPEND,
every file opened with O_NOFOLLOW). A segment is a 40-byte header (`header`: magic, format
version, two slots for the acknowledged prefix) followed by records (`records`: a 20-byte
header with magic, payload length, append time in µs and the length again with its bits
flipped; the line; a CRC32 trailer seeded so that a run of intact records checks with one
CRC). A segment rolls at `segment_bytes` (4 MiB, or max_bytes / 8 if that is smaller).

When a record counts as accepted. Once `append` returned True: its record was written to the
owner's current segment with one `os.write` (`append_many`: a request's records in one write,
counted as accepted once it returned). The page cache survives a killed process; the fsync
policy covers power loss ("never", "batch": before each send, or every N seconds). A failed
write is undone and counted `spool_write_failed` (the caller may fall back); after a short
write of several records the whole ones are kept and the file is cut right after them, so a
segment always ends at a record boundary.

Delivery. The engine `read`s records (handed out per segment as runs, with `SpoolRecord`
handles: segment key | file offset), sends them, and `ack`s or `release`s them. An ack moves
the segment's acknowledged prefix (every record before that offset is done) into one of its
header's slots with one pwrite per call; a segment is deleted once it is sealed (no longer
written) and every record in it is done. Lines this process appended are also kept in memory
behind the current segment, so a reader that keeps up never reads back what it just wrote.

What a crash leaves, and what is replayed. The segments, the owner's lock file (now unlocked
by the kernel), at worst a torn last record (skipped, counted `spool_corrupt`) or a torn ack
slot (the other, older slot wins). The next owner replays every record after the saved
prefix: the batch in flight, and any batch acknowledged out of order ahead of it. A record
may be sent twice, never skipped: delivery is at least once (collectors deduplicate on
`event_id`).

Adoption of a dead worker's segments (`owners`). At start, and on a read every
`rescan_interval` seconds, a spool takes (non-blocking) the flock of every owner's lock file
that nobody holds, renames each of that owner's segments to a name of its own (the rename is
the claim: exactly one process gets each segment, a crash halfway leaves each under one name)
and removes the lock file. A live process's lock file is never deleted: it is how siblings
know that it, and its segments, are alive. An adopted segment is read from its acknowledged
prefix; its records are counted first (headers only), so that the size cap counts its
losses exactly.

What is counted as lost, and how: in `SinkStats.dropped_by_reason`, never silently.
`spool_write_failed` (the write failed, or the spool is closed); `spool_full` (the size cap:
`bridge.overflow.make_room` with "drop_oldest" evicts the oldest segments, those with records
handed out last; their records in flight count only if they are released, not if acked; a
line larger than the cap is refused); `spool_corrupt` (a CRC failure, a torn record) and
`ttl_expired` (older than `event_ttl` when read or re-read). `SinkStats.spooled` and
`spool_bytes` are published by reads and `pending_events()`, never by `append`.

Threads. `append` runs on any (request) thread; everything else on the engine thread. The
three locks and their order are described in `table`. A forked child closes the parent's fds
without unlocking and starts over as a new owner (`bridge.forking`).

Modules
=======

    facade.py   Spool: composes the parts below; construction, close, the fork reset
    writer.py   SpoolWriter: append (the request thread), rolling segments, fsync
    reader.py   SpoolReader: read in runs, ack, release; SpoolRead
    table.py    SegmentTable: the bookkeeping shared by both, the size cap, adoption, locks
    segment.py  Segment and Run (per-segment bookkeeping), SpoolRecord handles
    records.py  the record frame: encoding, parsing (one CRC per run), counting
    header.py   the segment header: format version and acknowledgement slots
    owners.py   file names, owners' lock files, claiming dead owners' segments
"""

from bridge.delivery.spool.facade import Spool
from bridge.delivery.spool.reader import SpoolRead
from bridge.delivery.spool.records import RECORD_OVERHEAD
from bridge.delivery.spool.segment import SpoolRecord

__all__ = ["RECORD_OVERHEAD", "Spool", "SpoolRead", "SpoolRecord"]

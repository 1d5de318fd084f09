"""The spool's on-disk layout, in one namespace: what must agree between a process that
writes a spool directory and the one that later replays it.

`bridge.delivery.spool` keeps the in-memory bookkeeping and reaches the disk format only
through this module, which re-exports three parts that know nothing of each other:

owners.py     file names, owners' lock files, adopting dead owners' segments
segheader.py  the segment header: format version and the acknowledged-prefix slots
records.py    the record frame: encoding, parsing (one CRC per run), counting
"""

from __future__ import annotations

from bridge.delivery.owners import (
    DIR_MODE,
    FILE_MODE,
    claim_orphans,
    open_segment,
    register_owner,
    segment_name,
)
from bridge.delivery.records import (
    HEADER_SIZE,
    NO_CUTOFF,
    RECORD_OVERHEAD,
    Parsed,
    count_records,
    encode_record,
    parse,
    record_time,
)
from bridge.delivery.segheader import SEGMENT_HEADER, ack_slot, new_segment_header, read_acked

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "HEADER_SIZE",
    "NO_CUTOFF",
    "RECORD_OVERHEAD",
    "SEGMENT_HEADER",
    "Parsed",
    "ack_slot",
    "claim_orphans",
    "count_records",
    "encode_record",
    "new_segment_header",
    "open_segment",
    "parse",
    "read_acked",
    "record_time",
    "register_owner",
    "segment_name",
]

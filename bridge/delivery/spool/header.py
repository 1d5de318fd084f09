"""The segment header: format magic and version, and the two acknowledgement slots.

Pure functions of bytes (and one of a file, `read_acked`); `records` frames what follows the
header.

A segment starts with a 40-byte header, written once when the segment is created:

    struct "<4sI":  magic b"FSBs", format version 2
    two slots "<QII": acknowledged prefix (file offset), sequence, CRC32 of the first 12 bytes

The slots record how far the segment is acknowledged: every record before that offset was
delivered (or dead-lettered, expired, damaged). The reader rewrites one slot with one pwrite
per `ack` call, alternating slots, and a process that adopts the segment starts reading there.
A torn slot fails its CRC and the other slot (an older, smaller offset) wins: a crash can
make the spool send a record twice, never skip one.
"""

from __future__ import annotations

import os
import struct
import zlib

__all__ = ["SEGMENT_HEADER", "ack_slot", "new_segment_header", "read_acked"]

FILE_MAGIC = b"FSBs"
FORMAT_VERSION = 2
_FILE = struct.Struct("<4sI")
_SLOT = struct.Struct("<QII")
SEGMENT_HEADER = _FILE.size + 2 * _SLOT.size
_crc32 = zlib.crc32


def new_segment_header() -> bytes:
    """The first bytes of a new segment: magic, version, two empty (invalid) ack slots."""
    return _FILE.pack(FILE_MAGIC, FORMAT_VERSION) + bytes(2 * _SLOT.size)


def ack_slot(acked: int, seq: int) -> tuple[int, bytes]:
    """(file position, bytes) of ack slot number `seq`: `acked` is the acknowledged prefix."""
    body = _SLOT.pack(acked, seq, 0)[:-4]
    return _FILE.size + (seq % 2) * _SLOT.size, body + _crc32(body).to_bytes(4, "little")


def read_acked(fd: int, size: int) -> tuple[int, int]:
    """(acknowledged prefix, slot sequence) of a segment of `size` bytes.

    The valid slot with the higher sequence wins; without one (a new segment, a torn header,
    another format) the segment is read from its first record. Never beyond `size`.
    """
    head = os.pread(fd, SEGMENT_HEADER, 0)
    if len(head) < SEGMENT_HEADER or _FILE.unpack_from(head) != (FILE_MAGIC, FORMAT_VERSION):
        return min(SEGMENT_HEADER, size), 0
    best = (SEGMENT_HEADER, 0)
    for at in (_FILE.size, _FILE.size + _SLOT.size):
        acked, seq, crc = _SLOT.unpack_from(head, at)
        if _crc32(memoryview(head)[at : at + 12]) == crc and seq > best[1] and acked >= best[0]:
            best = (acked, seq)
    return min(best[0], size), best[1]

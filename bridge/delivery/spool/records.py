"""The spool's record frame: encoding one line, parsing records back, counting them.

Pure functions of bytes (and one of a file, `count_records`): they know nothing of segment
headers, owners or the spool's bookkeeping. Records follow a segment's header (`header`):

    header "<4sIQI":  magic b"FSB2", payload length, append time (µs since the epoch),
                      the payload length again with every bit flipped
    payload           the encoded event line, ending in b"\\n"
    trailer "<I":     CRC32 of header and payload, seeded with RESIDUE

The length is stored twice so a reader can trust it without a CRC (skip a record whose
payload is damaged) and can find the next record after a damaged header by searching for the
magic (a candidate must carry the magic and both copies of the length).
The trailer is seeded with CRC-32's residue (the CRC of any message followed by its own CRC),
so a run of intact records, however many, has `crc32(run, RESIDUE) == RESIDUE`: a reader
verifies a whole batch with one call and checks record by record only when that fails.
A short record at the end of a segment nobody writes any more (a crash mid-write) is torn.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field

__all__ = [
    "HEADER_SIZE",
    "NO_CUTOFF",
    "RECORD_OVERHEAD",
    "Parsed",
    "count_records",
    "encode_record",
    "encode_records",
    "parse",
    "record_time",
]

MAGIC = b"FSB2"
RESIDUE = 0x2144DF1C  # crc32(m + crc32(m, s).to_bytes(4, "little"), s) for every m and s
_HEADER = struct.Struct("<4sIQI")
_U32 = struct.Struct("<I")
_FLIP = 0xFFFFFFFF
_LENGTH_TIME = struct.Struct("<IQ")  # at offset 4 of a header
HEADER_SIZE = _HEADER.size
RECORD_OVERHEAD = HEADER_SIZE + 4
MAX_PAYLOAD = 1 << 28  # far above any max_line_bytes: a larger length is a damaged header
NO_CUTOFF = -(1 << 63)
_crc32 = zlib.crc32


def encode_record(line: bytes, time_us: int) -> bytes:
    """Frame one line: header (length, append time), the line, the trailer CRC."""
    length = len(line)
    header = _HEADER.pack(MAGIC, length, time_us, length ^ _FLIP)
    return b"".join((header, line, _U32.pack(_crc32(line, _crc32(header, RESIDUE)))))


def encode_records(lines: list[bytes], time_us: int) -> bytes:
    """Frame several lines with one append time, back to back: what `encode_record` gives
    for each, joined (one buffer for one write)."""
    pack, pack_u32, crc32 = _HEADER.pack, _U32.pack, _crc32
    parts: list[bytes] = []
    add = parts.extend
    for line in lines:
        length = len(line)
        header = pack(MAGIC, length, time_us, length ^ _FLIP)
        add((header, line, pack_u32(crc32(line, crc32(header, RESIDUE)))))
    return b"".join(parts)


def _payload_length(buf: bytes, pos: int) -> int | None:
    """The payload length of a valid header at `pos` (a full header must be in `buf`)."""
    magic, length, _, flipped = _HEADER.unpack_from(buf, pos)
    if magic != MAGIC or length > MAX_PAYLOAD or length ^ _FLIP != flipped:
        return None
    return int(length)


@dataclass(slots=True)
class Parsed:
    """What `parse` found in one buffer. `handles` are `origin + offset in buf` of each good
    record in `lines`; `end` is an offset in `buf`."""

    lines: list[bytes] = field(default_factory=list)
    handles: list[int] = field(default_factory=list)
    expired: int = 0
    """Good records older than the cutoff: skipped, not in `lines`."""
    expired_bytes: int = 0
    corrupt: int = 0
    """Damaged records or regions that were skipped (a damaged region is counted once)."""
    bad_payloads: int = 0
    """Of those, records with an intact header (an adoption scan counted them)."""
    corrupt_bytes: int = 0
    end: int = 0
    """Offset in `buf` up to which it was consumed."""
    in_corrupt: bool = False
    """A damaged region goes on past `end`: the next call continues the search."""
    need: int = 0
    """When nothing more could be parsed: bytes needed from `end` for the next record."""
    full: bool = False
    """Stopped before a record because `max_events` or `max_bytes` was reached."""


def parse(
    buf: bytes,
    start: int = 0,
    *,
    final: bool,
    origin: int = 0,
    in_corrupt: bool = False,
    max_events: int = 1 << 62,
    max_bytes: int = 1 << 62,
    oversize_ok: bool = True,
    cutoff_us: int = NO_CUTOFF,
) -> Parsed:
    """Parse records from `buf[start:]`; a record at `buf[i]` gets the handle `origin + i`.

    `final`: the buffer ends where the segment ends for good, so a short record there is torn
    (counted as corrupt) rather than incomplete. Stops before a record that would exceed
    `max_events` or `max_bytes` of payload, except that the first record is taken whatever
    its size when `oversize_ok`. Records appended before `cutoff_us` are skipped (`expired`).
    Damaged records are skipped and counted, never returned. Tries `_scan` (one CRC for the
    whole run) first, and goes record by record only where that fails.
    """
    if not in_corrupt:
        fast = _scan(buf, start, final, origin, max_events, max_bytes, oversize_ok, cutoff_us)
        if fast is not None:
            return fast
    return _parse_carefully(
        buf, start, final, origin, in_corrupt, max_events, max_bytes, oversize_ok, cutoff_us
    )


def _scan(
    buf: bytes,
    start: int,
    final: bool,
    origin: int,
    max_events: int,
    max_bytes: int,
    oversize_ok: bool,
    cutoff_us: int,
) -> Parsed | None:
    """The fast path: walk the lengths trusting every header, then check the whole run with
    one CRC. None when anything looks wrong (the careful path then finds what)."""
    lines: list[bytes] = []
    handles: list[int] = []
    append_line, append_handle = lines.append, handles.append
    unpack = _LENGTH_TIME.unpack_from
    size = len(buf)
    pos = start
    taken = expired = expired_bytes = 0
    full = True  # unless the buffer ends first
    try:
        for _ in range(max_events):  # an expired record uses up a turn: a short batch
            length, time_us = unpack(buf, pos + 4)
            end = pos + RECORD_OVERHEAD + length
            if end > size:
                full = False
                break
            if time_us < cutoff_us:
                expired += 1
                expired_bytes += end - pos
                pos = end
                continue
            taken += length
            if taken > max_bytes and (lines or not oversize_ok):
                break
            append_line(buf[pos + HEADER_SIZE : end - 4])
            append_handle(origin + pos)
            pos = end
    except struct.error:  # fewer than 16 bytes left
        full = False
    need = 0
    if not full and pos < size:
        if final:
            return None  # a torn tail: count it carefully
        need = HEADER_SIZE
        if size - pos >= HEADER_SIZE:
            next_length = _payload_length(buf, pos)
            if next_length is None:
                return None  # a damaged header: find the next record carefully
            need = RECORD_OVERHEAD + next_length
    if pos > start and _crc32(memoryview(buf)[start:pos], RESIDUE) != RESIDUE:
        return None
    return Parsed(lines, handles, expired, expired_bytes, end=pos, need=need, full=full)


def _parse_carefully(
    buf: bytes,
    start: int,
    final: bool,
    origin: int,
    in_corrupt: bool,
    max_events: int,
    max_bytes: int,
    oversize_ok: bool,
    cutoff_us: int,
) -> Parsed:
    """Record by record: each header and each record checked on its own; damage skipped."""
    out = Parsed(in_corrupt=in_corrupt)
    view = memoryview(buf)
    size = len(buf)
    pos = start
    taken = 0
    while pos < size:
        if out.in_corrupt:
            found = _resync(buf, pos, final)
            out.corrupt_bytes += found - pos
            pos = found
            if found >= size or size - found < HEADER_SIZE:
                if final:
                    out.corrupt_bytes += size - pos
                    pos = size
                    out.in_corrupt = False
                break
            out.in_corrupt = False
            continue
        if size - pos < HEADER_SIZE:
            if final:
                out.corrupt += 1
                out.corrupt_bytes += size - pos
                pos = size
            else:
                out.need = HEADER_SIZE
            break
        length = _payload_length(buf, pos)
        if length is None:
            out.corrupt += 1
            out.in_corrupt = True
            out.corrupt_bytes += 1
            pos += 1
            continue
        record_size = RECORD_OVERHEAD + length
        if size - pos < record_size:
            if final:
                out.corrupt += 1
                out.corrupt_bytes += size - pos
                pos = size
            else:
                out.need = record_size
            break
        if _crc32(view[pos : pos + record_size], RESIDUE) != RESIDUE:
            out.corrupt += 1
            out.bad_payloads += 1
            out.corrupt_bytes += record_size
        elif _LENGTH_TIME.unpack_from(buf, pos + 4)[1] < cutoff_us:
            out.expired += 1
            out.expired_bytes += record_size
        elif len(out.lines) >= max_events or (
            taken + length > max_bytes and (out.lines or not oversize_ok)
        ):
            out.full = True
            break
        else:
            out.lines.append(buf[pos + HEADER_SIZE : pos + record_size - 4])
            out.handles.append(origin + pos)
            taken += length
        pos += record_size
    out.end = pos
    return out


def _resync(buf: bytes, pos: int, final: bool) -> int:
    """The position of the next valid header at or after `pos`, or where the search stopped.

    Returns len(buf) when there is none; when a candidate's header does not fit in the
    buffer, returns its position (the caller reads more from there).
    """
    size = len(buf)
    while True:
        found = buf.find(MAGIC, pos)
        if found < 0:
            # Keep a possible partial magic at the end for the next buffer.
            return size if final else max(pos, size - len(MAGIC) + 1)
        if size - found < HEADER_SIZE or _payload_length(buf, found) is not None:
            return found
        pos = found + 1


def record_time(buf: bytes, pos: int) -> int:
    """The append time (µs) in the record header at `buf[pos]`."""
    return int(_LENGTH_TIME.unpack_from(buf, pos + 4)[1])


def count_records(fd: int, start: int, size: int, chunk: int = 1 << 20) -> int:
    """The number of records between offsets `start` and `size` of a segment (an adoption
    scan). A run that passes the whole-run CRC is counted from its lengths; elsewhere only
    headers are checked, so a record with a damaged payload is counted here and found later.
    """
    count = 0
    pos = start
    in_corrupt = False
    want = chunk
    while pos < size:
        asked = min(want, size - pos)
        buf = os.pread(fd, asked, pos)
        final = len(buf) < asked or pos + len(buf) >= size  # short: the file ends early
        parsed = None if in_corrupt else _scan(buf, 0, final, 0, 1 << 62, 1 << 62, True, NO_CUTOFF)
        if parsed is None:
            parsed = _count_headers(buf, final, in_corrupt)
        count += len(parsed.handles)
        if final or (parsed.end == 0 and parsed.need <= len(buf)):
            break
        in_corrupt = parsed.in_corrupt
        want = max(chunk, parsed.need)
        pos += parsed.end
    return count


def _count_headers(buf: bytes, final: bool, in_corrupt: bool) -> Parsed:
    """Walk the headers only: every record whose header is intact gets a handle."""
    out = Parsed(in_corrupt=in_corrupt)
    size = len(buf)
    pos = 0
    while pos < size:
        if out.in_corrupt:
            pos = _resync(buf, pos, final)
            if pos >= size or size - pos < HEADER_SIZE:
                out.in_corrupt = not final
                pos = size if final else pos
                break
            out.in_corrupt = False
            continue
        if size - pos < HEADER_SIZE:
            out.need = HEADER_SIZE
            break
        length = _payload_length(buf, pos)
        if length is None:
            out.in_corrupt = True
            pos += 1
            continue
        if size - pos < RECORD_OVERHEAD + length:
            out.need = RECORD_OVERHEAD + length
            break
        out.handles.append(pos)
        pos += RECORD_OVERHEAD + length
    out.end = pos
    return out

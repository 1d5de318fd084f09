"""The spool's on-disk layout: file names, the record frame, parsing, ownership and adoption.

`bridge.delivery.spool` keeps the in-memory bookkeeping; this module is everything that must
agree between a process that writes a spool directory and the one that later replays it.

Files in the spool directory (directory 0700, files 0600):

    {owner}.lock              held with flock(LOCK_EX) by its owner for the owner's lifetime
    {owner}.{seq:010d}.seg    a segment: records appended by the owner (O_APPEND), or adopted
    .{owner}.lock.tmp         a lock file being created (renamed into place once locked)

`owner` is `{pid}-{8 hex digits}`, unique per Spool instance, so a recycled pid never looks
alive. A segment belongs to the owner in its name; its owner is alive exactly while somebody
holds a flock on `{owner}.lock`. A process adopts a dead owner's segments by taking that lock
(non-blocking) and renaming each segment to its own name: the lock keeps two live siblings
from adopting the same owner at once, and the rename itself is the claim (a segment renamed
by one process is gone for every other). A crash halfway leaves each segment under exactly one
name, so nothing is lost or claimed twice.

A record is a 24-byte header, then the payload (the encoded event line, ending in b"\\n"):

    struct "<4sIQII": magic b"FSB1", payload length, append time (µs since the epoch),
                      CRC32 of the payload, CRC32 of the first 20 header bytes

The header has its own CRC so a reader can trust the length (skip a record whose payload is
damaged) and can find the next record after a damaged header by searching for the magic.
A short record at the end of a segment nobody writes any more (a crash mid-write) is torn.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "HEADER_SIZE",
    "Parsed",
    "claim_orphans",
    "count_records",
    "encode_record",
    "parse",
    "register_owner",
    "segment_name",
]

MAGIC = b"FSB1"
_PREFIX = struct.Struct("<4sIQI")
_HEADER = struct.Struct("<4sIQII")
HEADER_SIZE = _HEADER.size
MAX_PAYLOAD = 1 << 28  # far above any max_line_bytes: a larger length is a damaged header
FILE_MODE = 0o600
STALE_TMP_SECONDS = 60.0

_SEGMENT_RE = re.compile(r"^(\d+-[0-9a-f]{8})\.(\d{10})\.seg$")
_LOCK_RE = re.compile(r"^(\d+-[0-9a-f]{8})\.lock$")
_TMP_RE = re.compile(r"^\.(\d+-[0-9a-f]{8})\.lock\.tmp$")


def encode_record(line: bytes, time_us: int) -> bytes:
    """Frame one line: header (length, CRCs, append time) followed by the line itself."""
    prefix = _PREFIX.pack(MAGIC, len(line), time_us, zlib.crc32(line))
    return b"".join((prefix, zlib.crc32(prefix).to_bytes(4, "little"), line))


def segment_name(owner: str, seq: int) -> str:
    return f"{owner}.{seq:010d}.seg"


def _payload_length(buf: bytes, pos: int) -> int | None:
    """The payload length of a valid header at `pos` (a full header must be in `buf`)."""
    magic, length, _, _, header_crc = _HEADER.unpack_from(buf, pos)
    if magic != MAGIC or length > MAX_PAYLOAD:
        return None
    if zlib.crc32(memoryview(buf)[pos : pos + HEADER_SIZE - 4]) != header_crc:
        return None
    return int(length)


@dataclass(slots=True)
class Parsed:
    """What `parse` found in one buffer; offsets are file offsets."""

    records: list[tuple[int, int, int, bytes]] = field(default_factory=list)
    """(offset, record size with header, append time in µs, payload) of each good record."""
    corrupt: int = 0
    """Damaged records or regions that were skipped (a damaged region is counted once)."""
    bad_payloads: int = 0
    """Of those, records with an intact header (an adoption scan counted them)."""
    corrupt_bytes: int = 0
    end: int = 0
    """File offset up to which the buffer was consumed."""
    in_corrupt: bool = False
    """A damaged region goes on past `end`: the next call continues the search."""
    need: int = 0
    """When nothing more could be parsed: bytes needed from `end` for the next record."""
    full: bool = False
    """Stopped before a record because `max_events` or `max_bytes` was reached."""


def parse(
    buf: bytes,
    base: int,
    *,
    final: bool,
    in_corrupt: bool = False,
    max_events: int = 1 << 62,
    max_bytes: int = 1 << 62,
    oversize_ok: bool = True,
    payloads: bool = True,
) -> Parsed:
    """Parse records from `buf`, which holds the file from offset `base`.

    `final`: the buffer ends where the segment ends for good, so a short record there is torn
    (counted as corrupt) rather than incomplete. Stops before a record that would exceed
    `max_events` or `max_bytes` of payload, except that the first record is taken whatever
    its size when `oversize_ok`. Records whose CRC fails are skipped and counted, never returned.
    `payloads=False` only walks the headers (payloads are neither checked nor copied: b"").
    """
    out = Parsed(in_corrupt=in_corrupt)
    size = len(buf)
    pos = 0
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
        record_size = HEADER_SIZE + length
        if size - pos < record_size:
            if final:
                out.corrupt += 1
                out.corrupt_bytes += size - pos
                pos = size
            else:
                out.need = record_size
            break
        if len(out.records) >= max_events or (
            taken + length > max_bytes and (out.records or not oversize_ok)
        ):
            out.full = True
            break
        _, _, time_us, payload_crc, _ = _HEADER.unpack_from(buf, pos)
        payload = buf[pos + HEADER_SIZE : pos + record_size] if payloads else b""
        if payloads and zlib.crc32(payload) != payload_crc:
            out.corrupt += 1
            out.bad_payloads += 1
            out.corrupt_bytes += record_size
        else:
            out.records.append((base + pos, record_size, time_us, payload))
            taken += length
        pos += record_size
    out.end = base + pos
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


def count_records(fd: int, size: int, chunk: int = 1 << 20) -> int:
    """The number of records in the first `size` bytes of a segment (an adoption scan).

    Checks headers only, so a record with a damaged payload is counted here and found later.
    """
    count = 0
    pos = 0
    in_corrupt = False
    want = chunk
    while pos < size:
        asked = min(want, size - pos)
        buf = os.pread(fd, asked, pos)
        final = len(buf) < asked or pos + len(buf) >= size  # short: the file ends early
        parsed = parse(buf, pos, final=final, in_corrupt=in_corrupt, payloads=False)
        count += len(parsed.records)
        if final or (parsed.end == pos and parsed.need <= len(buf)):
            break
        in_corrupt = parsed.in_corrupt
        want = max(chunk, parsed.need)
        pos = parsed.end
    return count


def register_owner(directory: Path) -> tuple[str, int]:
    """Create and lock a fresh lock file for a new owner; return (owner, locked fd).

    The file is locked under a temporary name and renamed into place, so nobody ever sees an
    owner's lock file unlocked while the owner is alive.
    """
    while True:
        owner = f"{os.getpid()}-{secrets.token_hex(4)}"
        tmp = directory / f".{owner}.lock.tmp"
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, directory / f"{owner}.lock")
        except BaseException:
            os.close(fd)
            raise
        return owner, fd


def _lock_if_dead(path: Path) -> int | None:
    """Lock the lock file at `path` if nobody holds it; None when its owner is alive.

    Checks that the path still names the locked file afterwards: whoever adopts an owner
    unlinks its lock file, and a lock taken on an unlinked file protects nothing.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held, named = os.fstat(fd), os.stat(path)
        if (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def claim_orphans(directory: Path, me: str, next_seq: Callable[[], int]) -> list[tuple[str, int]]:
    """Adopt the segments of every dead owner; return (new name, size), oldest owner first.

    Also removes lock files of dead owners that left no segments, and stale temporary lock
    files. Never touches the segments of a live owner.
    """
    segments: dict[str, list[str]] = {}
    owners: set[str] = set()
    stale_tmp: list[str] = []
    for name in os.listdir(directory):
        if match := _SEGMENT_RE.match(name):
            segments.setdefault(match[1], []).append(name)
        elif match := _LOCK_RE.match(name):
            owners.add(match[1])
        elif _TMP_RE.match(name):
            stale_tmp.append(name)
    owners |= segments.keys()
    owners.discard(me)

    def age(owner: str) -> float:
        try:
            return min(os.stat(directory / name).st_mtime for name in segments[owner])
        except (KeyError, ValueError, OSError):
            return 0.0

    claimed: list[tuple[str, int]] = []
    for owner in sorted(owners, key=age):
        lock_path = directory / f"{owner}.lock"
        fd = _lock_if_dead(lock_path)
        if fd is None:
            continue
        try:
            for old in sorted(segments.get(owner, ())):
                new = segment_name(me, next_seq())
                try:
                    os.rename(directory / old, directory / new)
                    claimed.append((new, os.stat(directory / new).st_size))
                except FileNotFoundError:
                    continue
            lock_path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    now = time.time()
    for name in stale_tmp:
        path = directory / name
        try:
            if now - os.stat(path).st_mtime < STALE_TMP_SECONDS:
                continue
        except OSError:
            continue
        fd = _lock_if_dead(path)
        if fd is not None:
            path.unlink(missing_ok=True)
            os.close(fd)
    return claimed

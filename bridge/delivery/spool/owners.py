"""Spool ownership: file names, owners' lock files, and adopting dead owners' segments.

`Spool` (`facade`) registers an owner at start; the bookkeeping (`table`) calls
`claim_orphans` when it rescans the directory.

Files in the spool directory (directory 0700, files 0600, every one opened with O_NOFOLLOW:
a symlink planted in the directory is never followed, and a name that is not a regular file
is never adopted):

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
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path

from bridge.diagnostics import report
from bridge.safefs import open_nofollow

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "claim_orphans",
    "open_segment",
    "register_owner",
    "segment_name",
]

DIR_MODE = 0o700
FILE_MODE = 0o600
STALE_TMP_SECONDS = 60.0

_SEGMENT_RE = re.compile(r"^(\d+-[0-9a-f]{8})\.(\d{10})\.seg$")
_LOCK_RE = re.compile(r"^(\d+-[0-9a-f]{8})\.lock$")
_TMP_RE = re.compile(r"^\.(\d+-[0-9a-f]{8})\.lock\.tmp$")


def segment_name(owner: str, seq: int) -> str:
    return f"{owner}.{seq:010d}.seg"


def open_segment(path: Path) -> int:
    """A read/write fd of the segment at `path`; OSError (ELOOP) if it is a symlink."""
    return open_nofollow(path, os.O_RDWR)


def register_owner(directory: Path) -> tuple[str, int]:
    """Create and lock a fresh lock file for a new owner; return (owner, locked fd).

    The file is locked under a temporary name and renamed into place, so nobody ever sees an
    owner's lock file unlocked while the owner is alive.
    """
    while True:
        owner = f"{os.getpid()}-{secrets.token_hex(4)}"
        tmp = directory / f".{owner}.lock.tmp"
        try:
            fd = open_nofollow(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
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
        fd = open_nofollow(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            report("spool_symlink", f"spool: {path} is a symbolic link: left alone, not followed")
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
            if not _regular(directory / name):
                continue
            segments.setdefault(match[1], []).append(name)
        elif match := _LOCK_RE.match(name):
            owners.add(match[1])
        elif _TMP_RE.match(name):
            stale_tmp.append(name)
    owners |= segments.keys()
    owners.discard(me)

    def age(owner: str) -> float:
        try:
            return min(os.lstat(directory / name).st_mtime for name in segments[owner])
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
                    claimed.append((new, os.lstat(directory / new).st_size))
                except FileNotFoundError:
                    continue
            lock_path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    now = time.time()
    for name in stale_tmp:
        path = directory / name
        try:
            if now - os.lstat(path).st_mtime < STALE_TMP_SECONDS:
                continue
        except OSError:
            continue
        fd = _lock_if_dead(path)
        if fd is not None:
            path.unlink(missing_ok=True)
            os.close(fd)
    return claimed


def _regular(path: Path) -> bool:
    """Is `path` itself a regular file? A symlink or anything else named like a segment is
    reported and left alone: adopting it would read, and write the header of, its target."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    if stat.S_ISREG(mode):
        return True
    report("spool_not_a_file", f"spool: {path} is not a regular file: left alone, not adopted")
    return False

"""The files of an audit trail, in the order they were written, read line by line.

Used by `bridge.audit.verify`. Rotation leaves a trail as several files: the sink's own
numbered backups (`events.jsonl.2`, `events.jsonl.1`, then `events.jsonl`) or logrotate's
dated ones (`events.jsonl-20261206`, `events.jsonl-20261207`), either possibly gzipped.
`reading_order` puts the backups of one file before it, oldest first, and keeps the order the
caller gave otherwise (a file given twice, by two names or links, is read once); `file_lines`
streams a file (gzip or not, told by its first bytes) so a multi-gigabyte trail is never held in
memory. The files may have been written by an attacker, so a line is read in at most
`MAX_LINE_BYTES` (a longer one is yielded cut, and the verifier names it), and a gzip stream
that expands far beyond what JSON lines with MACs can (a "gzip bomb") stops with
`ExpansionError`: memory stays bounded, and time is proportional to the bytes on disk.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TypeAlias

__all__ = ["MAX_LINE_BYTES", "ExpansionError", "file_lines", "reading_order"]

# Far above any event line (`max_line_bytes` defaults to 64 KiB): a longer line is not a record.
MAX_LINE_BYTES = 1 << 24
# An audit record carries a MAC and an event id of random hex, so its lines compress about
# 8:1; deflate reaches 1000:1 on repeated bytes. Checked once this much was expanded.
_MAX_EXPANSION = 50
_EXPANSION_FLOOR = 1 << 18
_SKIP_CHUNK = 1 << 20
_Stream: TypeAlias = IO[bytes] | gzip.GzipFile


class ExpansionError(ValueError):
    """A gzip stream expanding more than `_MAX_EXPANSION` times: not an audit trail."""


_GZIP_MAGIC = b"\x1f\x8b"
# base, then `.N` (the sink's backups, larger is older) or `-DATE...` (logrotate's dateext)
_BACKUP = re.compile(r"^(?P<base>.+?)(?:\.(?P<number>\d+)|-(?P<date>\d{8}[\d-]*))?(?:\.gz)?$")


def _rotation(path: Path) -> tuple[str, tuple[int, int, str]]:
    """The file the path is a backup of, and a key that sorts its backups oldest first."""
    match = _BACKUP.match(path.name)
    assert match is not None  # the pattern matches every non-empty name
    base = str(path.with_name(match["base"]))
    if match["number"] is not None:
        return base, (0, -int(match["number"]), "")
    if match["date"] is not None:
        return base, (1, 0, match["date"])
    return base, (2, 0, "")


def reading_order(paths: Sequence[Path]) -> list[Path]:
    """`paths` oldest first: backups of one file grouped before it (the group where its first
    member was given); other files in the order given."""
    groups: dict[str, list[tuple[tuple[int, int, str], int, Path]]] = {}
    seen: set[object] = set()
    for position, path in enumerate(paths):
        identity = _identity(path)
        if identity in seen:  # `verify a.jsonl* a.jsonl`: the same file is not a copied trail
            continue
        seen.add(identity)
        base, key = _rotation(path)
        groups.setdefault(base, []).append((key, position, path))
    return [path for group in groups.values() for _, _, path in sorted(group)]


def _identity(path: Path) -> object:
    """The file itself (device and inode), or its name when it cannot be looked at."""
    try:
        status = os.stat(path)
    except OSError:
        return str(path)
    return (status.st_dev, status.st_ino)


def file_lines(path: Path) -> Iterator[bytes]:
    """Each line of the file with its newline (the last one may lack it: a torn write; a line
    over `MAX_LINE_BYTES` is cut to `MAX_LINE_BYTES + 1` bytes). A cut or corrupt gzip stream
    raises `EOFError`, `gzip.BadGzipFile` or `zlib.error` after the lines before it, a gzip
    bomb `ExpansionError`."""
    with path.open("rb") as raw:
        zipped = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if not zipped:
            yield from _bounded_lines(raw, None)
            return
        expanded = 0

        def expanding(size: int) -> None:
            nonlocal expanded
            expanded += size
            if expanded > _EXPANSION_FLOOR and expanded > _MAX_EXPANSION * raw.tell():
                raise ExpansionError(
                    f"it expands more than {_MAX_EXPANSION} times: not an audit trail"
                )

        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            yield from _bounded_lines(stream, expanding)


def _bounded_lines(stream: _Stream, count: Callable[[int], None] | None) -> Iterator[bytes]:
    while line := stream.readline(MAX_LINE_BYTES + 1):
        if count is not None:
            count(len(line))
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            _skip_rest(stream, count)
        yield line


def _skip_rest(stream: _Stream, count: Callable[[int], None] | None) -> None:
    """Read past the rest of an overlong line, a chunk at a time."""
    while chunk := stream.readline(_SKIP_CHUNK):
        if count is not None:
            count(len(chunk))
        if chunk.endswith(b"\n"):
            return

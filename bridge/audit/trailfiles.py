"""The files of an audit trail, in the order they were written, read line by line.

Used by `bridge.audit.verify`. Rotation leaves a trail as several files: the sink's own
numbered backups (`events.jsonl.2`, `events.jsonl.1`, then `events.jsonl`) or logrotate's
dated ones (`events.jsonl-20261206`, `events.jsonl-20261207`), either possibly gzipped.
`reading_order` puts the backups of one file before it, oldest first, and keeps the order the
caller gave otherwise; `file_lines` streams a file (gzip or not, told by its first bytes) so a
multi-gigabyte trail is never held in memory.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["file_lines", "reading_order"]

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
    for position, path in enumerate(paths):
        base, key = _rotation(path)
        groups.setdefault(base, []).append((key, position, path))
    return [path for group in groups.values() for _, _, path in sorted(group)]


def file_lines(path: Path) -> Iterator[bytes]:
    """Each line of the file with its newline (the last one may lack it: a torn write). A cut
    or corrupt gzip stream raises `EOFError`, `gzip.BadGzipFile` or `zlib.error` after the
    lines before it."""
    with path.open("rb") as raw:
        zipped = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if not zipped:
            yield from raw
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            yield from stream

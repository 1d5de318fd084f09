"""The dead-letter file: events a collector refused for good, kept for `flask bridge replay`.

One JSON line per event: the original event line (as text), the sink that refused it (`sink`,
so replay sends it back there), the HTTP status, an excerpt of the collector's reply, the
reason and the time. The file is created 0600 (events may hold personal
data) in directories created without group or world write, and appended with one `write()`
per batch, so several worker processes can share it. It is opened with `O_NOFOLLOW` and must
be a regular file: a symlink (or a FIFO) planted at the path is refused and reported, never
followed, and the target of a dangling symlink is never created. Reply excerpts are scrubbed
of every registered secret (`bridge.redaction.scrub_known`) on top of the transport's own.
When the file cannot be written, nothing is lost: `refuse` tells the engine to keep the events.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack
    (a `Rejected` outcome, or rejected items, come here before `feed.ack`)
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bridge.diagnostics import report
from bridge.outcome import RetryLater
from bridge.redaction import scrub_known
from bridge.safefs import make_dirs, open_nofollow
from bridge.stats import SinkStats

__all__ = ["DeadLetter"]

FILE_MODE = 0o600
DIR_MODE = 0o700
EXCERPT_CHARS = 512


class DeadLetter:
    """Writes refused events down and counts them (dropped by `reason`, and dead_lettered).

    Without a path the events are only counted as dropped and reported to stderr
    (rate-limited): nothing else can be done with them. When the write fails, nothing is
    counted but the error: `put` returns False and the caller keeps the events. Never raises.
    """

    def __init__(self, path: Path | None, *, stats: SinkStats, sink_name: str) -> None:
        self.path = path
        self._stats = stats
        self._sink_name = sink_name

    def put(
        self, lines: Sequence[bytes], *, reason: str, status: int | None, response: str
    ) -> bool:
        """Write `lines` down and count them; True if they were written (or there were none)."""
        if not lines:
            return True
        where = f"sink {self._sink_name}: {len(lines)} events refused ({reason}, status {status})"
        if self.path is None:
            self._stats.count_dropped(reason, len(lines))
            report(f"dead-letter-{self._sink_name}", f"{where}; no dead_letter_path: dropped")
            return False
        data = self._records(lines, reason=reason, status=status, response=response)
        try:
            self._append(data)
        except OSError as exc:
            cause = self._cause(exc)
            self._stats.record_error(f"dead-letter write failed: {cause}")
            report(
                f"dead-letter-{self._sink_name}",
                f"{where}; dead-letter write failed ({cause}): kept, will try again",
            )
            return False
        self._stats.count_dropped(reason, len(lines))
        self._stats.count_dead_lettered(len(lines))
        report(f"dead-letter-{self._sink_name}", f"{where}; written to {self.path}")
        return True

    def refuse(
        self, lines: Sequence[bytes], *, reason: str, status: int | None, response: str
    ) -> RetryLater | None:
        """Dead-letter lines the collector refused, counted as dropped `reason`.

        None when they are settled: written, or dropped (counted) for want of a path. Else
        the outcome to retry them with: the file could not be written, so the caller keeps them.
        """
        if self.put(lines, reason=reason, status=status, response=response) or self.path is None:
            return None
        return RetryLater(
            f"{len(lines)} events refused ({reason}, status {status}) and kept: "
            "the dead-letter file could not be written",
            status,
        )

    def _cause(self, exc: OSError) -> str:
        if exc.errno == errno.ELOOP:
            return f"{self.path} is a symbolic link: refused, never followed"
        return f"{exc.strerror or exc}: {self.path}"

    def _records(
        self, lines: Sequence[bytes], *, reason: str, status: int | None, response: str
    ) -> bytes:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        excerpt = scrub_known(response)[:EXCERPT_CHARS]
        out = []
        for line in lines:
            record = {
                "time": now,
                "sink": self._sink_name,
                "reason": reason,
                "status": status,
                "response": excerpt,
                "line": line.decode("utf-8", "replace").rstrip("\n"),
            }
            out.append(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        return b"".join(out)

    def _append(self, data: bytes) -> None:
        assert self.path is not None
        make_dirs(self.path.parent, DIR_MODE)
        # O_NONBLOCK: a FIFO planted at the path fails (ENXIO) instead of hanging the worker.
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK
        fd = open_nofollow(self.path, flags, FILE_MODE)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

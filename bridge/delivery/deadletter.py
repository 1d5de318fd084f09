"""The dead-letter file: events a collector refused for good, kept for `flask bridge replay`.

One JSON line per event: the original event line (as text), the HTTP status, an excerpt of the
collector's reply, the reason and the time. The file is created 0600 (events may hold personal
data) and appended with one `write()` per batch, so several worker processes can share it.
The transport scrubs header values out of the reply excerpt before it gets here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bridge.diagnostics import report
from bridge.sinks.base import SinkStats

__all__ = ["DeadLetter"]

FILE_MODE = 0o600
EXCERPT_CHARS = 512


class DeadLetter:
    """Counts refused events (dropped by `reason`) and, with a `path`, writes them down.

    Without a path the events are only counted and reported to stderr (rate-limited): nothing
    else can be done with them. Never raises; a failed write is counted and reported.
    """

    def __init__(self, path: Path | None, *, stats: SinkStats, sink_name: str) -> None:
        self.path = path
        self._stats = stats
        self._sink_name = sink_name

    def put(
        self, lines: Sequence[bytes], *, reason: str, status: int | None, response: str
    ) -> bool:
        """Count `lines` as dropped for `reason` and write them down; True if they were written."""
        if not lines:
            return True
        self._stats.count_dropped(reason, len(lines))
        where = f"sink {self._sink_name}: {len(lines)} events refused ({reason}, status {status})"
        if self.path is None:
            report(f"dead-letter-{self._sink_name}", f"{where}; no dead_letter_path: dropped")
            return False
        data = self._records(lines, reason=reason, status=status, response=response)
        try:
            self._append(data)
        except OSError as exc:
            self._stats.record_error(f"dead-letter write failed: {exc.strerror or exc}")
            report(f"dead-letter-{self._sink_name}", f"{where}; dead-letter write failed: {exc}")
            return False
        self._stats.count_dead_lettered(len(lines))
        report(f"dead-letter-{self._sink_name}", f"{where}; written to {self.path}")
        return True

    @staticmethod
    def _records(
        lines: Sequence[bytes], *, reason: str, status: int | None, response: str
    ) -> bytes:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        excerpt = response[:EXCERPT_CHARS]
        out = []
        for line in lines:
            record = {
                "time": now,
                "reason": reason,
                "status": status,
                "response": excerpt,
                "line": line.decode("utf-8", "replace").rstrip("\n"),
            }
            out.append(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        return b"".join(out)

    def _append(self, data: bytes) -> None:
        assert self.path is not None
        if not self.path.parent.is_dir():
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(self.path, flags, FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

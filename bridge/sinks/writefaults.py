"""What a `LineWriter` does when its output fails: count it, and note a report for later.

    emitter -> sink.submit -> LineWriter -> Output (file/stream)
                                  `-> WriteFaults: stats counted, reports noted

Every method runs under the writer's write lock, which a request may be waiting for. A report
(`diagnostics.report`) writes to stderr, so none is made here: each is noted, and the writer
sends the notes once it has released the lock.

A failed write either drops its line (nothing of it went out, or the output abandoned it:
counted `write_error`) or keeps the line's rest, which must be the next thing written (part
of it is out). While such a rest keeps failing, the queue counts the lines it gives up at
close as `write_error` rather than `shutdown` (`LineQueue.failing`).
"""

from __future__ import annotations

from bridge.sinks.linequeue import LineQueue
from bridge.sinks.output import LineAbandoned, Output
from bridge.stats import SinkStats

__all__ = ["Note", "WriteFaults"]

Note = tuple[str, str]  # (cause, message) for `diagnostics.report`, made after the lock


class WriteFaults:
    """A writer's output failures: counted in its stats, noted for report after the lock."""

    __slots__ = ("name", "notes", "output", "queue", "stats")

    def __init__(self, output: Output, *, name: str, stats: SinkStats, queue: LineQueue) -> None:
        self.output = output
        self.name = name
        self.stats = stats
        self.queue = queue
        self.notes: list[Note] = []

    def take_notes(self) -> list[Note]:
        """The reports noted so far, for the writer to send once the lock is released."""
        notes, self.notes = self.notes, []
        return notes

    def write_error(self, exc: OSError, lines: int = 1) -> Note:
        """`lines` dropped because writing them failed: counted; the report returned."""
        self.stats.count_dropped("write_error", lines)
        self.stats.record_error(f"write failed: {exc}")
        return (f"write-{self.name}", f"sink {self.name}: write failed: {exc}")

    def failed(self, exc: OSError, *, rest: bool) -> bool:
        """Count a failed write; True when the line's rest is kept.

        `rest`: part of the line is out, so the rest must follow, unless the output
        abandoned the line; else the line is dropped.
        """
        if rest and not isinstance(exc, LineAbandoned):
            self.queue.failing = True
            self.stats.record_error(f"write failed: {exc}")
            self.notes.append(
                (
                    f"write-{self.name}",
                    f"sink {self.name}: write failed: {exc}; the rest of the line "
                    "is written as soon as the output takes it",
                )
            )
            return True
        if isinstance(exc, LineAbandoned):
            self.queue.failing = False
        self.notes.append(self.write_error(exc))
        return False

    def maintain(self) -> bool:
        """Let the output reopen or rotate; False (counted, noted) on failure."""
        try:
            self.output.maintain()
        except OSError as exc:
            self.stats.record_error(f"reopen failed: {exc}")
            self.notes.append((f"maintain-{self.name}", f"sink {self.name}: reopen failed: {exc}"))
            return False
        return True

    def fsync(self) -> None:
        try:
            self.output.fsync()
        except OSError as exc:
            self.stats.record_error(f"fsync failed: {exc}")

"""The Sink methods the file and stdout sinks share: each is one `LineWriter` and its stats.

    emitter -> sink.submit -> LineWriter -> Output (file/stream)

`FileSink` and `StdoutSink` differ only in the `Output` they build (and what `describe` adds
to their `stats()`); submitting, flushing, closing and counting are the writer's.
"""

from __future__ import annotations

from typing import Any

from bridge.sinks.writer import LineWriter
from bridge.stats import SinkStats

__all__ = ["WriterSink"]


class WriterSink:
    """A sink whose lines go through one `LineWriter` (file, stdout): the shared Sink methods."""

    name: str
    kind: str
    _writer: LineWriter
    _stats: SinkStats

    def submit(self, line: bytes) -> bool:
        return self._writer.submit(line)

    def submit_many(self, lines: list[bytes]) -> int:
        """One request's lines: a single `write()` for all of them when the writer can write
        at once; otherwise each goes where a lone `submit` would send it."""
        return self._writer.submit_many(lines)

    def flush(self, timeout: float) -> bool:
        return self._writer.flush(timeout)

    def close(self, timeout: float) -> bool:
        return self._writer.close(timeout)

    def describe(self) -> dict[str, Any]:
        """Extra, non-counter facts for `stats()` (the file sink adds its path)."""
        return {}

    def stats(self) -> dict[str, Any]:
        counters = self._writer.counters()
        self._stats.publish_progress(enqueued=counters["enqueued"], delivered=counters["delivered"])
        snapshot = self._stats.snapshot(queue_depth=counters["queue_depth"])
        snapshot["type"] = self.kind
        snapshot.update(self.describe())
        return snapshot

"""The `stdout` sink: one JSON line per write on the process's stdout or stderr.

Container runtimes read stdout through a pipe that every worker process shares, and a slow log
driver fills it. `StreamOutput` (bridge.streams) keeps the promises there: a full pipe never
stalls a request (the line waits in the writer's queue), and a line never tears or mixes with
another process's, whatever its size up to `max_line_bytes`. Threads of one process never
interleave either: one line at a time, under the writer's lock.
"""

from __future__ import annotations

from bridge.config import StdoutSinkSettings
from bridge.sinks.writer import LineWriter
from bridge.sinks.writersink import WriterSink
from bridge.stats import SinkStats
from bridge.streams import StreamOutput

__all__ = ["StdoutSink", "StreamOutput"]


class StdoutSink(WriterSink):
    """Writes event lines to stdout (or stderr) without ever blocking a request on a full pipe,
    and without tearing a line when other processes write to the same pipe."""

    def __init__(self, settings: StdoutSinkSettings, *, fd: int | None = None) -> None:
        self.name = settings.name
        self.kind = "stdout"
        self.settings = settings
        self._stats = SinkStats()
        target = fd if fd is not None else (1 if settings.stream == "stdout" else 2)
        self._writer = LineWriter(
            StreamOutput(target),
            name=self.name,
            stats=self._stats,
            overflow=settings.overflow,
            max_events=settings.queue_max_events,
            max_bytes=settings.queue_max_bytes,
        )

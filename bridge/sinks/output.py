"""What a `LineWriter` writes to: the `Output` protocol, and `LineAbandoned`.

    emitter -> sink.submit -> LineWriter -> Output (FileOutput, StreamOutput)

An output is one destination for bytes (a file that follows rotation, a non-blocking pipe or
socket). It takes one `write()` at a time from its writer, which serializes them, and it keeps
one promise back: after a partial write, the next `write` is the rest of that same line, so an
output may hold state for a line in progress (a pipe lock, the count of bytes still owed).

A `write()` may carry several whole lines (`LineWriter.submit_many`), up to `batch_bytes`: the
most one call can carry and still never mix with another writer's lines (any size on a file
opened with O_APPEND; PIPE_BUF on a pipe without a lock). When such a write is cut short, the
writer tells the output what is really owed (`settle_partial`): the rest of the line the cut
fell in, never the whole lines after it, which go to the writer's queue one by one.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["LineAbandoned", "Output"]


class LineAbandoned(OSError):
    """Raised by `Output.write` for the rest of a line it cannot finish where the line began."""


class Output(Protocol):
    """A destination for bytes: a file (with rotation), a pipe, a socket.

    After a partial write, the next `write` is always the rest of that line.
    """

    # The most bytes of whole lines one `write` may carry without mixing with other writers'.
    batch_bytes: int

    def write(self, data: bytes) -> int:
        """One write() call; may write part of `data`, or raise BlockingIOError or OSError."""
        ...

    def settle_partial(self, rest: int) -> None:
        """After a partial write of several lines: only `rest` more bytes (the rest of the
        line the write cut) are owed; 0 when it cut between two lines."""
        ...

    def wait_writable(self, timeout: float) -> None:
        """Block (background thread only) until a write could make progress, or timeout."""
        ...

    def maintenance_due(self, now: float) -> bool:
        """Cheap check on the calling thread: should the background thread `maintain()`?"""
        ...

    def maintain(self) -> None:
        """Check the path, reopen or rotate; under the write lock, never on the fast path."""
        ...

    def fsync(self) -> None: ...

    def close(self) -> None: ...

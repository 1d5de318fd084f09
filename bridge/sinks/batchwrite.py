"""Several whole lines in as few `write()` calls as the output allows (`submit_many`).

    emitter -> sink.submit_many -> LineWriter -> batchwrite (this module) -> Output

A request's lines reach a file or stdout sink together. Joined, they cost one `write()`
instead of one each; `Output.batch_bytes` says how many bytes one call may carry and still
never mix with another writer's lines (any size on an O_APPEND file, PIPE_BUF on a pipe), so
a larger batch goes out in runs of whole lines, each within that bound (a longer line alone).

These functions only write; the `LineWriter` counts. Each tells it, line by line, where the
writing stopped: how many lines went out whole, and how many bytes of the next one did. A
write cut inside a line leaves the output owing that line's rest only (`settle_partial`),
which the writer puts at the head of its queue; the whole lines after it it queues, exactly
as if each had been submitted alone. The lines one write took lie side by side in the output;
those left for the queue keep their order, but another thread's lines may come between them,
as between N submits.
"""

from __future__ import annotations

from bridge.sinks.linequeue import LineQueue
from bridge.sinks.output import Output

__all__ = ["Stop", "next_run", "write_once", "write_patiently"]

# Where writing stopped: (lines written whole, bytes of the next one written, the failure that
# stopped it or None: all written, or the output would block).
Stop = tuple[int, int, OSError | None]


def next_run(lines: list[bytes], start: int, limit: int) -> tuple[int, bytes]:
    """The lines from `start` to write in one call: (the index after them, their bytes).

    As many as fit in `limit` bytes, and at least one.
    """
    data = b"".join(lines[start:] if start else lines)
    if len(data) <= limit:
        return len(lines), data
    end = start + 1
    size = len(lines[start])
    while end < len(lines) and size + len(lines[end]) <= limit:
        size += len(lines[end])
        end += 1
    return end, b"".join(lines[start:end])


def _cut(output: Output, lines: list[bytes], start: int, written: int) -> tuple[int, int]:
    """Where `written` bytes of the run from `start` end: (the line they end in, the bytes of
    it that are out); the output is told what it still owes."""
    index = start
    while written >= len(lines[index]):
        written -= len(lines[index])
        index += 1
    if index > start or written:  # something of this run is out
        output.settle_partial(len(lines[index]) - written if written else 0)
    return index, written


def write_once(output: Output, lines: list[bytes]) -> Stop:
    """The calling thread's attempt (never waits): run after run, until one is not taken
    whole. A failure is one before any byte of its run (a `write()` that fails writes none).
    """
    start = 0
    limit = output.batch_bytes
    data = b"".join(lines)
    if len(data) <= limit:  # the usual case, without the run bookkeeping: one write
        try:
            written = output.write(data)
        except BlockingIOError:
            return 0, 0, None
        except OSError as exc:
            return 0, 0, exc
        if written == len(data):
            return len(lines), 0, None
        return *_cut(output, lines, 0, written), None
    while True:
        end, data = next_run(lines, start, limit)
        try:
            written = output.write(data)
        except BlockingIOError:
            return start, 0, None
        except OSError as exc:
            return start, 0, exc
        if written != len(data):
            return *_cut(output, lines, start, written), None
        if end == len(lines):
            return end, 0, None
        start = end


def write_patiently(output: Output, lines: list[bytes], queue: LineQueue) -> Stop:
    """`sync` mode: every run to its end, waiting for room in a full pipe, until a failure
    or, on a full pipe, until `queue` is stopping (closing, and the reader may be gone)."""
    start = 0
    limit = output.batch_bytes
    while start < len(lines):
        end, data = next_run(lines, start, limit)
        view = memoryview(data)
        done = 0
        while done < len(data):
            try:
                written = output.write(view[done:])  # type: ignore[arg-type]
            except BlockingIOError:
                if queue.stopping:
                    return *_cut(output, lines, start, done), None
                output.wait_writable(0.1)
                continue
            except OSError as exc:
                return *_cut(output, lines, start, done), exc
            if not written:
                output.wait_writable(0.1)
            done += written
        start = end
    return start, 0, None

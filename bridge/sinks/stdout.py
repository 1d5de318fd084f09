"""The `stdout` sink: one JSON line per write on the process's stdout or stderr.

Container runtimes read stdout through a pipe, and a full pipe (a slow log driver) must not
stall a request. Writing through fd 1 with O_NONBLOCK would change it for every other writer
of the process (print() would start failing), so the sink opens the pipe anew through
/proc/self/fd/1: a separate open file description that can be non-blocking on its own. A socket
(journald) is written with MSG_DONTWAIT; a regular file through a duplicate of the descriptor.
Lines never interleave between threads: one write per whole line, under the writer's lock.
"""

from __future__ import annotations

import os
import select
import socket
import stat

from bridge.config import StdoutSinkSettings
from bridge.sinks.base import SinkStats
from bridge.sinks.writer import LineWriter, WriterSink

__all__ = ["StdoutSink", "StreamOutput"]


class StreamOutput:
    """A descriptor that can be written without blocking, whatever fd 1 or 2 turns out to be."""

    def __init__(self, fd: int) -> None:
        mode = os.fstat(fd).st_mode
        self._socket: socket.socket | None = None
        self._fd = -1
        if stat.S_ISSOCK(mode):
            self._socket = socket.socket(fileno=os.dup(fd))
        elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            try:
                self._fd = os.open(
                    f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
                )
            except OSError:
                self._fd = os.dup(fd)  # no /proc: blocking writes, slow ones go to the thread
        else:
            self._fd = os.dup(fd)

    def write(self, data: bytes) -> int:
        if self._socket is not None:
            return self._socket.send(data, socket.MSG_DONTWAIT)
        return os.write(self._fd, data)

    def wait_writable(self, timeout: float) -> None:
        target = self._socket if self._socket is not None else self._fd
        select.select([], [target], [], timeout)

    def maintenance_due(self, now: float) -> bool:
        return False

    def maintain(self) -> None:
        return None

    def fsync(self) -> None:
        return None

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
        elif self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class StdoutSink(WriterSink):
    """Writes event lines to stdout (or stderr) without ever blocking a request on a full pipe."""

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

"""The process's stdout and stderr, written without blocking and without tearing a line.

Used by the `stdout` sink (event lines) and by `diagnostics` (the bridge's own reports), so
both keep the same two promises on the same descriptor:

- Never block. Writing through fd 1 with O_NONBLOCK would change it for every other writer of
  the process (print() would start failing), so a pipe or terminal is opened anew through
  /proc/self/fd/N: a separate open file description that can be non-blocking on its own. A
  socket (journald) is written with MSG_DONTWAIT; a regular file through a duplicate.
- Never tear or interleave a line on a pipe shared by several processes (gunicorn workers
  inheriting one stdout). The kernel writes at most PIPE_BUF bytes atomically; a longer line
  can go out in parts, and another process's line could land between them. So every write to
  a pipe takes `flock` on our own open of it, which excludes the opens of other processes
  (and our other opens, as the stdout sink's and the reports' on stderr): shared for a line
  of at most PIPE_BUF bytes (atomic anyway, so such writers never wait for each other),
  exclusive for a longer one, and held from its first part to its last. A busy lock is
  reported as `BlockingIOError`, exactly like a full pipe: the writer queues the line for its
  thread and the request goes on. Forked children open the pipe anew, so that the parent's
  lock is never theirs (with an inherited open it would be, and both could write at once).
  Several lines written together (a request's, `submit_many`) go in writes of whole lines of
  at most PIPE_BUF bytes in all (`batch_bytes`): each as atomic as one short line.

A writer killed between two parts of a line leaves that line torn (the kernel drops its lock
as it dies); nothing can tell the next writer. A line abandoned at close is ended with a
newline if the pipe has room, so that it does not swallow the next process's first line.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import stat
import sys
import time

from bridge import forking

__all__ = ["PIPE_BUF", "StreamOutput"]

PIPE_BUF = select.PIPE_BUF
_LOCK_POLL_MAX = 0.01  # seconds between two tries for a busy lock, at most


def _open_own(fd: int) -> tuple[int, bool]:
    """A non-blocking open of our own for what `fd` names, and whether it is really ours."""
    try:
        own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # no /proc: blocking writes, slow ones go to the thread
        return os.dup(fd), False
    return own, True


class StreamOutput:
    """A descriptor written without blocking, whatever fd 1 or 2 turns out to be.

    `write` may write part of the data or raise `BlockingIOError` (pipe full, or another
    process mid-line); the caller must then write the rest, and nothing else, next. Not
    thread-safe: the caller serializes (`LineWriter` holds its write lock).
    """

    def __init__(self, fd: int) -> None:
        mode = os.fstat(fd).st_mode
        self._socket: socket.socket | None = None
        self._fd = -1
        self._locking = False  # a pipe opened anew: writes take the cross-process lock
        self._held = False  # we hold the lock (mid-line, or taken by wait_writable)
        self._mid_line = False  # part of a line is out: the rest must follow under the lock
        self._lock_busy = False  # the last write failed on the lock, not on a full pipe
        # False when a write could block: a regular file, or a pipe without /proc to reopen
        self.nonblocking = True
        # Several lines in one write: atomic up to PIPE_BUF on a pipe (with or without the
        # lock, so that those writers never wait for each other); any size on a file.
        self.batch_bytes = PIPE_BUF
        if stat.S_ISSOCK(mode):
            self._socket = socket.socket(fileno=os.dup(fd))
        elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            self._fd, self.nonblocking = _open_own(fd)
            self._locking = self.nonblocking and stat.S_ISFIFO(mode)
        else:
            self._fd = os.dup(fd)
            self.nonblocking = False
            self.batch_bytes = sys.maxsize
        forking.reset_in_child(self)

    def write(self, data: bytes) -> int:
        if self._socket is not None:
            return self._socket.send(data, socket.MSG_DONTWAIT)
        if not self._locking:
            return os.write(self._fd, data)
        if not self._held:
            self._lock(fcntl.LOCK_SH if len(data) <= PIPE_BUF else fcntl.LOCK_EX)
        try:
            written = os.write(self._fd, data)
        except OSError:  # full pipe (BlockingIOError) or worse: the writer tries again later
            if not self._mid_line:  # nothing of this line is out: let others go first
                self._unlock()
            raise
        if written == len(data):
            self._mid_line = False
            self._unlock()
        elif written:
            self._mid_line = True
        return written

    def settle_partial(self, rest: int) -> None:
        """A write of several lines was cut between two of them: nothing is owed, the lock
        goes (the lines after it are written one by one, each under the lock as usual)."""
        if not rest and self._mid_line:
            self._mid_line = False
            self._unlock()

    def _lock(self, kind: int) -> None:
        """Take the lock without waiting; `BlockingIOError` when another open holds it."""
        try:
            fcntl.flock(self._fd, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_busy = True
            raise
        self._lock_busy = False
        self._held = True

    def _unlock(self) -> None:
        if self._held:
            self._held = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def writable_now(self) -> bool:
        """Whether a write of at most PIPE_BUF bytes would not block (nor fail on a full pipe)."""
        if self.nonblocking:
            return True
        target = self._socket if self._socket is not None else self._fd
        return bool(select.select([], [target], [], 0)[1])

    def wait_writable(self, timeout: float) -> None:
        """Background thread: wait (at most `timeout`) for the lock if it was busy, else
        for room in the pipe. A lock taken here is kept for the next write."""
        if self._lock_busy and not self._held:
            self._wait_for_lock(time.monotonic() + timeout)
            return
        target = self._socket if self._socket is not None else self._fd
        select.select([], [target], [], timeout)

    def _wait_for_lock(self, deadline: float) -> None:
        # flock cannot wait with a deadline, and a holder may be stopped or stuck on a full
        # pipe for long: poll, backing off. Only the sink's thread ever waits here.
        pause = 0.0005
        while True:
            try:
                self._lock(fcntl.LOCK_EX)
                return
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, _LOCK_POLL_MAX)

    def after_fork_in_child(self) -> None:
        """The parent's open, and its lock, stay the parent's: the child opens the pipe anew.

        Closing the inherited descriptor leaves the parent's lock alone: flock goes with the
        last close of an open file description, and the parent still has it open.
        """
        if self._locking:
            inherited = self._fd
            self._fd, self._locking = _open_own(inherited)
            self.nonblocking = self._locking
            os.close(inherited)
        self._held = self._mid_line = self._lock_busy = False

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
            if self._mid_line:  # a line given up half-written: end it, if there is room
                with contextlib.suppress(OSError):
                    os.write(self._fd, b"\n")
            os.close(self._fd)  # releases the lock
            self._fd = -1
            self._held = self._mid_line = False

"""Size rotation (`rotate_bytes`) of the `file` sink's file, safe across the processes sharing it.

    emitter -> sink.submit -> LineWriter -> FileOutput -> SizeRotation

Every gunicorn worker appends to the same file, and several may find it too large at once.
A rotation runs under an exclusive `flock` on `<path>.lock`, taken without waiting: a busy
lock means another process is rotating, and this one reopens after it (`FileOutput` then finds
the path moved). It renames only if the path still names the very file this process found
too large, so two workers never rotate twice. A lock busy for `LOCK_BUSY_REPORT_SECONDS` is
held by a stuck process: the rotation is refused with an error (`stats()`, stderr), and the
file grows on rather than a request waiting.

A child forked during a rotation would hold the flock for as long as it lives (the lock
belongs to the open file description, which the child's copy shares), and every later
rotation would wait for it: the child closes its copies of the lock files at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from bridge import forking
from bridge.safefs import open_nofollow

__all__ = ["LOCK_BUSY_REPORT_SECONDS", "SizeRotation"]

LOCK_BUSY_REPORT_SECONDS = 60.0  # a rotation lock busy this long is held by a stuck process

# Lock files this process has open (between open and close): a fork copies them.
_lock_fds: set[int] = set()


@forking.at_fork_in_child
def _close_inherited_lock_fds() -> None:
    for fd in list(_lock_fds):
        with contextlib.suppress(OSError):
            os.close(fd)
    _lock_fds.clear()


class SizeRotation:
    """Renames `path` to `path.1` (and older backups up to `path.<backups>`) once too large."""

    __slots__ = ("_lock_busy_since", "backups", "mode", "path", "rotate_bytes")

    def __init__(self, path: Path, *, mode: int, rotate_bytes: int, backups: int) -> None:
        self.path = path
        self.mode = mode  # of the lock file
        self.rotate_bytes = rotate_bytes  # 0: never rotate
        self.backups = backups  # 0: the file is removed, not kept
        self._lock_busy_since: float | None = None

    def too_large(self, fd: int) -> bool:
        """Whether the open file `fd` has reached `rotate_bytes`."""
        return bool(self.rotate_bytes) and os.fstat(fd).st_size >= self.rotate_bytes

    def rotate(self, identity: tuple[int, int], reopen: Callable[[], None]) -> None:
        """Rotate the file `identity` names if the path still leads to it and it is too large,
        then `reopen` the path, both under the lock. Nothing when another process holds the
        lock; OSError when it has held it too long, or the lock file is not a plain file."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        lock_fd = open_nofollow(lock_path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, self.mode)
        _lock_fds.add(lock_fd)
        try:
            if not stat.S_ISREG(os.fstat(lock_fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(lock_path))
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock_busy(lock_path)  # another process rotates: reopen after it
                return
            self._lock_busy_since = None
            try:
                if self._rename(identity):
                    reopen()
            finally:
                fcntl.flock(lock_fd, fcntl.LOCK_UN)
        finally:
            _lock_fds.discard(lock_fd)  # after the unlock: a fork now only leaks an unlocked fd
            os.close(lock_fd)

    def _lock_busy(self, lock_path: Path) -> None:
        now = time.monotonic()
        if self._lock_busy_since is None:
            self._lock_busy_since = now
        elif now - self._lock_busy_since > LOCK_BUSY_REPORT_SECONDS:
            held = now - self._lock_busy_since
            raise OSError(
                errno.EAGAIN,
                f"locked by another process for {held:.0f} s: not rotating",
                str(lock_path),
            )

    def _rename(self, identity: tuple[int, int]) -> bool:
        """Under the lock: move the file and its backups along; False when another process
        rotated it already."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        if (st.st_dev, st.st_ino) != identity or st.st_size < self.rotate_bytes:
            return False
        # os.replace renames the names themselves: a symlink planted as a backup is replaced
        # or moved along, never written through.
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self.backups:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            os.unlink(self.path)
        return True

"""The `file` sink: JSON lines appended to a file that several worker processes share.

    emitter -> sink.submit -> LineWriter -> FileOutput (this module) -> the file
                                                `-> SizeRotation (`rotation`, rotate_bytes)

Every line goes out in one `write()` on a descriptor opened with O_APPEND, so gunicorn workers
appending to the same file never tear or overwrite each other's lines; the same holds for a
request's lines written together (`submit_many`: one `write()` of them all). The sink notices when
logrotate renames or removes the file (it compares the path's inode with its own, at most once
a second or every few KiB it writes, and at every `flush()`) and reopens it; `copytruncate`
needs nothing, thanks to O_APPEND. With `rotate_bytes` it rotates by itself, safely across
processes (`bridge.sinks.rotation`: under a lock no process waits for, never twice, never
held by a child forked meanwhile).

What the filesystem may do to the file, and what the sink does then:

- A full disk that took half a line: the writer completes the line later (`LineWriter`), in
  this file even if it was renamed meanwhile; a file that starts this process's life without
  a final newline (a line cut off by a crash or a full disk) gets one before the first line.
- The path no longer leads to the open file and cannot be reopened (its directory was replaced
  or removed): while the open file is still linked somewhere (renamed) lines go on into it; a
  deleted one is closed rather than filled unseen, and each line is dropped (`write_error`)
  until the path can be opened again. Either way `stats()` and stderr say why.
- A symlink, FIFO or socket appears at the path, the lock or a backup after start-up: never
  followed or opened (`safefs`, `filetarget`); the directory is created without group or world
  write. What was at the path at start-up is the operator's layout and is honoured
  (`filetarget`): a symlink to a file elsewhere is written through, and followed after
  logrotate while it still reads the same (`rotate_bytes` is then a ConfigError: it would
  rename the link); a pipe or terminal (`/dev/stdout` under docker) is written like the
  `stdout` sink, never blocking a request (`sync` is then a ConfigError, `rotate_bytes` and
  `fsync` have nothing to act on).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

from bridge import forking
from bridge.config import FileSinkSettings
from bridge.errors import ConfigError
from bridge.safefs import make_dirs
from bridge.sinks.filetarget import FileTarget, open_stream, survey
from bridge.sinks.output import LineAbandoned, Output
from bridge.sinks.rotation import SizeRotation
from bridge.sinks.writer import LineWriter
from bridge.sinks.writersink import WriterSink
from bridge.stats import SinkStats

__all__ = ["FileOutput", "FileSink", "open_output"]

# A tail left unfinished this long ago is nobody's append in progress (file times are coarse,
# a few ms; a restarted process takes far longer than this to write its first line).
STALE_TAIL_NS = 50_000_000


class FileOutput:
    """An O_APPEND descriptor on `path` that follows external rotation and rotates by size.

    `target`: what the path led to at start-up (`filetarget.survey`); a plain path if omitted.
    """

    __slots__ = (
        "__weakref__",
        "_abandon",
        "_bytes_since_check",
        "_careful",
        "_check_bytes",
        "_fd",
        "_fresh_line",
        "_identity",
        "_maintenance_pending",
        "_next_check",
        "_rotation",
        "_tail_size",
        "_target",
        "_torn",
        "_unusable",
        "check_interval",
        "mode",
        "path",
    )

    # One O_APPEND write() to a regular file is never interleaved with another's: any size.
    batch_bytes = sys.maxsize

    def __init__(
        self,
        path: Path,
        *,
        mode: int,
        rotate_bytes: int,
        backups: int,
        check_interval: float = 1.0,
        target: FileTarget | None = None,
    ) -> None:
        self.path = path
        self.check_interval = check_interval
        self.mode = mode
        self._rotation = SizeRotation(path, mode=mode, rotate_bytes=rotate_bytes, backups=backups)
        self._check_bytes = max(4096, rotate_bytes // 16) if rotate_bytes else 1 << 62
        self._torn = 0  # bytes of a line still to write, after a partial write into _fd
        self._abandon = False  # that line began in a file no longer written: give it up
        self._fresh_line = False  # the file ends without a newline: start on a new line
        self._tail_size = 0  # the file's size when _fresh_line was decided
        self._unusable: tuple[int, str] | None = None  # why _fd is -1 (errno, message)
        self._careful = False  # any of the four above: write() takes the slow path
        make_dirs(path.parent)
        self._target = target or FileTarget(path)
        self._fd = self._open()
        self._identity = self._fd_identity()
        self._update_careful()
        self._next_check = time.monotonic() + self.check_interval
        self._bytes_since_check = 0
        self._maintenance_pending = False
        forking.reset_in_child(self)

    def _open(self) -> int:
        """Open what the path leads to (`FileTarget`): a regular file, never a planted link."""
        return self._checked(self._target.open(self.mode))

    def _checked(self, fd: int) -> int:
        """Refuse what is not a file to append to; note a last line left without its newline."""
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(self.path))
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            self._fresh_line = False
            if st.st_size:
                with contextlib.suppress(OSError):  # write-only: nothing to check with
                    self._fresh_line = os.pread(fd, 1, st.st_size - 1) != b"\n"
            self._tail_size = st.st_size
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _fd_identity(self) -> tuple[int, int]:
        st = os.fstat(self._fd)
        return st.st_dev, st.st_ino

    def _update_careful(self) -> None:
        self._careful = bool(self._torn or self._fresh_line or self._fd < 0)

    def write(self, data: bytes) -> int:
        if self._careful:
            return self._write_carefully(data)
        written = os.write(self._fd, data)
        self._bytes_since_check += written
        if written != len(data):
            self._wrote_part(written, len(data))
        return written

    def _tail_is_stale(self) -> bool:
        """Was the unfinished last line seen at open left by a writer that is gone?

        Another worker may have been in the middle of appending a long line when we looked:
        then the file has grown since, its line ends whole (an O_APPEND `write()` to a regular
        file is not interleaved), and a newline of ours would only add an empty line. A tail
        that has not moved since open, and was last written a while ago, is a line cut short
        for good (a full disk, a SIGKILL). A long append may still be under way while the size
        stands still (it grows a page at a time), but it set the file's mtime when it began.
        """
        try:
            st = os.fstat(self._fd)
        except OSError:
            return False
        idle_ns = time.time_ns() - st.st_mtime_ns
        return st.st_size == self._tail_size and idle_ns > STALE_TAIL_NS

    def _wrote_part(self, written: int, size: int) -> None:
        if written:  # the rest is the next write (LineWriter's promise)
            self._torn = size - written
            self._careful = True

    def settle_partial(self, rest: int) -> None:
        """A write of several lines was cut: only the rest of the line it cut is owed."""
        self._torn = rest
        self._update_careful()

    def _write_carefully(self, data: bytes) -> int:
        if self._torn:
            if self._abandon:
                self._torn = 0
                self._abandon = False
                self._update_careful()
                raise LineAbandoned(
                    errno.ESTALE, "its start is in a file no longer written", str(self.path)
                )
            written = os.write(self._fd, data)
            self._bytes_since_check += written
            self._torn -= written
            self._update_careful()
            return written
        if self._unusable is not None:
            raise OSError(*self._unusable)
        if self._fresh_line and self._tail_is_stale():
            written = os.write(self._fd, b"\n" + bytes(data)) - 1
        else:
            written = os.write(self._fd, data)
        if self._fresh_line:
            self._fresh_line = False
            self._update_careful()
        self._bytes_since_check += written
        self._wrote_part(written, len(data))
        return written

    def wait_writable(self, timeout: float) -> None:
        return None  # regular files are always writable

    def maintenance_due(self, now: float) -> bool:
        """Rate-limited: stat the path at most every `check_interval` or `_check_bytes`."""
        if self._maintenance_pending:
            return True
        if now < self._next_check and self._bytes_since_check < self._check_bytes:
            return False
        self._next_check = now + self.check_interval
        self._bytes_since_check = 0
        self._maintenance_pending = self._fd < 0 or self._moved() or self._too_large()
        return self._maintenance_pending

    def _moved(self) -> bool:
        """Whether the path no longer leads to the open file (a planted symlink never does)."""
        return self._target.identity() != self._identity

    def _too_large(self) -> bool:
        return self._rotation.too_large(self._fd)

    def maintain(self) -> None:
        """Rotate if too large, reopen if the path leads elsewhere; OSError if that failed."""
        self._maintenance_pending = False
        if self._fd >= 0 and self._torn and not self._abandon:
            if os.fstat(self._fd).st_nlink:
                return  # finish the line begun here first (the next check comes back)
            self._abandon = True  # deleted: the line's start is gone with the file
        try:
            if self._fd >= 0 and self._too_large():
                self._rotation.rotate(self._identity, self._reopen)
        finally:  # a rotation refused must not keep a moved file from being followed
            if self._fd < 0 or self._moved():
                self._reopen()

    def _reopen(self) -> None:
        try:
            new_fd = self._open()
        except OSError as exc:
            if self._fd >= 0 and os.fstat(self._fd).st_nlink == 0:
                # Deleted: lines written on would fill a file nobody can read. Drop them,
                # counted, until the path can be opened again.
                os.close(self._fd)
                self._fd = -1
                self._abandon = bool(self._torn)
            if self._fd < 0:
                reason = exc.strerror or str(exc)
                self._unusable = (exc.errno or errno.EIO, f"cannot reopen {self.path}: {reason}")
            self._update_careful()
            raise
        old_fd, self._fd = self._fd, new_fd
        self._identity = self._fd_identity()
        if old_fd >= 0:
            os.close(old_fd)
        self._abandon = bool(self._torn)
        self._unusable = None
        self._update_careful()

    def after_fork_in_child(self) -> None:
        """A line the parent left half-written is the parent's to finish; ours start anew."""
        if self._torn:
            self._torn = 0
            self._abandon = False
            self._fresh_line = True
            self._update_careful()

    def fsync(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._unusable = (errno.EBADF, f"{self.path} is closed")
            self._update_careful()


class FileSink(WriterSink):
    """Appends event lines to `settings.path`; see the module docstring for the guarantees."""

    def __init__(
        self,
        settings: FileSinkSettings,
        *,
        config_key: str = "sinks",
        check_interval: float = 1.0,
    ) -> None:
        self.name = settings.name
        self.kind = "file"
        self.settings = settings
        self._stats = SinkStats()
        output = open_output(settings, config_key, check_interval)
        self._writer = LineWriter(
            output,
            name=self.name,
            stats=self._stats,
            overflow=settings.overflow,
            max_events=settings.queue_max_events,
            max_bytes=settings.queue_max_bytes,
            sync=settings.sync,
            fsync=bool(settings.fsync),
        )

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.settings.path)}


def open_output(
    settings: FileSinkSettings, config_key: str, check_interval: float, *, audit: bool = False
) -> Output:
    """What the path leads to at start-up decides the output; ConfigError when unusable.

    `audit`: a regular file only (the audit sink: a chain must be read back to be verified).
    """
    try:
        target = survey(settings.path)
    except OSError as exc:
        raise _path_error(settings, config_key, exc) from None
    if audit and target.stream:
        raise ConfigError(
            f"{config_key}.path",
            str(settings.path),
            "a regular file for an audit sink (a pipe or terminal cannot be verified)",
        )
    if settings.rotate_bytes and target.link is not None and not target.stream:
        raise ConfigError(
            f"{config_key}.rotate_bytes",
            settings.rotate_bytes,
            "0 when path is a symlink: size rotation renames the path, which would move the "
            "link and leave the file it leads to growing; rotate that file with logrotate "
            "(the sink follows it)",
        )
    if settings.sync and target.stream:
        raise ConfigError(
            f"{config_key}.sync",
            settings.sync,
            "false when path is a pipe or a terminal: a request would wait whenever nobody "
            "reads it (without sync a full pipe queues the line)",
        )
    try:
        if target.stream:
            return open_stream(target)
        return FileOutput(
            settings.path,
            mode=settings.file_mode,
            rotate_bytes=settings.rotate_bytes,
            backups=settings.backups,
            check_interval=check_interval,
            target=target,
        )
    except OSError as exc:
        raise _path_error(settings, config_key, exc) from None


def _path_error(settings: FileSinkSettings, config_key: str, exc: OSError) -> ConfigError:
    return ConfigError(
        f"{config_key}.path",
        str(settings.path),
        f"a file path this process can create and append to ({exc.strerror or exc})",
    )

"""The `file` sink: JSON lines appended to a file that several worker processes share.

Every line goes out in one `write()` on a descriptor opened with O_APPEND, so gunicorn workers
appending to the same file never tear or overwrite each other's lines. The sink notices when
logrotate renames or removes the file (it compares the path's inode with its own, at most once
a second or every few KiB it writes) and reopens it; `copytruncate` needs nothing, thanks to
O_APPEND. With `rotate_bytes` it rotates by itself, safely across processes: the rotation runs
under an exclusive `flock` on `<path>.lock` and only if the path still names the file this
process found too large, so two workers never rotate twice.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

from bridge.config import FileSinkSettings
from bridge.errors import ConfigError
from bridge.sinks.base import SinkStats
from bridge.sinks.writer import LineWriter, WriterSink

__all__ = ["FileOutput", "FileSink"]


class FileOutput:
    """An O_APPEND descriptor on `path` that follows external rotation and rotates by size."""

    def __init__(
        self,
        path: Path,
        *,
        mode: int,
        rotate_bytes: int,
        backups: int,
        check_interval: float = 1.0,
    ) -> None:
        self.path = path
        self.check_interval = check_interval
        self.mode = mode
        self.rotate_bytes = rotate_bytes
        self.backups = backups
        self._check_bytes = max(4096, rotate_bytes // 16) if rotate_bytes else 1 << 62
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open()
        self._identity = self._fd_identity()
        self._next_check = time.monotonic() + self.check_interval
        self._bytes_since_check = 0
        self._maintenance_pending = False

    def _open(self) -> int:
        for _ in range(10):
            try:
                fd = os.open(
                    self.path,
                    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                    self.mode,
                )
                os.fchmod(fd, self.mode)  # the umask must not loosen or tighten the mode asked
                return fd
            except FileExistsError:
                pass
            try:
                return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            except FileNotFoundError:  # rotated away between the two opens: try again
                continue
        raise OSError(f"could not open {self.path}: it keeps disappearing")

    def _fd_identity(self) -> tuple[int, int]:
        st = os.fstat(self._fd)
        return st.st_dev, st.st_ino

    def write(self, data: bytes) -> int:
        written = os.write(self._fd, data)
        self._bytes_since_check += written
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
        self._maintenance_pending = self._moved() or self._too_large()
        return self._maintenance_pending

    def _moved(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._identity

    def _too_large(self) -> bool:
        return bool(self.rotate_bytes) and os.fstat(self._fd).st_size >= self.rotate_bytes

    def maintain(self) -> None:
        self._maintenance_pending = False
        if self._too_large():
            self._rotate()
        if self._moved():
            self._reopen()

    def _rotate(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        lock_fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, self.mode)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                return
            if (st.st_dev, st.st_ino) != self._identity or st.st_size < self.rotate_bytes:
                return  # another process rotated it already
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            if self.backups:
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            else:
                os.unlink(self.path)
            self._reopen()
        finally:
            os.close(lock_fd)  # closing releases the flock

    def _reopen(self) -> None:
        new_fd = self._open()
        old_fd, self._fd = self._fd, new_fd
        self._identity = self._fd_identity()
        os.close(old_fd)

    def fsync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


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
        try:
            output = FileOutput(
                settings.path,
                mode=settings.file_mode,
                rotate_bytes=settings.rotate_bytes,
                backups=settings.backups,
                check_interval=check_interval,
            )
        except OSError as exc:
            raise ConfigError(
                f"{config_key}.path",
                str(settings.path),
                f"a file path this process can create and append to ({exc.strerror or exc})",
            ) from None
        self._writer = LineWriter(
            output,
            name=self.name,
            stats=self._stats,
            overflow=settings.overflow,
            max_events=settings.queue_max_events,
            max_bytes=settings.queue_max_bytes,
            sync=settings.sync,
            fsync=settings.fsync,
        )

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.settings.path)}

"""Where the `file` sink's path leads: decided at start-up, and kept to when it reopens.

What is at the path when the sink is built is the operator's layout, and is honoured; what
appears there later is not trusted (a local user may own the directory, and the bridge may
run as root):

- Nothing, or a regular file: opened with O_NOFOLLOW and created if missing (`safefs`). A
  symlink found at the path later was planted there: refused, never followed.
- A symlink (`/var/log/app/events.jsonl -> /data/events.jsonl`): its text (`os.readlink`) and
  the file it leads to (resolved once, through any further links) are remembered. Later opens
  (after logrotate renamed that file) go straight to that file with O_NOFOLLOW, and only while
  the path is still a symlink with the same text: a symlink re-pointed or swapped in since is
  refused. The file is never created through the link: a dangling symlink is a ConfigError at
  start-up, and a target that disappears later is not recreated. A plain file put in the
  link's place (logrotate renaming the link itself) makes it a plain path from then on.
- A pipe or a terminal, at the path or through a symlink (`/dev/stdout` under docker or on a
  terminal, an operator's `mkfifo`): `stream`; opened once, without blocking, and written
  like the `stdout` sink (`StreamOutput`), so a full pipe queues the line instead of blocking
  the request. A FIFO nobody reads is refused at start-up (waiting for a reader would hang).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from bridge.safefs import open_nofollow
from bridge.streams import StreamOutput

__all__ = ["FileTarget", "open_stream", "survey"]


class FileTarget:
    """The file an open of `path` may reach now, given what was there at start-up."""

    __slots__ = ("link", "path", "resolved", "stream")

    def __init__(
        self, path: Path, *, link: str | None = None, resolved: Path | None = None
    ) -> None:
        self.path = path
        self.link = link  # the path's symlink text at start-up; None: a plain path
        self.resolved = resolved or path  # what opens reach: the link's file, or the path
        self.stream = False  # a pipe or terminal: `open_stream`, never `open`

    def open(self, mode: int) -> int:
        """An O_APPEND descriptor on the file, created with `mode` on a plain path only.

        OSError when it cannot be opened: ELOOP for a symlink planted or re-pointed, ENOENT
        for the file a symlink leads to gone (never created through the link).
        """
        if self.link is not None:
            now = _link_text(self.path)
            if now == self.link:
                try:
                    return _open_append(self.resolved, 0, mode)
                except FileNotFoundError:
                    raise OSError(
                        errno.ENOENT,
                        f"the file the symlink leads to ({self.resolved}) is gone, and is "
                        "never created through a symlink",
                        str(self.path),
                    ) from None
            if now is not None:
                raise OSError(
                    errno.ELOOP,
                    f"a symlink re-pointed since start-up (to {now!r}, was {self.link!r}): "
                    "not followed",
                    str(self.path),
                )
            self.link, self.resolved = None, self.path  # a plain file took the link's place
        for _ in range(10):
            try:
                fd = _open_append(self.path, os.O_CREAT | os.O_EXCL, mode)
            except FileExistsError:
                pass
            else:
                os.fchmod(fd, mode)  # the umask must not loosen or tighten the mode asked
                return fd
            try:
                return _open_append(self.path, 0, mode)
            except FileNotFoundError:  # rotated away between the two opens: try again
                continue
        raise OSError(errno.ENOENT, f"could not open {self.path}: it keeps disappearing")

    def identity(self) -> tuple[int, int] | None:
        """(st_dev, st_ino) of what `open` would reach now, following nothing planted;
        None when nothing is there or the path's symlink changed."""
        try:
            if self.link is not None and os.readlink(self.path) != self.link:
                return None
            st = os.lstat(self.resolved)
        except OSError:
            return None
        return st.st_dev, st.st_ino


def survey(path: Path) -> FileTarget:
    """What the operator put at `path` before start-up; OSError for what cannot be used."""
    target = FileTarget(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return target
    if stat.S_ISLNK(st.st_mode):
        text = os.readlink(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise OSError(
                errno.ENOENT,
                f"a dangling symlink (to {text}): its target is never created; create that "
                "file first, or point the link at an existing one",
                str(path),
            ) from None
        if stat.S_ISREG(st.st_mode):
            target.link = text
            target.resolved = Path(os.path.realpath(path, strict=True))
            if os.readlink(path) != text:
                raise OSError(errno.EAGAIN, "a symlink re-pointed during start-up", str(path))
            return target
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
        target.stream = True
    elif stat.S_ISSOCK(st.st_mode):
        raise OSError(
            errno.EINVAL,
            "a socket (for the process's own stdout or stderr, use a stdout sink)",
            str(path),
        )
    elif not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file, a pipe or a terminal", str(path))
    return target


def open_stream(target: FileTarget) -> StreamOutput:
    """The pipe or terminal at `target.path`, opened once without blocking (following the
    operator's symlink); ENXIO for a FIFO nobody reads, instead of waiting for a reader."""
    try:
        fd = os.open(target.path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise OSError(
                errno.ENXIO, "a FIFO with no reader: start its reader first", str(target.path)
            ) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
            raise OSError(errno.EAGAIN, "replaced during start-up", str(target.path))
        return StreamOutput(fd)  # it opens the pipe anew, for itself
    finally:
        os.close(fd)


def _link_text(path: Path) -> str | None:
    """The symlink's text; None when the path is not a symlink (or is gone)."""
    try:
        return os.readlink(path)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):
            return None
        raise


def _open_append(path: Path, extra: int, mode: int) -> int:
    # Read access only serves to look at the last byte; O_NONBLOCK: a FIFO never hangs us.
    flags = os.O_APPEND | os.O_NONBLOCK | extra
    try:
        try:
            return open_nofollow(path, flags | os.O_RDWR, mode)
        except PermissionError:
            return open_nofollow(path, flags | os.O_WRONLY, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "a symlink: not followed", str(path)) from None
        raise

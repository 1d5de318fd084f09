"""Creating the bridge's directories and opening its files without trusting the filesystem.

Log, lock, spool and dead-letter files often live in directories other local users can reach,
and the bridge may run as root. So: directories are created without group or world write
whatever the umask, and files are opened with `O_NOFOLLOW`, so a symlink planted at the path
after start-up is refused (ELOOP) instead of followed, and the target of a dangling symlink is
never created. Symlinks in the directory part of a path are followed: they are the operator's
own layout (`/var/log/app -> /data/log`), set up before the app starts.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DIR_MODE", "make_dirs", "open_nofollow"]

DIR_MODE = 0o750  # never group or world writable, whatever the umask


def make_dirs(path: Path, mode: int = DIR_MODE) -> None:
    """Create `path` and its missing parents with `mode`, less group and world write.

    The umask can only narrow it further.

    Existing directories are left as they are: their mode is the operator's choice.
    """
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode & ~0o022)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue


def open_nofollow(path: Path | str, flags: int, mode: int = 0o600) -> int:
    """`os.open` that refuses a symlink as the final component (raises OSError ELOOP)."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)

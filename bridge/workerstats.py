"""Every worker's counters where other processes can read them: `flask bridge stats`, metrics.

Counters live in each process (`SinkStats`); a gunicorn deployment has several workers, and the
`flask bridge stats` command is yet another process. So each process that emits keeps a small
JSON snapshot of its `stats()` in a stats directory, one file per process and app, written
atomically (a temporary file renamed over it) at most once per `INTERVAL` and only when a
counter changed, and removed at a clean exit. The command reads them all (`read_snapshots`).

One daemon thread per publishing app does it, started by the app's first request (a flag check
on the request path, nothing else) rather than at `init_app`: gunicorn's master imports the app
with `--preload` but never serves, and a thread does not survive a fork anyway. The same tick
feeds the listeners (Prometheus counters, `bridge.metrics`), so a worker that is not scraped
still publishes its counts. Sits above the emitter (it reads `stats()`), below the CLI.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import re
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bridge import forking
from bridge.diagnostics import report
from bridge.safefs import make_dirs, open_nofollow

__all__ = [
    "INTERVAL",
    "STATS_DIR_ENV",
    "Publisher",
    "WorkerSnapshot",
    "check_private",
    "default_root",
    "publish",
    "publisher_of",
    "read_snapshots",
    "stats_dir",
    "total",
]

STATS_DIR_ENV = "BRIDGE_STATS_DIR"
INTERVAL = 1.0  # seconds between snapshots: fresh enough for a person, nothing for a worker

Listener = Callable[[str, Mapping[str, Any]], None]  # (service, stats()) on every tick


class Emits(Protocol):
    """What a publisher needs of an `Emitter`."""

    service: str

    def stats(self) -> dict[str, Any]: ...


def stats_dir(service: str, configured: str | os.PathLike[str] | None = None) -> Path:
    """Where the snapshots of `service` live: `configured`, else `$BRIDGE_STATS_DIR`, else a
    directory of this user's under the system temp dir; one subdirectory per service."""
    base = configured or os.environ.get(STATS_DIR_ENV)
    root = Path(base) if base else default_root()
    return root / (re.sub(r"[^A-Za-z0-9_.-]", "_", service).strip(".") or "service")


def default_root() -> Path:
    """This user's directory under the system temp dir (shared with every other user)."""
    return Path(tempfile.gettempdir()) / f"flask-bridge-{os.getuid()}"


def check_private(root: Path) -> None:
    """OSError unless `root` is a real directory of this user that nobody else may write:
    another local user could have made `/tmp/flask-bridge-<uid>` first, to read the counters
    or plant snapshots. A configured directory is the operator's and is not checked."""
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise OSError(f"{root} is not a private directory of this user: not used")


class Publisher:
    """Writes one emitter's snapshot every `interval` seconds, from one daemon thread."""

    _numbers = itertools.count(1)  # several apps of one service in a process: a file each

    def __init__(self, emitter: Emits, directory: Path, interval: float = INTERVAL) -> None:
        self._emitter = weakref.ref(emitter)
        self.service = emitter.service
        self.directory = directory
        self.interval = interval
        self.listeners: list[Listener] = []
        self._number = next(Publisher._numbers)  # atomic: apps built on two threads at once
        self._start()
        forking.reset_in_child(self)

    def _start(self) -> None:
        self._lock = threading.Lock()
        self._tick_lock = threading.Lock()  # the thread's tick and a scrape's (bridge.metrics)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.running = False  # read on the request path: a plain attribute, no lock
        self._last: dict[str, Any] | None = None
        self.path = self.directory / f"{os.getpid()}-{self._number}.json"
        self._started = time.time()

    def after_fork_in_child(self) -> None:
        """A worker publishes its own counters, to its own file, from its own thread."""
        self._start()

    def ensure_running(self) -> None:
        """Start the thread once per process (called by each request until it runs)."""
        if self.running:
            return
        with self._lock:
            if self.running or self._stop.is_set():
                return
            self._thread = threading.Thread(
                target=self._run, name=f"bridge-stats-{self.service}", daemon=True
            )
            self._thread.start()
            self.running = True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._emitter() is None:  # its app was collected without a stop(): end here
                self.stop()
                return
            self.tick()

    def tick(self) -> None:
        """Feed the listeners and write the snapshot if a counter changed; never raises."""
        emitter = self._emitter()
        if emitter is None:
            return
        try:
            with self._tick_lock:
                stats = emitter.stats()
                for listener in self.listeners:
                    listener(self.service, stats)
                if stats != self._last:
                    self._write(stats)
                    self._last = stats
        except Exception as exc:  # a full disk must not end the thread, nor flood stderr
            report("stats-file", f"could not publish stats to {self.directory}: {exc}")

    def _write(self, stats: dict[str, Any]) -> None:
        make_dirs(self.directory, 0o700)
        if self.directory.parent == default_root():
            check_private(self.directory.parent)
        record = {
            "pid": os.getpid(),
            "service": self.service,
            "started": self._started,
            "updated": time.time(),
            "stats": stats,
        }
        temporary = self.path.with_suffix(".tmp")
        fd = open_nofollow(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with open(fd, "w", encoding="utf-8") as out:
            json.dump(record, out)
        os.replace(temporary, self.path)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the thread and remove this process's file (a clean exit leaves none)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        for path in (self.path, self.path.with_suffix(".tmp")):
            with contextlib.suppress(OSError):
                path.unlink()


_publishers: weakref.WeakKeyDictionary[Any, Publisher] = weakref.WeakKeyDictionary()


def publish(
    app: Any,
    emitter: Emits,
    directory: str | os.PathLike[str] | None = None,
    *,
    on_request: bool = True,
) -> Publisher:
    """Publish `emitter`'s counters for `flask bridge stats`, starting at `app`'s first
    request; the same publisher on a second call. `publisher.stop()` ends it. With
    `on_request=False` the caller starts it (`ensure_running`; the bridge's WSGI wrapper does,
    for the price of one attribute test per request)."""
    publisher = _publishers.get(emitter)
    if publisher is None:
        configured = directory or getattr(getattr(emitter, "settings", None), "stats_dir", None)
        publisher = Publisher(emitter, stats_dir(emitter.service, configured))
        _publishers[emitter] = publisher
        if on_request:
            app.before_request(publisher.ensure_running)
    return publisher


def publisher_of(emitter: Emits) -> Publisher | None:
    return _publishers.get(emitter)


@atexit.register
def _stop_all() -> None:
    for publisher in list(_publishers.values()):
        publisher.stop()


# --- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSnapshot:
    """One process's last snapshot, as `flask bridge stats` shows it."""

    pid: int
    alive: bool
    updated: float
    stats: dict[str, Any]
    path: Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


_MAX_PID = 2**31 - 1  # os.kill(0 or -1) would ask about a whole process group, or everyone
_MAX_SNAPSHOT = 1 << 20  # a snapshot is a few kB


def _read_regular(path: Path) -> str:
    """The text of `path` if it is a regular file: a symlink is refused (a planted one is
    never followed) and a FIFO or device is not read (it would block or never end)."""
    fd = open_nofollow(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, encoding="utf-8") as source:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        return source.read(_MAX_SNAPSHOT)


def read_snapshots(directory: Path) -> list[WorkerSnapshot]:
    """Every snapshot in `directory`, oldest process first; unreadable files are skipped (one
    may be replaced while it is read, and the next read sees it)."""
    found: list[WorkerSnapshot] = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            record = json.loads(_read_regular(path))
            pid, updated, stats = int(record["pid"]), float(record["updated"]), record["stats"]
        except (OSError, ValueError, KeyError, TypeError, OverflowError):
            continue
        if _well_formed(stats) and 0 < pid <= _MAX_PID:
            found.append(WorkerSnapshot(pid, _alive(pid), updated, stats, path))
    return sorted(found, key=lambda snapshot: (snapshot.pid, snapshot.path.name))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _well_formed(stats: Any) -> bool:
    """The shape `stats()` gives (a file of another shape in the directory is not ours):
    `sinks` a table of tables whose counters are ints (`dropped_by_reason` a table of ints),
    `receiver_errors` an int."""
    if not isinstance(stats, dict) or not _is_count(stats.get("receiver_errors", 0)):
        return False
    sinks = stats.get("sinks", {})
    if not isinstance(sinks, dict):
        return False
    for counters in sinks.values():
        if not isinstance(counters, dict):
            return False
        reasons = counters.get("dropped_by_reason", {})
        if not isinstance(reasons, dict) or not all(_is_count(n) for n in reasons.values()):
            return False
    return True


def total(snapshots: list[WorkerSnapshot]) -> dict[str, Any]:
    """The sum over workers, shaped like `stats()`: counters added, per sink and reason;
    `last_error` is the most recent one of any worker."""
    sinks: dict[str, dict[str, Any]] = {}
    errors = 0
    for snapshot in snapshots:
        errors += int(snapshot.stats.get("receiver_errors", 0))
        for name, counters in snapshot.stats.get("sinks", {}).items():
            into = sinks.setdefault(name, {"dropped_by_reason": {}})
            for key, value in counters.items():
                if key == "dropped_by_reason":
                    for reason, n in value.items():
                        into[key][reason] = into[key].get(reason, 0) + n
                elif isinstance(value, int) and not isinstance(value, bool):
                    into[key] = into.get(key, 0) + value
                elif key == "last_error_time" and (value or 0) > (into.get(key) or 0):
                    into[key], into["last_error"] = value, counters.get("last_error")
    return {"sinks": sinks, "receiver_errors": errors}

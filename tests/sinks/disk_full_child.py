"""A process whose file sink runs out of room in the middle of a line, then gets room back.

`python -m tests.sinks.disk_full_child HOW SCENARIO PATH` prints one JSON object: the sink's
stats (and, for `reopen`, the second sink's). HOW is how the room runs out, for real:

- `fsize`: RLIMIT_FSIZE (SIGXFSZ ignored) lets a write through up to the limit, then fails
  with EFBIG; raising the limit again is room coming back. Needs no privilege.
- `tmpfs`: PATH is on a small tmpfs the test mounted; a filler file takes every free page but
  the end of the log's last one (so a write fills that, then fails with ENOSPC); deleting the
  filler is room coming back.

SCENARIO: `complete` (the line cut short is finished once there is room, and the lines
submitted meanwhile follow it), `batch` (the same with a request's lines written together:
the one write of them all is cut inside the first), `batch_rotated` (that, with the lines
after the cut one overflowing a queue of one, and the file renamed once the cut line is
finished), `reopen` (the sink closes with the line unfinished; a sink opened later starts on
a fresh line) or `deleted` (the operator deletes the full log to make room: the sink lets the
deleted file go, gives up the line begun in it, and writes on into a new file).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

from bridge.config import FileSinkSettings
from bridge.sinks.file import FileSink

ROOM = 40  # bytes of the cut line that fit
PAGE = 4096


def line(n: int, pad: int = 100) -> bytes:
    return json.dumps({"n": n, "pad": "x" * pad}).encode() + b"\n"


class Fsize:
    """Room ends at the file's current size plus ROOM bytes."""

    def __init__(self, path: Path) -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        self.path = path
        self.hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]

    @staticmethod
    def first_pad() -> int:
        return 100

    def take_room(self) -> None:
        limit = self.path.stat().st_size + ROOM
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, self.hard))

    def give_room(self) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.hard, self.hard))


class Tmpfs:
    """Room ends at the end of the log's last page: a filler takes every other page."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path.with_name("filler")

    @staticmethod
    def first_pad() -> int:
        """The first line ends ROOM bytes before its page does."""
        return PAGE - ROOM - len(line(0, 0))

    def take_room(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            chunk = b"\0" * PAGE
            while True:
                os.write(fd, chunk)  # a partial write still takes the last page
        except OSError:
            pass
        finally:
            os.close(fd)

    def give_room(self) -> None:
        self.filler.unlink()


def first_line(how: str) -> bytes:
    """The line written before the room runs out."""
    return line(0, (Fsize if how == "fsize" else Tmpfs).first_pad())


def make_sink(path: Path, check_interval: float = 3600.0) -> FileSink:
    settings = FileSinkSettings(type="file", name="file-0", path=path)
    return patient(FileSink(settings, check_interval=check_interval))


def patient(sink: FileSink) -> FileSink:
    """A write preempted on a loaded machine must not count as a slow disk here (it would
    send the writes to the thread for 5 s and change which path each line takes)."""
    sink._writer.slow_write_seconds = 60.0
    return sink


def wait_for_failure(sink: FileSink) -> None:
    """Until the sink's thread has tried the line's rest and failed (bounded)."""
    for _ in range(400):
        sink.flush(0.05)
        if sink.stats()["last_error"]:
            return
    raise SystemExit("the rest of the line was never tried")


def complete(room: Fsize | Tmpfs, path: Path) -> dict[str, Any]:
    sink = make_sink(path)
    sink.submit(line(0, room.first_pad()))
    assert sink.flush(5.0)
    room.take_room()
    sink.submit(line(1))  # only its first ROOM bytes fit
    wait_for_failure(sink)
    sink.submit(line(2))  # behind the rest of line 1
    sink.submit(line(3))
    room.give_room()
    flushed = sink.flush(10.0)
    stats = sink.stats()
    sink.close(5.0)
    return {"flushed": flushed, "stats": stats}


def batch(room: Fsize | Tmpfs, path: Path) -> dict[str, Any]:
    sink = make_sink(path)
    sink.submit(line(0, room.first_pad()))
    assert sink.flush(5.0)
    room.take_room()
    accepted = sink.submit_many([line(1), line(2), line(3)])  # only ROOM bytes of line 1 fit
    wait_for_failure(sink)
    room.give_room()
    flushed = sink.flush(10.0)
    stats = sink.stats()
    sink.close(5.0)
    return {"accepted": accepted, "flushed": flushed, "stats": stats}


def batch_rotated(room: Fsize | Tmpfs, path: Path) -> dict[str, Any]:
    settings = FileSinkSettings(type="file", name="file-0", path=path, queue_max_events=1)
    sink = patient(FileSink(settings, check_interval=0.0))
    sink.submit(line(0, room.first_pad()))
    assert sink.flush(5.0)
    room.take_room()
    accepted = sink.submit_many([line(1), line(2), line(3)])  # 2 and 3 find the queue full
    wait_for_failure(sink)
    room.give_room()
    flushed = sink.flush(10.0)
    path.rename(path.with_name(path.name + ".1"))  # logrotate: followed at the next write
    sink.submit(line(4))
    flushed = sink.flush(10.0) and flushed
    stats = sink.stats()
    sink.close(5.0)
    return {"accepted": accepted, "flushed": flushed, "stats": stats}


def restarted_later(path: Path) -> None:
    """The file as a process restarted a while after the writer died finds it: last written
    a second ago (an append still under way would have touched it just now)."""
    last = path.stat().st_mtime_ns - 1_000_000_000
    os.utime(path, ns=(last, last))


def reopen(room: Fsize | Tmpfs, path: Path) -> dict[str, Any]:
    sink = make_sink(path)
    sink.submit(line(0, room.first_pad()))
    assert sink.flush(5.0)
    room.take_room()
    sink.submit(line(1))
    wait_for_failure(sink)
    closed = sink.close(0.2)
    stats = sink.stats()
    room.give_room()
    restarted_later(path)
    later = make_sink(path)  # a restarted process, say
    later.submit(line(2))
    later.close(5.0)
    return {"closed": closed, "stats": stats, "later": later.stats()}


def deleted(room: Fsize | Tmpfs, path: Path) -> dict[str, Any]:
    sink = make_sink(path, check_interval=0.0)
    sink.submit(line(0, room.first_pad()))
    assert sink.flush(5.0)
    room.take_room()
    sink.submit(line(1))
    wait_for_failure(sink)
    sink.submit(line(2))
    path.unlink()  # the sink's descriptor still holds its pages until it lets it go
    flushed = sink.flush(10.0)
    stats = sink.stats()
    sink.close(5.0)
    return {"flushed": flushed, "stats": stats}


SCENARIOS = {
    "complete": complete,
    "batch": batch,
    "batch_rotated": batch_rotated,
    "reopen": reopen,
    "deleted": deleted,
}


def main() -> None:
    how, scenario, where = sys.argv[1:4]
    path = Path(where)
    room = Fsize(path) if how == "fsize" else Tmpfs(path)
    print(json.dumps(SCENARIOS[scenario](room, path)))


if __name__ == "__main__":
    main()

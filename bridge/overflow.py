"""What a full queue does with one more line: the overflow policies, implemented once.

Every bounded store of the bridge (a file or stdout sink's queue, an http sink's memory queue,
the spool under its size cap) says what "full" means, how to evict its oldest line and how to
wait for its consumer; `make_room` applies the policy the user configured:

    drop_newest  refuse the new line
    drop_oldest  evict the oldest lines until the new one fits
    spool        (an http sink with `spool_dir`) the spool is the queue: at its size cap,
                 like drop_oldest
    block        wait for the consumer to make room, at most `BLOCK_SECONDS`, then refuse

The caller counts a refusal (`queue_overflow`, `spool_full`); the store counts its evictions.
Memory stays bounded whatever the policy: `block` waits a bounded time, never forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["BLOCK_SECONDS", "POLICIES", "Room", "make_room"]

POLICIES = ("drop_newest", "drop_oldest", "block", "spool")
BLOCK_SECONDS = 1.0


class Room(Protocol):
    """A bounded store, seen by `make_room` (the store's lock is held throughout)."""

    def fits(self, size: int) -> bool:
        """Would `size` more bytes (one more line) stay within the bounds?"""
        ...

    def evict_oldest(self) -> bool:
        """Drop the oldest line(s) that may be dropped, counted; False when none may."""
        ...

    def wait_for_room(self, remaining: float) -> bool:
        """Wake the consumer and wait up to `remaining` seconds for it to make progress;
        False when waiting is pointless (the store is closing)."""
        ...


def make_room(
    room: Room,
    size: int,
    policy: str,
    *,
    block_seconds: float = BLOCK_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """True once a line of `size` bytes fits in `room` under `policy`; False: refuse it."""
    deadline: float | None = None
    while not room.fits(size):
        if policy in ("drop_oldest", "spool") and room.evict_oldest():
            continue
        if policy == "block":
            if deadline is None:
                deadline = clock() + block_seconds
            remaining = deadline - clock()
            if remaining > 0 and room.wait_for_room(remaining):
                continue
        return False
    return True

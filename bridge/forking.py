"""What a forked child resets, in one place.

gunicorn forks its workers from a master that may have imported the app (`--preload`) and
even emitted events; a child inherits the parent's memory, but not its threads. A lock some
parent thread held at the fork stays held forever in the child, a queue holds the parent's
lines, a file descriptor is shared with the parent. So every object with such state registers
here when it is made, and one `os.register_at_fork` hook calls their `after_fork_in_child()`
in the order they registered: what an object is built on (its stats, its spool) was made, and
is reset, before it. Module-level state registers a plain function at import.

What a child resets:

    diagnostics       the report lock and rate limits (a worker reports its own failures)
    streams           stdout/stderr outputs reopen the pipe, so no parent's pipe lock is held
    stats             fresh lock and zero counters: a worker's `stats()` are its own
    emitters          the error-count lock
    noise control     the lock of its counters and of the identical-exception windows
    pending events    the list of the request forked in starts over (the parent writes its events)
    size rotation     its lock fds closed (a child would hold the parent's flock)
    file outputs      a line the parent left half-written is the parent's to finish
    line queues       emptied, fresh locks: the parent's queued lines stay the parent's
    line writers      fresh write lock and counters, no thread (started again lazily)
    spools            the parent's fds closed unlocked; a new owner with its own segments
    delivery engines  empty feed, fresh locks, no worker thread, a new HTTP session
    stats publishers  no thread (the first request starts one), a file named by the new pid
    metrics           the counts pushed so far start over, as the worker's counters do
    audit sinks       a new chain (the child's pid), fresh lock, no syncer thread, nothing owed

A reset never takes a lock that existed before the fork and never does I/O that can block.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

__all__ = ["ResetsInChild", "at_fork_in_child", "reset_in_child"]


class ResetsInChild(Protocol):
    def after_fork_in_child(self) -> None:
        """Start over in a forked child: fresh locks, no threads, the parent's work left alone."""
        ...


_objects: list[weakref.ref[ResetsInChild]] = []
_functions: list[Callable[[], None]] = []
_registry_lock = threading.Lock()


def reset_in_child(obj: ResetsInChild) -> None:
    """Call `obj.after_fork_in_child()` in every forked child while `obj` lives (held weakly)."""
    with _registry_lock:
        _objects.append(weakref.ref(obj))
        if len(_objects) > 64 and len(_objects) & (len(_objects) - 1) == 0:
            _objects[:] = [ref for ref in _objects if ref() is not None]  # amortized sweep


def at_fork_in_child(function: Callable[[], None]) -> Callable[[], None]:
    """Call `function()` in every forked child (module-level state); usable as a decorator."""
    with _registry_lock:
        _functions.append(function)
    return function


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()  # another thread may have held it at the fork
    for function in list(_functions):
        function()
    live = [obj for ref in _objects if (obj := ref()) is not None]
    _objects[:] = [weakref.ref(obj) for obj in live]
    for obj in live:
        obj.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)

"""One request's events: captured on the request thread, processed and written at its end.

A receiver inside a request does only what cannot wait: it notes the signal, the clock, the
request, the fields the bridge reads itself and the signal's arguments (a dict of its own),
and appends them to the request's `Pending` list. The WSGI wrapper (`bridge.streaming`)
opens that list when the request arrives and `ship`s it when the app has returned, before the
server sends a byte of the response: every event of the request is then built, encoded and
handed to each sink in one go, one `submit_many` (one `write()`) per sink. Processing a
request's events together is what makes them cheap: the code and data of the pipeline are
warm after the first, the request's own fields are read once, and the system call is paid
once.

Rules that keep this safe:

- Only the thread that opened the list appends to it; another thread that inherited the
  context (a thread started with `copy_context()`, asgiref running an async view) emits at
  once, as outside a request. So a list is never appended to while it is shipped, nor
  after its request is over (a context copied in the request, run later on the same thread).
- A list holds at most `MAX_EVENTS`: a request that sends thousands of signals ships them in
  rounds, on its own thread, and never holds unbounded memory.
- A forked child never ships its parent's list (the parent does): the list of the request
  it was forked in starts over empty, and holds the child's own events.
- `ship_current()` lets `flush()` called inside a request see the request's events so far,
  as it did when every event was written at once.

What a request can lose: a worker killed in the middle of a request loses that request's
events (they were never written), as it could lose an event between capture and write before.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from threading import get_ident
from typing import Any, Protocol

from bridge import forking

__all__ = [
    "MAX_EVENTS",
    "Captured",
    "Pending",
    "Shipper",
    "close_request",
    "current",
    "open_request",
    "ship",
    "ship_current",
    "watched",
    "write_grouped",
]

MAX_EVENTS = 128

# (shipper, time_ns, signal, event, level, fields, arguments, request, user id): what a
# receiver noted.
Captured = tuple[Any, ...]


class Shipper(Protocol):
    """What builds, encodes and writes captured events: an app's `Emitter`."""

    def write_captured(self, captured: list[Captured]) -> None: ...


_pid = os.getpid()  # not a system call per request


class Pending:
    """The events one request captured so far, in order; owned by the thread that opened it."""

    __slots__ = ("events", "excluded", "pid", "request_id", "thread")

    def __init__(self) -> None:
        self.events: list[Captured] = []
        self.request_id = ""  # `bridge.correlation`: set by the WSGI wrapper
        # `bridge.noise`: the apps that excluded this request's path (its events sent once
        # the request context is gone, `appcontext.popped`, are still its own).
        self.excluded: set[str] | None = None
        self.thread: int | None = get_ident()  # None once the request is over
        self.pid = _pid


_pending: ContextVar[Pending | None] = ContextVar("bridge_pending", default=None)
# Read on every captured event: the bound method, without the attribute hop.
current_pending = _pending.get


@forking.at_fork_in_child
def _note_pid() -> None:
    """In the child, the request the forking thread was in (hooks run in its context) keeps
    a list, emptied: what it held is the parent's to write, and what the child sends from
    now on is the child's, shipped by its own `flush()`, rounds or the request's end."""
    global _pid
    _pid = os.getpid()
    pending = _pending.get()
    if pending is not None:
        pending.events = []
        pending.pid = _pid


def current() -> Pending | None:
    """The current request's list, when this thread may append to it; else None."""
    pending = _pending.get()
    if pending is not None and pending.thread == get_ident():
        return pending
    return None


def open_request() -> tuple[Pending, Token[Pending | None]]:
    """Start collecting this request's events (the WSGI wrapper, when the request arrives)."""
    pending = Pending()
    return pending, _pending.set(pending)


def close_request(pending: Pending, token: Token[Pending | None]) -> None:
    """Stop collecting and ship what was collected (the WSGI wrapper, when the app returned).

    The list then belongs to no thread: a context copied during the request and run later
    on the same thread (a `call_on_close` callback) still holds it, and must emit at once.
    """
    _pending.reset(token)
    pending.thread = None
    ship(pending)


def ship(pending: Pending) -> None:
    """Write every event of `pending` through its pipeline, in order, and empty it.

    Usually every event belongs to one app; events of several apps (a signal sent to another
    bridged app) are shipped per app, each app's in order. Never raises: a pipeline counts
    and reports its own failures.
    """
    events = pending.events
    if not events:
        return
    pending.events = []
    if pending.pid != _pid:
        return  # a forked child: these are the parent's, and the parent ships them
    write_grouped(events)


def write_grouped(events: list[Captured]) -> None:
    """Hand `events` to their pipelines: all at once when one app captured them all (the
    usual case), else each app's in order."""
    first = events[0][0]
    for item in events:
        if item[0] is not first:
            break
    else:
        first.write_captured(events)
        return
    by_shipper: dict[int, tuple[Shipper, list[Captured]]] = {}
    for item in events:
        entry = by_shipper.get(id(item[0]))
        if entry is None:
            entry = by_shipper[id(item[0])] = (item[0], [])
        entry[1].append(item)
    for shipper, captured in by_shipper.values():
        shipper.write_captured(captured)


def ship_current() -> None:
    """Ship what the current request collected so far (`flush()` inside a request)."""
    pending = current()
    if pending is not None:
        ship(pending)


@contextmanager
def watched() -> Iterator[None]:
    """Inside the block this thread's events are written when sent, not at the request's end
    (`capture_events()` opened inside a view lists them in the block, as when every event was
    written at once); what the request captured before is shipped first, in order."""
    pending = current()
    if pending is None:  # outside a request: events are written when sent already
        yield
        return
    ship(pending)
    token = _pending.set(None)
    try:
        yield
    finally:
        _pending.reset(token)

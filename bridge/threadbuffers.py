"""Events outside a request: gathered per thread and written in batches, within a bounded delay.

A script, a job worker or a background thread of a web app sends signals outside any request:
no WSGI wrapper will ship them. Writing each at once costs a `write()` per event; instead
each thread appends what it captured to a buffer of its own (a `deque`: appending needs no
lock), and the buffer is written, like a request's events, in one batch:

- by the thread itself, when it holds `MAX_EVENTS` (a loop of sends pays one write per
  batch, and memory stays bounded);
- by the flusher thread at most the configured delay (`batch_outside_requests`; with several
  apps, the shortest) after the buffer received its first event
  (one daemon thread per process; it sleeps until poked, and is poked once per burst of events,
  never per request: a request's own events do not come here);
- by `flush()` and `close()` (so at exit), for every thread's buffer.

So an event outside a request is in its sink's file (or queue, or spool) within that delay,
and `flush()` sees it at once. A process killed meanwhile loses those events, as a process
killed in the middle of a request loses that request's: that is why it is off unless
configured. A pipeline with a `sync` sink (the caller means to wait for the disk), user
processors or `capture_events()` watching does not buffer: its events are written when the
signal is sent.

Draining takes the buffer's drain lock (the owner and the flusher may both drain; the lock
keeps their batches in order) and pops what is there; an append that races with it lands in
this batch or the next, never nowhere.
"""

from __future__ import annotations

import threading
from collections import deque

from bridge import forking
from bridge.pending import MAX_EVENTS, Captured, write_grouped

__all__ = ["ThreadBuffer", "allow_delay", "buffer_of_this_thread", "drain_all", "settle"]


class ThreadBuffer:
    """One thread's captured events, in order."""

    __slots__ = ("drain_lock", "drainer", "events", "thread")

    def __init__(self) -> None:
        self.events: deque[Captured] = deque()
        self.drain_lock = threading.Lock()
        self.drainer: int | None = None  # the thread writing this buffer now
        self.thread = threading.current_thread()

    def append(self, captured: Captured) -> None:
        """Take one event (the owning thread): poke the flusher on the first, drain at the
        bound."""
        events = self.events
        events.append(captured)
        size = len(events)
        if size == 1:
            _flusher.poke()
        elif size >= MAX_EVENTS:
            self.drain()

    def drain(self) -> None:
        """Write every event the buffer holds now, in order. Never raises.

        Writing a batch may send events on this same thread (a user object's `get_id()`
        that logs through a routed logger), which land in this buffer: a drain they start
        returns at once (the lock is not reentrant), and the loop under way writes them.
        """
        if self.drainer == threading.get_ident():
            return
        with self.drain_lock:
            self.drainer = threading.get_ident()
            try:
                events = self.events
                popleft = events.popleft
                while events:
                    batch = [popleft() for _ in range(min(len(events), MAX_EVENTS))]
                    write_grouped(batch)
            finally:
                self.drainer = None


class _Buffers:
    """Every thread's buffer, so that `flush()` and the flusher reach all of them; a buffer
    outlives its thread until it is drained."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_thread: dict[int, ThreadBuffer] = {}
        self.local = threading.local()

    def mine(self) -> ThreadBuffer:
        buffer: ThreadBuffer | None = getattr(self.local, "buffer", None)
        if buffer is None:
            buffer = self.local.buffer = ThreadBuffer()
            with self.lock:
                self.by_thread[id(buffer)] = buffer
        return buffer

    def drain_all(self) -> None:
        with self.lock:
            buffers = list(self.by_thread.values())
        for buffer in buffers:
            buffer.drain()
            if not buffer.thread.is_alive():
                with self.lock:
                    if not buffer.events:
                        self.by_thread.pop(id(buffer), None)

    def forget_parent(self) -> None:
        """In a forked child: the parent's buffered events are the parent's to write; only
        this thread lives on, with an empty buffer and a fresh lock."""
        self.lock = threading.Lock()
        self.by_thread = {}
        self.local = threading.local()


class _Flusher:
    """The daemon thread that writes buffers `delay` after they received an event. It lives
    only while there is something to write: started by a poke, gone once a round found
    nothing new, and hurried along (then joined) by `close()`."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.wake = threading.Condition(threading.Lock())
        self.due = False
        self.thread: threading.Thread | None = None
        if not hasattr(self, "delay"):
            self.delay = float("inf")  # the shortest delay any app allowed (`allow_delay`)

    def poke(self) -> None:
        with self.wake:
            if self.due:
                return
            self.due = True
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="bridge-buffers", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        wake = self.wake
        while True:
            with wake:
                if not self.due:
                    self.thread = None
                    return
                # Let the burst gather (a poke meanwhile finds `due` set and returns at
                # once); `quiesce` cuts the wait short.
                wake.wait(self.delay)
                self.due = False
            _buffers.drain_all()

    def quiesce(self, timeout: float) -> None:
        """Write what is buffered now and let the thread end (within `timeout`)."""
        with self.wake:
            thread = self.thread
            self.wake.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def after_fork_in_child(self) -> None:
        self._reset()


_buffers = _Buffers()
_flusher = _Flusher()
buffer_of_this_thread = _buffers.mine
drain_all = _buffers.drain_all


@forking.at_fork_in_child
def _forget_parent() -> None:
    _buffers.forget_parent()
    _flusher.after_fork_in_child()


def settle(timeout: float) -> None:
    """Every buffer written, and the flusher ended (`close()`)."""
    drain_all()
    _flusher.quiesce(timeout)


def allow_delay(seconds: float) -> None:
    """An app allows its events outside requests to wait up to `seconds`: the flusher waits
    the shortest delay any app allowed."""
    with _flusher.wake:
        _flusher.delay = min(_flusher.delay, seconds)

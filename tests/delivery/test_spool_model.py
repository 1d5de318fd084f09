"""A model-based test of the disk spool: hypothesis drives real `Spool`s on a real directory
through their public API only (append, append_many, read, ack, release, pending_events, close,
and a crash that drops one without any cleanup) and checks every read against a plain model of
what must be delivered.

The model knows lines, not segments. Each `Spool` instance appends to its own *stream* (its
lines in append order); a stream's segments stay together, with one live holder at a time:
the instance that appended them, then whoever adopted them after a close or a crash. A line is

    PENDING  appended (or replayed) and not acknowledged: it must be handed out until acked,
             and is "owed" while no live instance holds a handle to it
    ACKED    acknowledged in its live holder: never handed out again while the holder lives
    SAFE     acknowledged, and so is every earlier line of its stream: whatever the segment
             boundaries, the acknowledged prefix saved in its segment's header covers it, so
             it never comes back, not even after a crash
    MAYBE    was ACKED when its holder closed or crashed: the next holder replays it if the
             saved prefix of its segment stops before it (acks out of order stay in memory)

and the spool promises, read by read: every line handed out is byte-equal to an appended one
that is owed or MAYBE, held by the reader; per stream a read goes in append order and never
skips a line that is owed (released, left in flight by a dead holder, or not read yet); `fresh`
counts exactly the reader's own lines handed out for the first time; `drained` means nothing
owed is left. `pending_events()` lies between the PENDING lines an instance holds and those
plus its MAYBE lines. A final drain hands out every appended line at least once.

A crash closes every file descriptor the instance opened into the spool directory (found in
/proc/self/fd, attributed to an instance by watching them change around each of its calls),
which releases its lock as a dead process would, and then drops the object unused.

A second, smaller machine checks the size cap: nothing is lost silently, every appended line
is acked, pending, or counted in `spool_full`.
"""

from __future__ import annotations

import enum
import gc
import json
import os
import shutil
import sys
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from bridge.delivery.spool import RECORD_OVERHEAD, Spool, SpoolRead, SpoolRecord
from bridge.stats import SinkStats

T = TypeVar("T")

MAX_LIVE = 3  # live instances on one directory at once (siblings)
READS_KEPT = 4  # reads remembered per instance, for acks of whole or mixed reads

SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
CAP_SETTINGS = settings(SETTINGS, max_examples=40)


class Status(enum.Enum):
    PENDING = "pending"
    ACKED = "acked"
    SAFE = "safe"
    MAYBE = "maybe"


@dataclass(eq=False, repr=False)
class Line:
    """One appended line and what the model knows of it."""

    number: int
    stream: Stream
    index: int  # its position in its stream
    data: bytes
    status: Status = Status.PENDING
    holder: Live | None = None  # the live instance holding a handle to it
    delivered: bool = False  # handed out at least once, ever

    def __repr__(self) -> str:  # short: the model is one web of references
        return f"<m{self.number}: line {self.index} of its stream, {self.status.value}>"


@dataclass(eq=False, repr=False)
class Stream:
    """The lines one instance appended, in order; `safe` of them are SAFE."""

    lines: list[Line] = field(default_factory=list)
    safe: int = 0
    holder: Live | None = None  # the live instance whose segments hold them; None: orphaned


@dataclass(eq=False, repr=False)
class Live:
    """A live `Spool`, its own stream, the fds it opened and the handles it gave out."""

    spool: Spool | None
    number: int
    stream: Stream
    stats: SinkStats
    fds: set[int] = field(default_factory=set)
    outstanding: dict[int, Line] = field(default_factory=dict)  # handle: line, not settled
    seen: dict[int, Line] = field(default_factory=dict)  # every handle it ever gave out
    reads: list[list[SpoolRecord]] = field(default_factory=list)  # as `read` returned them

    def __repr__(self) -> str:
        return f"<spool {self.number}>"


def make_line(number: int, size: int) -> bytes:
    """An event line with event_id `m<number>`, `size` bytes long (or the shortest such)."""
    head = f'{{"event_id": "m{number}", "pad": "'
    return (head + "x" * max(0, size - len(head) - 3) + '"}\n').encode()


def line_number(data: bytes) -> int:
    event_id = json.loads(data)["event_id"]
    assert isinstance(event_id, str) and event_id.startswith("m"), data[:80]
    return int(event_id[1:])


def sizes(segment_bytes: int) -> st.SearchStrategy[int]:
    """Mostly small lines, some of a few KiB, some near (or above) a whole segment."""

    def size(kind: int, pick: int) -> int:
        if kind < 6:
            return 40 + pick % 400
        if kind < 8:
            return 1000 + pick % 3000
        return segment_bytes // 3 + pick % (segment_bytes * 5 // 6)

    return st.builds(size, st.integers(0, 9), st.integers(0, 1 << 20))


def fds_into(directory: str) -> dict[int, str]:
    """This process's open fds whose target lies in `directory`: fd: target."""
    found: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the fd of the listing itself, closed by now
            continue
        if target.startswith(directory + "/"):
            found[int(name)] = target
    return found


class SpoolHarness(RuleBasedStateMachine):
    """Live spools on one temporary directory and the bookkeeping of their fds."""

    max_bytes = 1 << 30
    segment_bytes = 64 * 1024

    def __init__(self) -> None:
        super().__init__()
        self.directory = os.path.realpath(tempfile.mkdtemp(prefix="spool-model-"))
        self.live: list[Live] = []
        self.streams: list[Stream] = []
        self.lines: dict[int, Line] = {}
        self.instances = 0

    def call(self, live: Live, action: Callable[[Spool], T]) -> T:
        """Run `action` on the live spool; fds that appear or change meanwhile are its own."""
        assert live.spool is not None
        before = fds_into(self.directory)
        try:
            return action(live.spool)
        finally:
            self.attribute(live, before)

    def attribute(self, live: Live, before: dict[int, str]) -> None:
        after = fds_into(self.directory)
        for fd in before.keys() - after.keys():
            for other in self.live:
                other.fds.discard(fd)
        for fd, target in after.items():
            if before.get(fd) != target:
                for other in self.live:
                    other.fds.discard(fd)
                live.fds.add(fd)

    def open_spool(self) -> Live:
        """A new instance on the directory: it adopts every orphaned stream."""
        stream = Stream()
        stats = SinkStats()
        self.instances += 1
        live = Live(None, self.instances, stream, stats)
        before = fds_into(self.directory)
        live.spool = Spool(
            Path(self.directory),
            max_bytes=self.max_bytes,
            fsync="never",
            event_ttl=3600.0,
            stats=stats,
            segment_bytes=self.segment_bytes,
            rescan_interval=0.0,
        )
        self.attribute(live, before)
        stream.holder = live
        self.streams.append(stream)
        self.live.append(live)
        self.adopt(live)
        return live

    def adopt(self, live: Live) -> None:
        """Construction and every read (rescan_interval=0) adopt all orphaned streams."""
        for stream in self.streams:
            if stream.holder is None:
                stream.holder = live

    def append(self, live: Live, size: int) -> tuple[bool, Line]:
        number = len(self.lines)
        data = make_line(number, size)
        ok = self.call(live, lambda spool: spool.append(data))
        line = Line(number, live.stream, len(live.stream.lines), data)
        if ok:
            live.stream.lines.append(line)
            self.lines[number] = line
        return ok, line

    def append_many(self, live: Live, sizes: list[int], accepted: Callable[[int], bool]) -> None:
        """One `append_many` of lines of `sizes`; `accepted(size)` says which the spool must
        take: it returns their number and bytes, and they join the stream in order."""
        # Numbers as `append` gives them: the kept lines next, then the refused ones (whose
        # numbers later appends reuse, as after a refused `append`).
        numbers = iter(range(len(self.lines), len(self.lines) + len(sizes)))
        refused = iter(range(len(self.lines) + len(sizes), 1 << 62))
        batch = [make_line(next(numbers if accepted(size) else refused), size) for size in sizes]
        kept = [data for data in batch if accepted(len(data))]
        got = self.call(live, lambda spool: spool.append_many(batch))
        assert (len(kept), sum(map(len, kept))) == got, "append_many took other lines"
        for data in kept:
            line = Line(line_number(data), live.stream, len(live.stream.lines), data)
            live.stream.lines.append(line)
            self.lines[line.number] = line

    def identify(self, data: bytes) -> Line:
        """The appended line `data` is, byte for byte."""
        try:
            number = line_number(data)
        except ValueError as exc:
            raise AssertionError(f"a corrupt line was handed out: {data[:80]!r}") from exc
        assert number in self.lines, f"a line never appended: {data[:80]!r}"
        assert self.lines[number].data == data, f"m{number} handed out changed"
        return self.lines[number]

    def forget(self, live: Live) -> None:
        """The instance is gone (closed or crashed): what it held is orphaned."""
        self.live.remove(live)
        # Every fd into the directory belongs to a live instance: none was missed or leaked.
        assert set(fds_into(self.directory)) == set().union(*(other.fds for other in self.live))
        for line in live.outstanding.values():
            line.holder = None
        live.outstanding.clear()
        for stream in self.streams:
            if stream.holder is live:
                stream.holder = None
                for line in stream.lines[stream.safe :]:
                    if line.status is Status.ACKED:
                        line.status = Status.MAYBE

    def close_spool(self, live: Live) -> None:
        self.call(live, lambda spool: spool.close())
        assert set() == live.fds, "close() leaves no fd into the spool directory open"
        live.spool = None
        self.forget(live)

    def crash(self, live: Live) -> None:
        """Drop the instance as a killed process would: its fds closed, nothing else."""
        open_now = fds_into(self.directory)
        for fd in sorted(live.fds):
            assert fd in open_now
            os.close(fd)
        live.fds.clear()
        gone = weakref.ref(live.spool)
        live.spool = None
        if gone() is not None:
            gc.collect()
        # A forked child would otherwise reset it, closing whatever now has its fd numbers.
        assert gone() is None, "a crashed spool must be unreachable"
        self.forget(live)

    def teardown(self) -> None:
        for live in list(self.live):
            if live.spool is not None:
                live.spool.close()
        self.live.clear()
        shutil.rmtree(self.directory, ignore_errors=True)


class SpoolModel(SpoolHarness):
    """Appends, reads, acks, releases, closes, crashes and reopens against the model."""

    @initialize(segment_bytes=st.sampled_from([4096, 64 * 1024]))
    def start(self, segment_bytes: int) -> None:
        self.segment_bytes = segment_bytes
        self.open_spool()

    # -- rules --------------------------------------------------------------------------

    @rule(data=st.data())
    def append_lines(self, data: st.DataObject) -> None:
        live = self.choose_live(data)
        for size in data.draw(st.lists(sizes(self.segment_bytes), min_size=1, max_size=12)):
            ok, line = self.append(live, size)
            assert ok, f"append of m{line.number} ({size} bytes) failed, under no cap"

    @rule(data=st.data())
    def append_many_lines(self, data: st.DataObject) -> None:
        """One request's lines in one call: every line taken, in order."""
        live = self.choose_live(data)
        batch = data.draw(st.lists(sizes(self.segment_bytes), min_size=0, max_size=12))
        self.append_many(live, batch, lambda size: True)

    @rule(
        data=st.data(),
        max_events=st.integers(1, 40),
        max_bytes=st.sampled_from([1, 300, 5000, 70_000, 1 << 22]),
    )
    def read(self, data: st.DataObject, max_events: int, max_bytes: int) -> None:
        self.read_and_check(self.choose_live(data), max_events, max_bytes)

    @precondition(lambda self: any(live.reads for live in self.live))
    @rule(data=st.data(), back=st.integers(0, READS_KEPT - 1))
    def ack_a_whole_read(self, data: st.DataObject, back: int) -> None:
        """The very list `read` returned (again: repeated acks are ignored)."""
        live = self.choose_live(data, lambda live: bool(live.reads))
        self.ack(live, live.reads[-1 - back % len(live.reads)])

    @precondition(lambda self: any(live.outstanding for live in self.live))
    @rule(data=st.data(), hold_back_oldest=st.booleans())
    def ack_some(self, data: st.DataObject, hold_back_oldest: bool) -> None:
        """Handles of this instance in any order, across reads, repeated or settled already;
        holding back the oldest in flight leaves acks after a gap (out of order)."""
        live = self.choose_live(data, lambda live: bool(live.outstanding))
        handles = self.choose_handles(live, data)
        if hold_back_oldest:
            oldest = min(live.outstanding)
            handles = [handle for handle in handles if handle != oldest]
        self.ack(live, handles)

    @precondition(lambda self: any(live.outstanding for live in self.live))
    @rule(data=st.data())
    def release_some(self, data: st.DataObject) -> None:
        live = self.choose_live(data, lambda live: bool(live.outstanding))
        handles = self.choose_handles(live, data)
        self.call(live, lambda spool: spool.release(handles))
        for handle in handles:
            line = live.outstanding.pop(handle, None)
            if line is not None:
                line.holder = None

    @rule(data=st.data(), crash=st.booleans(), reopen=st.booleans())
    def stop(self, data: st.DataObject, crash: bool, reopen: bool) -> None:
        """Close or crash an instance; a new one, or a sibling's next read, adopts its
        segments."""
        live = self.choose_live(data)
        if crash:
            self.crash(live)
        else:
            self.close_spool(live)
        if reopen or not self.live:
            self.open_spool()

    @precondition(lambda self: len(self.live) < MAX_LIVE)
    @rule()
    def open_sibling(self) -> None:
        self.open_spool()

    @rule()
    def drain(self) -> None:
        self.drain_and_check()

    @invariant()
    def pending_events_within_the_model(self) -> None:
        for live in self.live:
            pending, maybe = self.held(live)
            actual = self.call(live, lambda spool: spool.pending_events())
            if maybe == 0:
                assert pending == actual, f"pending_events() of spool {live.number}"
            else:
                assert pending <= actual <= pending + maybe, (
                    f"pending_events() of spool {live.number}: {actual} outside"
                    f" [{pending}, {pending + maybe}]"
                )

    # -- the model ----------------------------------------------------------------------

    def choose_live(
        self, data: st.DataObject, usable: Callable[[Live], bool] = lambda live: True
    ) -> Live:
        candidates = [live for live in self.live if usable(live)]
        return candidates[data.draw(st.integers(0, len(candidates) - 1), label="instance")]

    def choose_handles(self, live: Live, data: st.DataObject) -> list[SpoolRecord]:
        """Handles in flight in any order, some twice, and maybe some settled already."""
        pool = sorted(live.outstanding)
        picked = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=12))
        stale = data.draw(st.lists(st.sampled_from(sorted(live.seen)), max_size=2))
        return [SpoolRecord(handle) for handle in picked + stale]

    def held(self, live: Live) -> tuple[int, int]:
        """(PENDING, MAYBE) lines in the streams `live` holds."""
        pending = maybe = 0
        for stream in self.streams:
            if stream.holder is live:
                for line in stream.lines[stream.safe :]:
                    pending += line.status is Status.PENDING
                    maybe += line.status is Status.MAYBE
        return pending, maybe

    def owed(self, stream: Stream) -> list[int]:
        """Indices of the stream's lines that must be handed out again and are not held."""
        return [
            line.index
            for line in stream.lines[stream.safe :]
            if line.status is Status.PENDING and line.holder is None
        ]

    def read_and_check(self, live: Live, max_events: int, max_bytes: int) -> SpoolRead:
        got = self.call(live, lambda spool: spool.read(max_events, max_bytes))
        self.adopt(live)
        assert len(got.lines) == len(got.records)
        assert len(got.lines) <= max_events
        if len(got.lines) > 1:
            assert sum(map(len, got.lines)) <= max_bytes
        lines = [self.identify(data) for data in got.lines]
        assert len(lines) == len({line.number for line in lines}), "a line twice in one read"
        for line, handle in zip(lines, got.records, strict=True):
            assert line.stream.holder is live, f"m{line.number} from a stream it does not hold"
            assert line.holder is None, f"m{line.number} handed out while still in flight"
            assert line.status in (Status.PENDING, Status.MAYBE), (
                f"m{line.number} handed out again after it was {line.status.value}"
            )
            assert live.seen.setdefault(handle, line) is line, "one handle, two lines"
        per_stream: dict[int, tuple[Stream, list[int]]] = {}
        for line in lines:
            per_stream.setdefault(id(line.stream), (line.stream, []))[1].append(line.index)
        for stream, indices in per_stream.values():
            assert sorted(indices) == indices, "a stream's lines out of append order"
            skipped = [i for i in self.owed(stream) if i < indices[-1] and i not in indices]
            assert [] == skipped, "a read skipped owed lines before later ones of their stream"
        fresh = [line for line in lines if line.stream is live.stream and not line.delivered]
        assert (len(fresh), sum(len(line.data) for line in fresh)) == (
            got.fresh,
            got.fresh_bytes,
        )
        for line, handle in zip(lines, got.records, strict=True):
            line.status, line.holder, line.delivered = Status.PENDING, live, True
            live.outstanding[handle] = line
        if got.drained:
            left = [i for s in self.streams if s.holder is live for i in self.owed(s)]
            assert [] == left, "a drained read left owed lines behind"
        if got.records:
            live.reads = [*live.reads[1 - READS_KEPT :], got.records]
        return got

    def ack(self, live: Live, handles: list[SpoolRecord]) -> None:
        self.call(live, lambda spool: spool.ack(handles))
        for handle in handles:
            line = live.outstanding.pop(handle, None)
            if line is not None:
                line.status, line.holder = Status.ACKED, None
        for stream in self.streams:
            if stream.holder is live:
                while stream.safe < len(stream.lines):
                    line = stream.lines[stream.safe]
                    if line.status is not Status.ACKED:
                        break
                    line.status = Status.SAFE
                    stream.safe += 1

    def drain_and_check(self) -> None:
        """Ack what is in flight, then read and ack everything: every line came out."""
        for live in self.live:
            self.ack(live, [SpoolRecord(h) for h in live.outstanding])
        for _ in range(1000):
            progress = False
            for live in self.live:
                got = self.read_and_check(live, 200, 1 << 22)
                progress |= bool(got.lines)
                self.ack(live, got.records)
            if not progress:
                break
        appended = {line.number for line in self.lines.values()}
        delivered = {line.number for line in self.lines.values() if line.delivered}
        assert appended == delivered
        assert [] == [n for n, line in self.lines.items() if line.status is Status.PENDING]
        assert [0] * len(self.live) == [
            self.call(live, lambda spool: spool.pending_events()) for live in self.live
        ]
        assert [{}] * len(self.live) == [live.stats.dropped_by_reason for live in self.live]

    def teardown(self) -> None:
        try:
            # Not after a failed step: a second failure here would hide the first.
            if sys.exception() is None and self.live:
                self.drain_and_check()
        finally:
            super().teardown()


class TestSpoolModel:
    def test_spool_matches_the_model(self) -> None:
        """Appends, reads, acks, releases, closes and crashes deliver every line at least once,
        in order per stream, never an acked-and-saved one again, never an invented one."""
        run_state_machine_as_test(SpoolModel, settings=SETTINGS)


class SpoolCapModel(SpoolHarness):
    """One spool under a small size cap: every appended line is acked, pending, or counted in
    `spool_full`, never silently lost; what is handed out is byte-equal and in order."""

    @initialize(
        max_bytes=st.sampled_from([6000, 20_000]), segment_bytes=st.sampled_from([1024, 4096])
    )
    def start(self, max_bytes: int, segment_bytes: int) -> None:
        self.max_bytes, self.segment_bytes = max_bytes, segment_bytes
        self.only = self.open_spool()
        self.refused = 0  # appends that returned False: each is counted in spool_full
        self.acked: set[int] = set()
        self.newest_first_time = -1  # the index of the newest line handed out so far

    @rule(data=st.data())
    def append_lines(self, data: st.DataObject) -> None:
        """Some lines larger than the whole cap: refused and counted."""
        big = st.integers(self.max_bytes // 4, self.max_bytes * 5 // 4)
        for size in data.draw(st.lists(st.one_of(sizes(1024), big), min_size=1, max_size=8)):
            ok, _ = self.append(self.only, size)
            self.refused += not ok
            assert self.only.stats.dropped_by_reason.keys() <= {"spool_full"}

    @rule(data=st.data())
    def append_many_lines(self, data: st.DataObject) -> None:
        """One call, some lines larger than the whole cap: exactly those refused, counted."""
        big = st.integers(self.max_bytes // 4, self.max_bytes * 5 // 4)
        batch = data.draw(st.lists(st.one_of(sizes(1024), big), min_size=1, max_size=8))
        before = len(self.lines)
        self.append_many(self.only, batch, lambda size: size + RECORD_OVERHEAD <= self.max_bytes)
        self.refused += len(batch) - (len(self.lines) - before)
        assert self.only.stats.dropped_by_reason.keys() <= {"spool_full"}

    @rule(
        max_events=st.integers(1, 40),
        max_bytes=st.sampled_from([1, 300, 5000, 1 << 22]),
    )
    def read(self, max_events: int, max_bytes: int) -> None:
        self.read_and_check(max_events, max_bytes)

    @precondition(lambda self: bool(self.only.reads))
    @rule(back=st.integers(0, READS_KEPT - 1))
    def ack_a_whole_read(self, back: int) -> None:
        self.ack(self.only.reads[-1 - back % len(self.only.reads)])

    @precondition(lambda self: bool(self.only.outstanding))
    @rule(data=st.data())
    def ack_some(self, data: st.DataObject) -> None:
        self.ack(self.choose_handles(data))

    @precondition(lambda self: bool(self.only.outstanding))
    @rule(data=st.data())
    def release_some(self, data: st.DataObject) -> None:
        """Released records of an evicted segment are lost then, and counted."""
        handles = self.choose_handles(data)
        self.call(self.only, lambda spool: spool.release(handles))
        for handle in handles:
            line = self.only.outstanding.pop(handle, None)
            if line is not None:
                line.holder = None

    @rule()
    def drain(self) -> None:
        """Ack what is in flight, then read and ack until empty: the rest was counted."""
        self.ack([SpoolRecord(handle) for handle in self.only.outstanding])
        while (got := self.read_and_check(200, 1 << 22)).lines:
            self.ack(got.records)
        lost = [n for n in self.lines if n not in self.acked]
        assert (len(lost), 0) == (self.evicted(), self.pending())

    @precondition(lambda self: bool(self.live))
    @invariant()
    def nothing_lost_silently(self) -> None:
        """appended = acked + pending + evicted, whenever no record is in flight (records in
        flight from an evicted segment are counted only when released)."""
        assert self.call(self.only, lambda spool: spool.pending_bytes()) <= self.max_bytes
        if not self.only.outstanding:
            assert len(self.lines) == len(self.acked) + self.pending() + self.evicted()

    def evicted(self) -> int:
        dropped = self.only.stats.dropped_by_reason.get("spool_full", 0)
        assert dropped >= self.refused
        return dropped - self.refused

    def pending(self) -> int:
        return self.call(self.only, lambda spool: spool.pending_events())

    def choose_handles(self, data: st.DataObject) -> list[SpoolRecord]:
        pool = sorted(self.only.outstanding)
        picked = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=12))
        return [SpoolRecord(handle) for handle in picked]

    def read_and_check(self, max_events: int, max_bytes: int) -> SpoolRead:
        live = self.only
        got = self.call(live, lambda spool: spool.read(max_events, max_bytes))
        assert len(got.lines) == len(got.records) <= max_events
        if len(got.lines) > 1:
            assert sum(map(len, got.lines)) <= max_bytes
        lines = [self.identify(data) for data in got.lines]
        indices = [line.index for line in lines]
        assert sorted(set(indices)) == indices, "out of append order, or twice in one read"
        for line, handle in zip(lines, got.records, strict=True):
            assert line.number not in self.acked, f"m{line.number} handed out after its ack"
            assert line.holder is None, f"m{line.number} handed out while still in flight"
            assert live.seen.setdefault(handle, line) is line, "one handle, two lines"
        first_time = [line.index for line in lines if not line.delivered]
        assert sorted(first_time) == first_time
        # Evicted lines are the oldest: a line skipped once is never handed out later.
        assert all(index > self.newest_first_time for index in first_time)
        if first_time:
            self.newest_first_time = first_time[-1]
        assert len(first_time) == got.fresh
        for line, handle in zip(lines, got.records, strict=True):
            line.holder, line.delivered = live, True
            live.outstanding[handle] = line
        if got.records:
            live.reads = [*live.reads[1 - READS_KEPT :], got.records]
        return got

    def ack(self, handles: list[SpoolRecord]) -> None:
        self.call(self.only, lambda spool: spool.ack(handles))
        for handle in handles:
            line = self.only.outstanding.pop(handle, None)
            if line is not None:
                line.holder = None
                self.acked.add(line.number)

    def teardown(self) -> None:
        try:
            if sys.exception() is None and self.live:
                self.drain()
        finally:
            super().teardown()


class TestSpoolSizeCap:
    def test_every_line_is_delivered_pending_or_counted(self) -> None:
        """Under a small max_bytes, appended = acked + pending + counted spool_full."""
        run_state_machine_as_test(SpoolCapModel, settings=CAP_SETTINGS)

"""Reading JSON-lines event files for `flask bridge tail`: parse, filter, format, follow.

Reading never trusts the file: a torn, truncated or non-JSON line becomes an `EventLine` with
an `error` instead of an exception, and nothing read reaches the terminal raw (a line could
otherwise clear the screen, retitle the window or reverse text with bidi controls).

`follow` behaves like `tail -F`: it keeps reading as the file grows, drains and reopens it when
logrotate renames it (the inode at the path changes), and starts over when it is truncated in
place (`copytruncate`). It polls through an injected `sleep`, so tests drive it without
waiting.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

__all__ = [
    "EventFilter",
    "EventLine",
    "follow",
    "format_event",
    "format_invalid",
    "format_lines",
    "json_for_terminal",
    "read_file",
    "tail_lines",
    "terminal_safe",
]

# Envelope keys that are the same on every line of a file; shown only with --verbose.
QUIET_KEYS = frozenset({"signal", "event_id", "service.name", "host.name", "process.pid"})
_HEAD_KEYS = frozenset({"timestamp", "level", "event"})
# Shown first after the head: what ties an event to its request and its user.
CORRELATION_KEYS = ("request_id", "user.id")
USER_KEYS = ("user.id", "user_id")
STACKTRACE_KEY = "exception.stacktrace"
LEVEL_RANK = {"debug": 0, "info": 1, "warning": 2, "warn": 2, "error": 3, "critical": 4}
LEVEL_COLORS = {"debug": "bright_black", "warning": "yellow", "error": "red", "critical": "red"}
_CHUNK = 64 * 1024
_SHOWN_INVALID_CHARS = 300


@dataclass(frozen=True, slots=True)
class EventLine:
    """One line of the file: its number (from 1, per file), bytes, and the parsed event."""

    number: int
    raw: bytes
    event: dict[str, Any] | None
    error: str | None = None


def parse_line(number: int, raw: bytes) -> EventLine:
    """Parse one line (without its newline); invalid lines carry the reason instead."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return EventLine(number, raw, None, f"invalid JSON: {exc}")
    if not isinstance(value, dict):
        return EventLine(number, raw, None, f"not a JSON object: {type(value).__name__}")
    return EventLine(number, raw, value)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which lines to show: event names (globs), a minimum level, a case-insensitive text,
    a user (`user.id`, else `user_id`) and a request id.

    Invalid lines pass the event, level, user and request id filters (they are anomalies
    worth seeing) but not a `grep` they do not contain. An event with an unknown level passes
    the level filter.
    """

    events: tuple[str, ...] = ()
    min_level: str | None = None
    grep: str | None = None
    user: str | None = None
    request_id: str | None = None

    def __call__(self, line: EventLine) -> bool:
        if self.grep is not None:
            text = line.raw.decode("utf-8", "replace").lower()
            if self.grep.lower() not in text:
                return False
        event = line.event
        if event is None:
            return True
        if self.events:
            name = str(event.get("event", ""))
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.events):
                return False
        if self.min_level is not None:
            rank = LEVEL_RANK.get(str(event.get("level", "")).lower())
            if rank is not None and rank < LEVEL_RANK[self.min_level]:
                return False
        if self.request_id is not None and str(event.get("request_id")) != self.request_id:
            return False
        if self.user is not None:
            user = next((event[k] for k in USER_KEYS if event.get(k) is not None), None)
            if user is None or str(user) != self.user:
                return False
        return True


def _terminal_escapes() -> dict[int, str]:
    """What must not reach a terminal raw, each mapped to a visible escape.

    C0 (ESC starts cursor moves, screen clears, `ESC ] 0;...` sets the window title), DEL,
    C1 (U+009B is a one-character CSI), bidi controls (U+202E shows `exe.txt` as `txt.exe`)
    and the line and paragraph separators.
    """
    table = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
    table.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
    bidi = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
    table.update({c: f"\\u{c:04x}" for c in (*bidi, 0x2028, 0x2029)})
    return table


_TERMINAL = _terminal_escapes()
_QUOTED = {**_TERMINAL, ord("\\"): "\\\\", ord('"'): '\\"'}
# In a valid JSON line these can only sit inside strings, where \uXXXX means the same text;
# a raw C0 there can only be whitespace (a CR before the newline), which a space replaces.
_JSON = {c: " " if c < 0x20 else f"\\u{c:04x}" for c in _TERMINAL}


def terminal_safe(text: str) -> str:
    """`text` with every character that could drive a terminal shown as an escape."""
    return text.translate(_TERMINAL)


def json_for_terminal(raw: bytes) -> str:
    """A valid JSON line, printable as it is: the same JSON value, nothing that drives a
    terminal (those characters as `\\uXXXX` escapes). Lines without them are unchanged."""
    return raw.decode("utf-8", "replace").translate(_JSON)


def _text(value: str) -> str:
    """A key or a string value: bare when plain, else quoted with escapes."""
    # isprintable() is False for every character in _TERMINAL (categories Cc, Cf, Zl, Zp).
    if value and value.isprintable() and not any(c in value for c in ' ="\\'):
        return value
    return '"' + value.translate(_QUOTED) + '"'


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return _text(value)
    return orjson.dumps(value, default=str).decode().translate(_TERMINAL)


def format_event(event: dict[str, Any], *, verbose: bool = False) -> tuple[str, str]:
    """One readable line: time, level, event, then key=value; and the level, for colour.

    Nothing from the file reaches the terminal raw: control, bidi and separator characters
    in any key or value (nested ones and stack traces included) are shown as escapes.
    """
    level = str(event.get("level", "-"))
    timestamp, name = (terminal_safe(str(event.get(k, "-"))) for k in ("timestamp", "event"))
    head = f"{timestamp} {terminal_safe(level.upper()):<7} {name}"
    skip = _HEAD_KEYS if verbose else _HEAD_KEYS | QUIET_KEYS
    first = [(k, event[k]) for k in CORRELATION_KEYS if k in event and k not in skip]
    rest = [(k, v) for k, v in event.items() if k not in skip and k not in CORRELATION_KEYS]
    pairs = " ".join(f"{_text(k)}={_value_text(v)}" for k, v in (*first, *rest))
    return (f"{head}  {pairs}" if pairs else head), level.lower()


def format_lines(event: dict[str, Any], *, verbose: bool = False) -> tuple[list[str], str]:
    """The event's line (as `format_event`, without its stack trace), then the stack trace's
    own lines indented under it, as a reader expects a traceback; and the level, for colour.

    Each trace line is escaped like any value, so a line break is the only thing that differs
    from `format_event`: no text from the file can move the cursor or reverse the text.
    """
    trace = event.get(STACKTRACE_KEY)
    if not isinstance(trace, str):
        text, level = format_event(event, verbose=verbose)
        return [text], level
    text, level = format_event(
        {k: v for k, v in event.items() if k != STACKTRACE_KEY}, verbose=verbose
    )
    # Only \n splits: a U+2028 or CR inside the trace stays escaped on its line.
    body = [f"    {terminal_safe(part)}" for part in trace.rstrip("\n").split("\n")]
    return [text, *body], level


def format_invalid(line: EventLine) -> str:
    """An invalid line, shown as such: its number, the reason and the start of its text
    (escaped like an event's)."""
    text = line.raw.decode("utf-8", "replace")
    if len(text) > _SHOWN_INVALID_CHARS:
        text = text[:_SHOWN_INVALID_CHARS] + "..."
    return f"!! line {line.number}: {terminal_safe(str(line.error))}: {terminal_safe(text)}"


class _Lines:
    """Splits chunks into numbered lines; blank lines are counted but not yielded."""

    def __init__(self) -> None:
        self.buffer = b""
        self.number = 1

    def feed(self, chunk: bytes) -> list[EventLine]:
        *complete, self.buffer = (self.buffer + chunk).split(b"\n")
        lines = []
        for raw in complete:
            if raw.strip():
                lines.append(parse_line(self.number, raw))
            self.number += 1
        return lines

    def rest(self) -> list[EventLine]:
        """The unterminated last line, if any (a torn write, or a file still being written)."""
        raw, self.buffer = self.buffer, b""
        return [parse_line(self.number, raw)] if raw.strip() else []


def read_file(handle: IO[bytes]) -> Iterator[EventLine]:
    """Every line of an open file to its end; an unterminated last line is read too."""
    lines = _Lines()
    while chunk := handle.read(_CHUNK):
        yield from lines.feed(chunk)
    yield from lines.rest()


def follow(
    path: Path,
    *,
    poll_interval: float = 0.25,
    sleep: Callable[[float], None] = time.sleep,
) -> Generator[EventLine | None, None, None]:
    """Lines of `path` from its start, then as they are appended, forever (close to stop).

    Yields None each time it has caught up with the end of the file, before it sleeps, so a
    caller knows the backlog is done. Waits for a file that does not exist yet.
    """
    handle: IO[bytes] | None = None
    identity: tuple[int, int] | None = None
    lines = _Lines()
    try:
        while True:
            if handle is None:
                try:
                    handle = path.open("rb")
                except FileNotFoundError:
                    yield None
                    sleep(poll_interval)
                    continue
                st = os.fstat(handle.fileno())
                identity = (st.st_dev, st.st_ino)
                lines = _Lines()
            chunk = handle.read(_CHUNK)
            if chunk:
                yield from lines.feed(chunk)
                continue
            if _replaced(path, identity):
                # Rotated: the writer may have appended to the old file before it moved on.
                yield from lines.feed(handle.read())
                yield from lines.rest()
                handle.close()
                handle = None
                continue
            if os.fstat(handle.fileno()).st_size < handle.tell():  # truncated in place
                handle.seek(0)
                lines = _Lines()
                continue
            yield None
            sleep(poll_interval)
    finally:
        if handle is not None:
            handle.close()


def _replaced(path: Path, identity: tuple[int, int] | None) -> bool:
    """Does the path now name another file? (A missing path waits for the new one.)"""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) != identity


def tail_lines(
    path: Path,
    keep: Callable[[EventLine], bool],
    *,
    follow_mode: bool = False,
    last: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Generator[EventLine, None, None]:
    """The lines `keep` accepts; with `last`, only the last N of what the file holds now,
    then (following) every new one as it arrives."""
    backlog: deque[EventLine] | None = deque(maxlen=last) if last is not None else None
    if not follow_mode:
        with path.open("rb") as handle:
            for line in read_file(handle):
                if not keep(line):
                    continue
                if backlog is None:
                    yield line
                else:
                    backlog.append(line)
        yield from backlog or ()
        return
    with closing(follow(path, sleep=sleep)) as lines:
        for item in lines:
            if item is None:  # caught up with the end of the file: the backlog is complete
                if backlog is not None:
                    yield from backlog
                    backlog = None
            elif keep(item):
                if backlog is None:
                    yield item
                else:
                    backlog.append(item)

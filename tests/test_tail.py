"""Reading event files: parsing, filtering, formatting and following across rotation."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import bridge.tail
from bridge.tail import (
    EventFilter,
    EventLine,
    follow,
    format_event,
    format_invalid,
    json_for_terminal,
    parse_line,
    read_file,
    tail_lines,
)


def line(**event: Any) -> bytes:
    return json.dumps(event).encode() + b"\n"


def event_names(lines: list[EventLine | None]) -> list[str | None]:
    """Event names of parsed lines, "!" for invalid ones, None for "caught up"."""
    return [None if x is None else "!" if x.event is None else x.event["event"] for x in lines]


class Script:
    """A `sleep` for `follow` that runs the next step of a scenario instead of waiting.

    Fails the test (instead of hanging) if the follower sleeps more often than planned.
    """

    def __init__(self, *steps: Callable[[], None]) -> None:
        self.steps = list(steps)

    def __call__(self, seconds: float) -> None:
        assert self.steps, "follow() slept more often than the scenario planned"
        self.steps.pop(0)()


def take(lines: Iterator[EventLine | None], count: int) -> list[EventLine | None]:
    return [next(lines) for _ in range(count)]


class TestParseLine:
    @pytest.mark.parametrize(
        ("raw", "error"),
        [
            (b'{"event": "a"}', None),
            (b'{"event": "a"', "invalid JSON"),
            (b"[1, 2]", "not a JSON object: list"),
            (b"\xff\xfe", "invalid JSON"),
            (b"plain text", "invalid JSON"),
        ],
    )
    def test_valid_and_invalid(self, raw: bytes, error: str | None) -> None:
        """Objects parse; anything else carries the reason instead of raising."""
        parsed = parse_line(3, raw)
        assert 3 == parsed.number
        if error is None:
            assert {"event": "a"} == parsed.event
        else:
            assert parsed.event is None
            assert parsed.error is not None and parsed.error.startswith(error)


class TestReadFile:
    def test_numbers_blank_lines_and_torn_end(self) -> None:
        """Lines keep their numbers across blank lines; an unterminated end is read too."""
        data = line(event="a") + b"\n" + line(event="b") + b'{"event": "c'
        lines = list(read_file(io.BytesIO(data)))
        assert [(1, "a"), (3, "b"), (4, "!")] == [(x.number, event_names([x])[0]) for x in lines]

    def test_lines_longer_than_a_chunk(self) -> None:
        """A line spanning several read chunks is reassembled."""
        data = line(event="big", text="x" * 200_000) + line(event="small")
        assert ["big", "small"] == event_names(list(read_file(io.BytesIO(data))))


class TestEventFilter:
    @pytest.mark.parametrize(
        ("kwargs", "expected"),
        [
            ({}, ["request.finished", "user.login", "request.exception", "debugging", "!"]),
            ({"events": ("user.login",)}, ["user.login", "!"]),
            ({"events": ("request.*",)}, ["request.finished", "request.exception", "!"]),
            ({"min_level": "warning"}, ["user.login", "request.exception", "!"]),
            ({"min_level": "error"}, ["request.exception", "!"]),
            ({"grep": "ADA"}, ["user.login"]),
            ({"grep": "oops"}, ["!"]),
        ],
    )
    def test_filters(self, kwargs: dict[str, Any], expected: list[str]) -> None:
        """Event globs, minimum level and case-insensitive text; invalid lines are anomalies."""
        data = (
            line(event="request.finished", level="info")
            + line(event="user.login", level="warning", user="ada")
            + line(event="request.exception", level="error")
            + line(event="debugging", level="debug")
            + b"oops not json\n"
        )
        keep = EventFilter(**kwargs)
        lines = [x for x in read_file(io.BytesIO(data)) if keep(x)]
        assert expected == event_names(list(lines))

    def test_unknown_level_passes(self) -> None:
        """An event with a level the bridge does not know is shown rather than hidden."""
        keep = EventFilter(min_level="error")
        assert keep(parse_line(1, b'{"event": "x", "level": "notice"}'))


class TestFormat:
    def test_one_readable_line(self) -> None:
        """Time, level, event, then key=value; envelope noise hidden; strings quoted if needed."""
        event = {
            "timestamp": "2026-11-25T08:30:00.123456Z",
            "level": "warning",
            "event": "user.login",
            "signal": "user-login",
            "event_id": "0190",
            "service.name": "shop",
            "host.name": "h",
            "process.pid": 1,
            "user_id": 7,
            "note": "two words",
            "trace": "line1\nline2",
            "tags": ["a"],
        }
        text, level = format_event(event)
        assert (
            '2026-11-25T08:30:00.123456Z WARNING user.login  user_id=7 note="two words" '
            'trace="line1\\nline2" tags=["a"]'
        ) == text
        assert "warning" == level
        assert "\n" not in text

    def test_verbose_shows_envelope(self) -> None:
        """--verbose keeps every key."""
        text, _ = format_event({"event": "e", "event_id": "abc", "host.name": "h"}, verbose=True)
        assert "- -       e  event_id=abc host.name=h" == text

    def test_invalid_line(self) -> None:
        """An invalid line is shown with its number, reason and (shortened) text."""
        shown = format_invalid(parse_line(9, b"x" * 1000))
        assert shown.startswith("!! line 9: invalid JSON")
        assert shown.endswith("x" * 300 + "...")


# What reaches a terminal raw must not drive it: C0 (cursor moves, clear screen, window title
# with ESC ] ... BEL), DEL, C1 (CSI is U+009B), bidi controls and line/paragraph separators.
TERMINAL_CONTROLS = (
    [chr(c) for c in range(0x20)]
    + [chr(c) for c in range(0x7F, 0xA0)]
    + [chr(c) for c in (0x061C, 0x200E, 0x200F, 0x2028, 0x2029)]
    + [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
)
HOSTILE = "\x1b[2J\x1b]0;owned\x07\x9b31m\u202etxt.exe\u2066\u200f\u061c\u2028\u2029\x7f\x00\r"


def controls_in(text: str) -> list[str]:
    return [c for c in text if c in TERMINAL_CONTROLS]


def visible(char: str) -> str:
    """How tail shows a control character: \\n, \\r, \\t, \\xNN or \\uNNNN."""
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if char in named:
        return named[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


class TestTerminalSafety:
    @pytest.mark.parametrize("char", TERMINAL_CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
    def test_each_control_is_a_visible_escape(self, char: str) -> None:
        """Every control, bidi and separator character in a value is shown escaped."""
        text, _ = format_event({"event": "e", "note": f"a{char}b"})
        assert f'- -       e  note="a{visible(char)}b"' == text

    @pytest.mark.parametrize("verbose", [False, True])
    def test_every_field_escaped(self, verbose: bool) -> None:
        """Head, keys, values and nested values of a hostile event reach no terminal raw."""
        event = {
            "timestamp": HOSTILE,
            "level": HOSTILE,
            "event": HOSTILE,
            "signal": HOSTILE,
            HOSTILE: HOSTILE,
            "nested": {HOSTILE: [HOSTILE, 1]},
            "exception.stacktrace": f"Traceback:\n  File {HOSTILE}\nValueError: {HOSTILE}",
        }
        text, _ = format_event(event, verbose=verbose)
        assert [] == controls_in(text)
        assert (10 if verbose else 9) == text.count("\\u202e")  # one per hostile text shown

    def test_quoting_stays_readable(self) -> None:
        """Quotes and backslashes in a quoted value are escaped; other text stays as it is."""
        text, _ = format_event({"event": "e", "path": 'C:\\new "dir"', "name": "Zo\u00eb"})
        assert '- -       e  path="C:\\\\new \\"dir\\"" name=Zo\u00eb' == text

    def test_invalid_line_escaped(self) -> None:
        """An invalid line's text is shown escaped too."""
        shown = format_invalid(parse_line(4, ("not json " + HOSTILE).encode()))
        assert [] == controls_in(shown)
        assert shown.endswith(
            "not json \\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\u202etxt.exe"
            + "\\u2066\\u200f\\u061c\\u2028\\u2029\\x7f\\x00\\r"
        )

    def test_json_line_stays_the_same_json(self) -> None:
        """--json output escapes what JSON can escape: the same object, nothing raw."""
        raw = json.dumps({"event": HOSTILE, HOSTILE: [HOSTILE]}, ensure_ascii=False).encode()
        shown = json_for_terminal(raw + b"\r")
        assert [] == controls_in(shown)
        assert json.loads(raw) == json.loads(shown)

    def test_plain_json_line_unchanged(self) -> None:
        """A line without control characters is printed byte for byte."""
        raw = b'{"event": "user.login", "name": "Zo\xc3\xab"}'
        assert raw.decode() == json_for_terminal(raw)


class TestFollow:
    def test_reads_then_waits_for_more(self, tmp_path: Path) -> None:
        """Existing lines, then "caught up", then lines appended later (even in pieces)."""
        path = tmp_path / "events.jsonl"
        path.write_bytes(line(event="a"))

        def append_half() -> None:
            with path.open("ab") as handle:
                handle.write(b'{"event": ')

        def append_rest() -> None:
            with path.open("ab") as handle:
                handle.write(b'"b"}\n')

        lines = follow(path, sleep=Script(append_half, append_rest))
        try:
            assert ["a", None, None, "b"] == event_names(take(lines, 4))
        finally:
            lines.close()

    def test_survives_rotation(self, tmp_path: Path) -> None:
        """After logrotate renames the file, the rest of the old one, then the new one."""
        path = tmp_path / "events.jsonl"
        path.write_bytes(line(event="old-1"))

        def rotate() -> None:
            with path.open("ab") as handle:  # written just before the rename
                handle.write(line(event="old-2"))
            os.rename(path, tmp_path / "events.jsonl.1")

        def recreate() -> None:
            path.write_bytes(line(event="new-1"))

        lines = follow(path, sleep=Script(rotate, recreate))
        try:
            names = event_names(take(lines, 5))
        finally:
            lines.close()
        assert ["old-1", None, "old-2", None, "new-1"] == names

    def test_drains_old_file_written_during_rotation(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A line the writer appends to the old file while it is being replaced is not lost."""
        path = tmp_path / "events.jsonl"
        old = tmp_path / "events.jsonl.1"
        path.write_bytes(line(event="old-1"))
        real_replaced = bridge.tail._replaced

        def replaced_while_writing(where: Path, identity: tuple[int, int] | None) -> bool:
            rotated = real_replaced(where, identity)
            if rotated and b"old-late" not in old.read_bytes():
                with old.open("ab") as handle:  # lands after our last read of the old file
                    handle.write(line(event="old-late"))
            return rotated

        def rotate() -> None:
            os.rename(path, old)
            path.write_bytes(line(event="new-1"))

        monkeypatch.setattr(bridge.tail, "_replaced", replaced_while_writing)
        lines = follow(path, sleep=Script(rotate))
        try:
            assert ["old-1", None, "old-late", "new-1"] == event_names(take(lines, 4))
        finally:
            lines.close()

    def test_truncation_starts_over(self, tmp_path: Path) -> None:
        """A file truncated in place (copytruncate) is read again from its start."""
        path = tmp_path / "events.jsonl"
        path.write_bytes(line(event="first", padding="x" * 100))

        def truncate() -> None:
            path.write_bytes(line(event="after"))  # same inode, shorter

        lines = follow(path, sleep=Script(truncate))
        try:
            assert ["first", None, "after"] == event_names(take(lines, 3))
        finally:
            lines.close()

    def test_waits_for_missing_file(self, tmp_path: Path) -> None:
        """A file that does not exist yet is waited for."""
        path = tmp_path / "later.jsonl"
        lines = follow(path, sleep=Script(lambda: path.write_bytes(line(event="born"))))
        try:
            assert [None, "born"] == event_names(take(lines, 2))
        finally:
            lines.close()

    def test_last_n_then_new_lines(self, tmp_path: Path) -> None:
        """With last=N: the last N matching lines already there, then every new one."""
        path = tmp_path / "events.jsonl"
        path.write_bytes(b"".join(line(event=f"e{i}") for i in range(5)))

        def append() -> None:
            with path.open("ab") as handle:
                handle.write(line(event="e5"))

        lines = tail_lines(
            path, EventFilter(), follow_mode=True, last=2, sleep=Script(lambda: None, append)
        )
        try:
            assert ["e3", "e4", "e5"] == event_names([next(lines) for _ in range(3)])
        finally:
            lines.close()

"""Fit an event that is too large into `max_line_bytes`, largest values first.

`LineEncoder` calls `fit_event` only when the encoded event is over the limit (the common path
never comes here). The event is already JSON-safe: dicts with text keys, lists, text, numbers.

The room left after the envelope is shared out like water: fields are visited from the
smallest to the largest, and each may use an equal share of what is left. A small field
(`user_id`, `probe`) fits its share and is kept whole; the large ones share the rest and are
shrunk to their share: a string is cut (`...[truncated]`; a stack trace keeps its end), a list
keeps a head and a last item `...[truncated: N items]`, a dict keeps the keys that fit, by the
same rule, and `bridge.truncated_items: N` (N is always the original size). A field that
cannot shrink to its share (a number, or a share too small for anything) is left out and
counted in the event's own `bridge.truncated_items`. The envelope always stays; the line says
`bridge.truncated: true` and the encoded size it had, `bridge.original_bytes`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = [
    "ITEMS_MARK",
    "TAIL_KEYS",
    "TAIL_MARK",
    "TRUNCATED_ITEMS",
    "TRUNCATED_MARK",
    "fit_event",
    "items_mark",
]

TRUNCATED_MARK = "...[truncated]"
TAIL_MARK = "[truncated]..."
TRUNCATED_ITEMS = "bridge.truncated_items"
ITEMS_MARK = "...[truncated: {} items]"
_ITEMS_MARK = re.compile(r"\.\.\.\[truncated: (\d+) items\]")
# Text where the end says the most: a stack trace ends with the innermost frame and the error.
TAIL_KEYS = frozenset({"exception.stacktrace", "log.stack_info"})
_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z  # the encoder's, but for the newline


class _Nothing:
    """What `_fit` returns when no form of the value fits."""


_NOTHING = _Nothing()


def items_mark(length: int) -> str:
    """The last item of a list that was cut: says how many items the list had."""
    return ITEMS_MARK.format(length)


def _size(value: Any) -> int:
    return len(orjson.dumps(value, option=_OPTIONS))


def fit_event(
    event: Mapping[str, Any], envelope_keys: tuple[str, ...], max_bytes: int, original_size: int
) -> dict[str, Any] | None:
    """The event shrunk so that its encoded line (with newline) is at most `max_bytes`.

    `None` when even the envelope and the markers cannot fit.
    """
    envelope = {key: event[key] for key in envelope_keys if key in event}
    fields = {key: value for key, value in event.items() if key not in envelope}
    markers: dict[str, Any] = {"bridge.truncated": True, "bridge.original_bytes": original_size}
    room = max_bytes - 3  # braces and newline
    if _entries_size(envelope) > room // 2:  # a huge event name (a log message) is cut too
        envelope, left_out = _fit_entries(envelope, room // 2)
        if left_out:
            return None
    room -= _entries_size(envelope) + _entries_size(markers)
    room -= _entries_size({TRUNCATED_ITEMS: 10 * max(len(fields), original_size)})
    if room < 0:
        return None
    kept, left_out = _fit_entries(fields, room)
    if left_out:
        kept[TRUNCATED_ITEMS] = _original_items(fields, len(fields))
    return {**envelope, **kept, **markers}


def _entries_size(entries: Mapping[str, Any]) -> int:
    """Bytes of `"key":value,` for each entry (one comma too many: never an underestimate)."""
    return sum(_size(key) + _size(value) + 2 for key, value in entries.items())


def _original_items(mapping: Mapping[str, Any], length: int) -> int:
    earlier = mapping.get(TRUNCATED_ITEMS)  # the safe walk cut it already and said so
    if type(earlier) is int and earlier > length:
        return earlier
    return length


def _fit_entries(entries: Mapping[str, Any], room: int) -> tuple[dict[str, Any], int]:
    """The entries that fit in `room` bytes, small ones whole, large ones shrunk to an equal
    share of what is left; and how many were left out."""
    sized = [
        (_size(key) + 2, _size(value), index, key, value)
        for index, (key, value) in enumerate(entries.items())
    ]
    sized.sort(key=lambda entry: entry[0] + entry[1])  # stable: ties keep their order
    placed: dict[int, tuple[str, Any]] = {}
    crowded: list[tuple[int, int, int, str, Any]] = []
    for position, (key_size, value_size, index, key, value) in enumerate(sized):
        share = room // (len(sized) - position)
        if key_size + value_size <= share:
            placed[index] = (key, value)
            room -= key_size + value_size
            continue
        fitted = _fit(value, share - key_size, tail=key in TAIL_KEYS)
        if fitted is _NOTHING:  # too many entries to share the room: the first ones win
            crowded = sorted(sized[position:], key=lambda entry: entry[2])
            break
        placed[index] = (key, fitted)
        room -= key_size + _size(fitted)
    unplaced = []
    for key_size, value_size, index, key, value in crowded:
        if key_size + value_size <= room:
            placed[index] = (key, value)
            room -= key_size + value_size
        else:
            unplaced.append((key_size, index, key, value))
    for key_size, index, key, value in unplaced:  # whatever room is left, shrunk to it
        fitted = _fit(value, room - key_size, tail=key in TAIL_KEYS)
        if fitted is not _NOTHING:
            placed[index] = (key, fitted)
            room -= key_size + _size(fitted)
    return dict(placed[index] for index in sorted(placed)), len(entries) - len(placed)


def _fit(value: Any, room: int, *, tail: bool = False) -> Any:
    """`value`, or a shrunk form of it, encoding to at most `room` bytes; else `_NOTHING`."""
    if room <= 0:
        return _NOTHING
    if _size(value) <= room:
        return value
    if isinstance(value, str):
        return _fit_text(value, room, tail=tail)
    if isinstance(value, list):
        return _fit_list(value, room)
    if isinstance(value, dict):
        return _fit_dict(value, room)
    return _NOTHING  # a number cannot shrink


def _fit_text(text: str, room: int, *, tail: bool) -> Any:
    mark = TAIL_MARK if tail else TRUNCATED_MARK
    keep = min(len(text), room - _size(mark))  # a character encodes to one byte or more
    if keep < 0:
        return _NOTHING
    while True:
        cut = mark + text[len(text) - keep :] if tail else text[:keep] + mark
        excess = _size(cut) - room
        if excess <= 0:
            return cut
        keep = max(0, keep - excess)  # removing n characters removes n bytes or more


def _fit_list(items: list[Any], room: int) -> Any:
    length = len(items)
    if items and isinstance(items[-1], str) and (earlier := _ITEMS_MARK.fullmatch(items[-1])):
        items = items[:-1]  # already cut by the safe walk: keep its original length
        length = int(earlier.group(1))
    mark = items_mark(length)
    room -= _size([mark]) + 1  # brackets, the mark and its comma
    kept: list[Any] = []
    for item in items:
        item_size = _size(item) + 1
        if item_size <= room:
            kept.append(item)
            room -= item_size
            continue
        if not kept:  # the first item alone is too large: keep a shrunk form of it
            fitted = _fit(item, room - 1)
            if fitted is not _NOTHING:
                kept.append(fitted)
        break
    kept.append(mark)
    return kept


def _fit_dict(mapping: dict[str, Any], room: int) -> Any:
    original = _original_items(mapping, len(mapping))
    room -= 2 + _size(TRUNCATED_ITEMS) + _size(original) + 2
    if room < 0:
        return _NOTHING
    kept, left_out = _fit_entries(mapping, room)
    if left_out or original > len(mapping):
        kept[TRUNCATED_ITEMS] = original
    return kept

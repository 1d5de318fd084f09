"""structlog processors that make any event safe to write, and the encoder that writes it.

`MakeJsonSafe` runs last in the bridge's chain (after the user's processors, so they see the
real objects): one walk that converts values to JSON types, redacts sensitive keys at any
depth, truncates long strings and breaks cycles. `LineEncoder` turns the result into one
UTF-8 JSON line of at most `max_line_bytes`, whatever the input: a payload that still fails to
encode produces a valid line that says so, and one too large is shrunk largest values first
(`bridge.shrink`), so its small fields survive.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
import uuid
from collections.abc import Callable, Mapping, MutableMapping
from decimal import Decimal
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import PurePath
from typing import Any

import orjson

from bridge.events import ENVELOPE_KEYS, ENVELOPE_ORDER
from bridge.redaction import REDACTED, SensitiveKeys, scrub_known
from bridge.shrink import (
    TAIL_KEYS,
    TAIL_MARK,
    TRUNCATED_ITEMS,
    TRUNCATED_MARK,
    fit_event,
    items_mark,
)

__all__ = [
    "REDACTED",
    "EventDict",
    "LineEncoder",
    "MakeJsonSafe",
    "Processor",
    "SensitiveKeys",
]

EventDict = MutableMapping[str, Any]
Processor = Callable[[Any, str, EventDict], EventDict]

_MAX_DEPTH = 10
_MAX_ITEMS = 1000
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson encodes natively
_SURROGATES = re.compile("[\ud800-\udfff]")
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})
_STR_TYPES = (PurePath, uuid.UUID, Decimal, IPv4Address, IPv6Address, IPv4Network, IPv6Network)


def _type_tag(value: object) -> str:
    cls = type(value)
    return f"<{cls.__module__}.{cls.__qualname__}>"


def _int_text(value: int) -> str:
    """An int beyond 64 bits as text; beyond what `str()` allows (4300 digits), its size."""
    try:
        return str(value)
    except ValueError:
        return f"<int of {value.bit_length()} bits>"


def _clean_text(text: str, limit: int, *, tail: bool = False) -> str:
    if len(text) > limit:  # a stack trace keeps its end: the innermost frames say the most
        text = TAIL_MARK + text[-limit:] if tail else text[:limit] + TRUNCATED_MARK
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: orjson refuses them
            text = _SURROGATES.sub("\ufffd", text)
    return text


def _timestamp(value: dt.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds") + "Z"


class MakeJsonSafe:
    """Convert, redact and truncate every value of the event, at any depth.

    Rules: datetime to RFC 3339 UTC (naive taken as UTC), bytes decoded with replacement, sets
    to lists, namedtuples and dataclass instances to objects of their fields (each redacted by
    its name), an object with `get_id()` under key `K` to `K.id`, an exception to its type and
    message with secrets scrubbed (`scrub`), other objects to a short type tag such as
    `<app.models.User>` (never their attributes or repr, which may hold secrets). Whether a key
    is sensitive is decided on the whole key, before it is cut to 256 characters. Lists and
    dicts beyond 1000 items keep their head and say their original length. Envelope keys are
    left as the bridge wrote them.
    """

    def __init__(
        self,
        is_sensitive: Callable[[str], bool],
        max_string_chars: int,
        scrub: Callable[[str], str] = scrub_known,
    ) -> None:
        self.is_sensitive = is_sensitive
        self.max_string_chars = max_string_chars
        self.scrub = scrub
        # key -> (cleaned key, redact?); the same few keys recur on every event
        self._keys: dict[str, tuple[str, bool]] = {}
        # a signal's set of argument names -> may its values pass as they are (`plain`)
        self._plain_keys: dict[tuple[Any, ...], bool] = {}

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        return self.convert_mapping(event_dict, top_level=True)

    def _key(self, raw_key: Any) -> tuple[str, bool]:
        known = self._keys.get(raw_key) if type(raw_key) is str else None
        if known is not None:
            return known
        text = raw_key if type(raw_key) is str else self._key_text(raw_key)
        known = (_clean_text(text, 256), self.is_sensitive(text))
        # Only short keys are kept: a client's unique long keys must not pin megabytes.
        if type(raw_key) is str and len(raw_key) <= 256 and len(self._keys) < 4096:
            self._keys[raw_key] = known
        return known

    def plain(self, mapping: Mapping[Any, Any]) -> Mapping[Any, Any] | None:
        """`mapping` itself when the walk would leave it as it is, or None.

        That is: every key a short text, neither sensitive nor needing cleaning (a verdict
        cached per set of keys), and every value exactly a str, int, float, bool or None. The
        walk's other rules then are the encoder's to check on the line: orjson refuses an
        int beyond 64 bits and a lone surrogate, and a line no longer than
        `max_string_chars` bytes holds no string longer than that (the caller's checks).
        Pseudonymized fields are no concern of this verdict: they are hidden where the line
        is made (`bridge.pseudonyms`), whatever passed here as plain.
        """
        if not _PLAIN_TYPES.issuperset(map(type, mapping.values())):
            return None
        keys = tuple(mapping)
        verdict = self._plain_keys.get(keys)
        if verdict is None:
            verdict = all(type(key) is str and self._key(key) == (key, False) for key in keys)
            if len(self._plain_keys) < 1024:
                self._plain_keys[keys] = verdict
        return mapping if verdict else None

    def convert_mapping(
        self,
        mapping: Mapping[Any, Any],
        *,
        top_level: bool = False,
        depth: int = 0,
        seen: frozenset[int] = frozenset(),
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        limit = self.max_string_chars
        inner_seen: frozenset[int] | None = None
        items = mapping.items()
        if len(mapping) > _MAX_ITEMS:
            items = list(items)[:_MAX_ITEMS]  # type: ignore[assignment]
            out[TRUNCATED_ITEMS] = len(mapping)
        known_keys = self._keys
        for raw_key, value in items:
            # The key's cached verdict, looked up here: a call per key costs more than the rest
            known = known_keys.get(raw_key) if type(raw_key) is str else None
            key, sensitive = known if known is not None else self._key(raw_key)
            cls = type(value)
            if sensitive and not (top_level and key in ENVELOPE_KEYS):
                out[key] = REDACTED
            elif cls is str and len(value) <= limit and value.isascii():
                out[key] = value  # the common case, kept cheap
            elif value is None or cls is int or cls is bool or cls is float:
                out[key] = (
                    value if cls is not int or _INT_MIN <= value <= _INT_MAX else _int_text(value)
                )
            elif top_level and key in ENVELOPE_KEYS:
                out[key] = value
            elif top_level and cls is str and key in TAIL_KEYS:
                out[key] = _clean_text(value, limit, tail=True)
            elif (user_id := self._user_id(value)) is not None:
                out[f"{key}.id"] = user_id
            else:
                if inner_seen is None:
                    inner_seen = seen | {id(mapping)}
                out[key] = self.convert(value, depth + 1, inner_seen)
        return out

    def convert(self, value: Any, depth: int = 0, seen: frozenset[int] = frozenset()) -> Any:
        """One value made JSON-safe; never raises."""
        try:
            return self._convert(value, depth, seen)
        except Exception:
            return f"<unserializable {type(value).__qualname__}>"

    def _convert(self, value: Any, depth: int, seen: frozenset[int]) -> Any:
        cls = type(value)
        if cls is str:
            return _clean_text(value, self.max_string_chars)
        if value is None or cls is bool or cls is float:
            return value
        if isinstance(value, int) and not isinstance(value, bool | enum.Enum):
            return int(value) if _INT_MIN <= value <= _INT_MAX else _int_text(int(value))
        if isinstance(value, Mapping | list | tuple | set | frozenset):
            if depth > _MAX_DEPTH:
                return "<too deep>"
            if id(value) in seen:
                return "<cycle>"
            if isinstance(value, Mapping):
                return self.convert_mapping(value, depth=depth, seen=seen)
            if isinstance(value, tuple) and cls is not tuple and hasattr(cls, "_fields"):
                # a namedtuple: an object of its fields, so `password` is redacted by name
                fields = dict(zip(cls._fields, value, strict=False))
                return self.convert_mapping(fields, depth=depth, seen=seen | {id(value)})
            return self._convert_items(value, depth, seen | {id(value)})
        if isinstance(value, str):  # str subclasses (markupsafe.Markup, ...)
            return _clean_text(str.__str__(value), self.max_string_chars)
        if isinstance(value, bytes | bytearray | memoryview):
            data = bytes(value[: self.max_string_chars * 4])
            return _clean_text(data.decode("utf-8", "replace"), self.max_string_chars)
        if isinstance(value, dt.datetime):
            return _timestamp(value)
        if isinstance(value, dt.date | dt.time):
            return value.isoformat()
        if isinstance(value, dt.timedelta):
            return value.total_seconds()
        if isinstance(value, enum.Enum):
            return self._convert(value.value, depth + 1, seen)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, _STR_TYPES):
            return _clean_text(str(value), self.max_string_chars)
        if isinstance(value, BaseException):
            # Cut before scrubbing (far from the final cut): a 10 MB message costs no more.
            text = self.scrub(f"{_type_tag(value)}: {value}"[: 4 * self.max_string_chars])
            return _clean_text(text, self.max_string_chars)
        user_id = self._user_id(value)
        if user_id is not None:
            return user_id
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            if depth > _MAX_DEPTH:
                return "<too deep>"
            if id(value) in seen:
                return "<cycle>"
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            return self.convert_mapping(fields, depth=depth, seen=seen | {id(value)})
        return _type_tag(value)

    def _convert_items(
        self,
        items: list[Any] | tuple[Any, ...] | set[Any] | frozenset[Any],
        depth: int,
        seen: frozenset[int],
    ) -> list[Any]:
        out = []
        for count, item in enumerate(items):
            if count >= _MAX_ITEMS:
                out.append(items_mark(len(items)))
                break
            out.append(self.convert(item, depth + 1, seen))
        return out

    def _user_id(self, value: Any) -> str | None:
        """The id of an object that has `get_id()` (Flask-Login users), as text."""
        if type(value) in (str, int, float, bool, dict, list, tuple) or value is None:
            return None
        try:
            get_id = getattr(value, "get_id", None)
            if not callable(get_id):
                return None
            return _clean_text(str(get_id()), 256)
        except Exception:
            return None

    @staticmethod
    def _key_text(key: Any) -> str:
        if isinstance(key, int) and not isinstance(key, bool | enum.Enum):
            return _int_text(int(key))
        if key is None or isinstance(key, float | bool | enum.Enum):
            return str(key)
        if isinstance(key, bytes):
            return key.decode("utf-8", "replace")
        return _type_tag(key)


class LineEncoder:
    """Encode an event as one JSON line (UTF-8, ending in a newline) of at most `max_bytes`.

    Fast path: `orjson.dumps` on the event as it is. If that fails (something the safe walk was
    not given the chance to clean) the event is made safe and encoded again; if it is too long,
    the largest values shrink first (`bridge.shrink.fit_event`), and the line says
    `bridge.truncated` and the original size; as a last resort only the envelope is kept. The
    result is always one valid line.
    """

    OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z

    def __init__(self, max_bytes: int, make_safe: MakeJsonSafe) -> None:
        self.max_bytes = max_bytes
        self.make_safe = make_safe

    def __call__(self, event_dict: EventDict) -> bytes:
        try:
            line = orjson.dumps(event_dict, option=self.OPTIONS)
        except Exception:
            event_dict = self.make_safe(None, "encode", event_dict)
            line = self._dumps_or_envelope(event_dict, reason="encode_failed")
        if len(line) > self.max_bytes:
            line = self._shrink(event_dict, len(line))
        return line

    def _dumps_or_envelope(self, event_dict: EventDict, *, reason: str) -> bytes:
        try:
            return orjson.dumps(event_dict, option=self.OPTIONS)
        except Exception:
            return self._envelope_only(event_dict, {"bridge.error": reason})

    def _shrink(self, event_dict: EventDict, original_size: int) -> bytes:
        marker = {"bridge.truncated": True, "bridge.original_bytes": original_size}
        try:  # encoded once already: text keys and values orjson knows, safe but too many
            fitted = fit_event(event_dict, ENVELOPE_ORDER, self.max_bytes, original_size)
            if fitted is not None:
                line = orjson.dumps(fitted, option=self.OPTIONS)
                if len(line) <= self.max_bytes:
                    return line
        except Exception:
            pass  # the envelope alone still makes a line
        return self._envelope_only(event_dict, marker)

    def _envelope_only(self, event_dict: EventDict, extra: dict[str, Any]) -> bytes:
        short = MakeJsonSafe(self.make_safe.is_sensitive, 256)
        kept = {key: short.convert(event_dict[key]) for key in ENVELOPE_ORDER if key in event_dict}
        kept.update(extra)
        try:
            return orjson.dumps(kept, option=self.OPTIONS)
        except Exception:
            return orjson.dumps(extra, option=self.OPTIONS)

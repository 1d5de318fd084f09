"""Checking an http sink's `format_options` against its wire format's `Options` dataclass.

A format (`bridge.formats`) declares its settings as a frozen dataclass of plain types; this
module is the configuration's side of that seam: it checks each value with the schema's own
checkers (`bridge.configvalues`: `${NAME}` interpolation, secrets never shown in errors),
names unknown keys, and turns the dataclass's own objections (`OptionError`) into
`ConfigError`s under the sink's key, all at `init_app`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from bridge import configvalues as v
from bridge import formats
from bridge.errors import ConfigError
from bridge.formats import OptionError

__all__ = ["build", "check", "table"]

_CHECKERS: dict[Any, v.Checker] = {
    str: v.string,
    bool: v.boolean,
    int: v.positive_int,
    float: v.duration,
    tuple[str, ...]: v.string_list,
    dict[str, str]: v.string_table,
}


def table(key: str, value: Any) -> Mapping[str, Any]:
    """The raw `format_options` table; its keys are checked once the format is known."""
    if not isinstance(value, Mapping):
        raise ConfigError(key, value, "a table of the format's options")
    return value


def _checker(annotation: Any) -> v.Checker:
    if isinstance(annotation, types.UnionType) and type(None) in annotation.__args__:
        (inner,) = (a for a in annotation.__args__ if a is not type(None))
        return v.optional(_CHECKERS[inner])
    return _CHECKERS[annotation]


def check(name: str, raw: Mapping[str, Any] | None, where: str, problems: v.Problems) -> Any:
    """The options of format `name` from `raw` (None: the defaults), or `v.INVALID` with every
    mistake noted in `problems` under `where`. A format not written yet keeps `raw` (building
    the sink reports it)."""
    try:
        options_type = formats.options_type(name)
    except ConfigError:
        return raw
    hints = typing.get_type_hints(options_type)
    fields = {f.name: f for f in dataclasses.fields(options_type)}
    values: dict[str, Any] = {}
    before = len(problems.found)
    for key, value in (raw or {}).items():
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            problems.add(f"{where}.{key}", value, f"an option of format {name}: {known}")
            continue
        values[key] = problems.check(_checker(hints[key]), f"{where}.{key}", value)
    if len(problems.found) != before:
        return v.INVALID
    try:
        return options_type(**values)
    except OptionError as exc:
        problems.add(f"{where}.{exc.option}", exc.value, exc.expected)
        return v.INVALID


def build(name: str, options: Any, where: str = "format_options") -> Any:
    """Options for format `name` from settings built in code: an `Options` instance as it is,
    a mapping checked as the configuration would be (values taken literally), None for the
    defaults. ConfigError listing every mistake."""
    if options is not None and not isinstance(options, Mapping):
        return options
    problems = v.Problems()
    with v.literal():
        built = check(name, options, where, problems)
    if problems.found:
        raise ConfigError.of(problems.found)
    return built

"""Wire formats of the `http` sink, by name: `get_format("ndjson")`; the one list of names.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

Each format is one small module implementing `bridge.formats.base.Format`, registered here
with its options' dataclass. `NAMES` is every name the configuration accepts (`bridge.config`
checks `format` against it): the implemented ones and those planned but not written yet
(`PLANNED`), which fail when the sink is built, with a `ConfigError` naming the implemented
ones, never when a batch is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.errors import ConfigError
from bridge.formats.base import NO_LIMITS, Format, Limits, NoOptions, OptionError, Payload
from bridge.formats.json_array import JsonArrayFormat
from bridge.formats.ndjson import NdjsonFormat
from bridge.formats.sls import SlsFormat, SlsOptions
from bridge.formats.sls_putlogs import SlsPutLogsFormat, SlsPutLogsOptions

__all__ = [
    "IMPLEMENTED",
    "NAMES",
    "NO_LIMITS",
    "PLANNED",
    "Format",
    "Limits",
    "OptionError",
    "Payload",
    "get_format",
    "options_type",
]


@dataclass(frozen=True, slots=True)
class _Entry:
    options: type[Any]
    build: Callable[[Any], Format]


_REGISTRY: dict[str, _Entry] = {
    "ndjson": _Entry(NoOptions, lambda _: NdjsonFormat()),
    "json_array": _Entry(NoOptions, lambda _: JsonArrayFormat()),
    "sls": _Entry(SlsOptions, SlsFormat),
    "sls_putlogs": _Entry(SlsPutLogsOptions, SlsPutLogsFormat),
}
IMPLEMENTED = tuple(sorted(_REGISTRY))
PLANNED = tuple(
    name
    for name in ("loki", "elasticsearch", "splunk_hec", "otlp", "sls", "sls_putlogs", "datadog")
    if name not in _REGISTRY
)
NAMES = (*_REGISTRY, *PLANNED)


def _entry(name: str) -> _Entry:
    entry = _REGISTRY.get(name)
    if entry is None:
        implemented = ", ".join(IMPLEMENTED)
        if name in PLANNED:
            expected = f"an implemented format ({name} is planned, not written yet): {implemented}"
        else:
            expected = f"an implemented format: {implemented}"
        raise ConfigError("format", name, expected)
    return entry


def options_type(name: str) -> type[Any]:
    """The dataclass of the options of the format called `name` (ConfigError as get_format)."""
    return _entry(name).options


def get_format(name: str, options: Any = None) -> Format:
    """The format called `name`, with `options` (an instance of `options_type(name)`; None:
    the defaults). ConfigError (key "format") if it is unknown or not written yet."""
    entry = _entry(name)
    return entry.build(entry.options() if options is None else options)

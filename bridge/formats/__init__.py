"""Wire formats of the `http` sink, by name: `get_format("ndjson")`.

Each format is one small module implementing `bridge.formats.base.Format`. Names the config
accepts but that are not written yet (see `PLANNED`) fail when the sink is built, with a
`ConfigError` naming the implemented ones, never when a batch is sent.
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.errors import ConfigError
from bridge.formats.base import NO_FAILURES, Format, ItemFailures, Payload
from bridge.formats.json_array import JsonArrayFormat
from bridge.formats.ndjson import NdjsonFormat

__all__ = [
    "IMPLEMENTED",
    "NO_FAILURES",
    "PLANNED",
    "Format",
    "ItemFailures",
    "Payload",
    "get_format",
]

_REGISTRY: dict[str, Callable[[], Format]] = {
    "ndjson": NdjsonFormat,
    "json_array": JsonArrayFormat,
}
IMPLEMENTED = tuple(sorted(_REGISTRY))
PLANNED = ("datadog", "elasticsearch", "loki", "otlp", "sls", "splunk_hec")


def get_format(name: str) -> Format:
    """The format called `name`; ConfigError (key "format") if it is unknown or not written yet."""
    factory = _REGISTRY.get(name)
    if factory is None:
        implemented = ", ".join(IMPLEMENTED)
        if name in PLANNED:
            expected = f"an implemented format ({name} is planned, not written yet): {implemented}"
        else:
            expected = f"an implemented format: {implemented}"
        raise ConfigError("format", name, expected)
    return factory()

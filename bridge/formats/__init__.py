"""Wire formats of the `http` sink, by name: `get_format("ndjson")`; the one list of names.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

Each format is one small module implementing `bridge.formats.base.Format`. `NAMES` is every
name the configuration accepts (`bridge.config` checks `format` against it): the implemented
ones and those planned but not written yet (`PLANNED`), which fail when the sink is built,
with a `ConfigError` naming the implemented ones, never when a batch is sent.
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.errors import ConfigError
from bridge.formats.base import Format, Payload
from bridge.formats.json_array import JsonArrayFormat
from bridge.formats.ndjson import NdjsonFormat

__all__ = ["IMPLEMENTED", "NAMES", "PLANNED", "Format", "Payload", "get_format"]

_REGISTRY: dict[str, Callable[[], Format]] = {
    "ndjson": NdjsonFormat,
    "json_array": JsonArrayFormat,
}
IMPLEMENTED = tuple(sorted(_REGISTRY))
PLANNED = ("loki", "elasticsearch", "splunk_hec", "otlp", "sls", "datadog")
NAMES = (*_REGISTRY, *PLANNED)


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

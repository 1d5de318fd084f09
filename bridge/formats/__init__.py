"""Wire formats of the `http` sink, by name: `get_format("ndjson")`; the one list of names.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

Each format is one small module implementing `bridge.formats.base.Format`, registered here
with its options' dataclass (`bridge.formatoptions` checks a sink's `format_options` against
it). `NAMES` is every name the configuration accepts (`bridge.config` checks `format` against
it); a name no module implements (settings built in code) is a `ConfigError` naming the
implemented ones when the sink is built, never when a batch is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.errors import ConfigError
from bridge.formats.base import NO_LIMITS, Format, Limits, NoOptions, OptionError, Payload
from bridge.formats.datadog import DatadogFormat, DatadogOptions
from bridge.formats.elasticsearch import ElasticsearchFormat, ElasticsearchOptions
from bridge.formats.json_array import JsonArrayFormat
from bridge.formats.loki import LokiFormat, LokiOptions
from bridge.formats.ndjson import NdjsonFormat
from bridge.formats.otlp import OtlpFormat, OtlpOptions
from bridge.formats.sls import SlsFormat, SlsOptions
from bridge.formats.sls_putlogs import SlsPutLogsFormat, SlsPutLogsOptions
from bridge.formats.splunk_hec import SplunkHecFormat, SplunkHecOptions

__all__ = [
    "IMPLEMENTED",
    "NAMES",
    "NO_LIMITS",
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
    "loki": _Entry(LokiOptions, LokiFormat),
    "json_array": _Entry(NoOptions, lambda _: JsonArrayFormat()),
    "splunk_hec": _Entry(SplunkHecOptions, SplunkHecFormat),
    "datadog": _Entry(DatadogOptions, DatadogFormat),
    "elasticsearch": _Entry(ElasticsearchOptions, ElasticsearchFormat),
    "otlp": _Entry(OtlpOptions, OtlpFormat),
    "sls": _Entry(SlsOptions, SlsFormat),
    "sls_putlogs": _Entry(SlsPutLogsOptions, SlsPutLogsFormat),
}
IMPLEMENTED = tuple(sorted(_REGISTRY))
NAMES = tuple(_REGISTRY)


def _entry(name: str) -> _Entry:
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ConfigError("format", name, f"an implemented format: {', '.join(IMPLEMENTED)}")
    return entry


def options_type(name: str) -> type[Any]:
    """The dataclass of the options of the format called `name` (ConfigError as get_format)."""
    return _entry(name).options


def get_format(name: str, options: Any = None) -> Format:
    """The format called `name`, with `options` (an instance of `options_type(name)`; None:
    the defaults). ConfigError (key "format") if it is unknown or not written yet."""
    entry = _entry(name)
    return entry.build(entry.options() if options is None else options)

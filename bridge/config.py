"""Typed, frozen settings, read once in `init_app` from TOML, app.config and the environment.

Sources, later ones winning: the TOML file named by `BRIDGE_CONFIG` (environment first, then
app.config), app.config keys `BRIDGE_<KEY>`, environment variables `BRIDGE_<KEY>` (tables and
lists as JSON text). `${NAME}` in any string is replaced by the environment variable NAME.
Every mistake raises `ConfigError` naming the key, the value and what was expected; error
messages show values as written, before `${NAME}` interpolation, so secrets never appear.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.errors import ConfigError
from bridge.redaction import DEFAULT_REDACT_TERMS, normalize_key

__all__ = [
    "FileSinkSettings",
    "HttpSinkSettings",
    "Settings",
    "SinkSettings",
    "StdoutSinkSettings",
    "load_settings",
]

OVERFLOW_POLICIES = ("drop_newest", "drop_oldest", "block", "spool")
HTTP_FORMATS = (
    "ndjson",
    "json_array",
    "loki",
    "elasticsearch",
    "splunk_hec",
    "otlp",
    "sls",
    "datadog",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkSettings:
    """Keys every sink has. `name` defaults to `<type>-<position in the sinks list>`."""

    type: str
    name: str
    overflow: str = "drop_newest"
    queue_max_events: int = 10_000
    queue_max_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class FileSinkSettings(SinkSettings):
    """A JSON-lines file shared safely by every worker process (O_APPEND, one write per line)."""

    path: Path
    file_mode: int = 0o640
    rotate_bytes: int = 0
    backups: int = 5
    sync: bool = False
    fsync: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class StdoutSinkSettings(SinkSettings):
    """Standard output (or error) of the process, as container runtimes collect it."""

    stream: str = "stdout"


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSinkSettings(SinkSettings):
    """An HTTP log collector reached through the delivery engine (batch, retry, spool)."""

    url: str
    format: str = "ndjson"
    headers: Mapping[str, str] = field(default_factory=dict)
    gzip: bool = True
    timeout_connect: float = 5.0
    timeout_read: float = 10.0
    batch_max_events: int = 500
    batch_max_bytes: int = 1024 * 1024
    batch_timeout: float = 1.0
    retry_initial_backoff: float = 0.5
    retry_max_backoff: float = 30.0
    retry_max_duration: float = 300.0
    spool_dir: Path | None = None
    spool_max_bytes: int = 256 * 1024 * 1024
    spool_fsync: str | float = 1.0
    event_ttl: float = 7 * 24 * 3600.0
    dead_letter_path: Path | None = None
    verify: bool = True
    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the bridge reads from configuration, validated."""

    service: str
    signals: tuple[str, ...]
    rename: Mapping[str, str]
    redact: tuple[str, ...]
    max_line_bytes: int
    shutdown_timeout: float
    loggers: tuple[str, ...]
    sinks: tuple[SinkSettings, ...]

    @property
    def redact_terms(self) -> tuple[str, ...]:
        """The default sensitive-key terms plus the configured extra ones, normalized."""
        extra = tuple(normalize_key(term) for term in self.redact)
        return DEFAULT_REDACT_TERMS + tuple(t for t in extra if t not in DEFAULT_REDACT_TERMS)


# --- value checkers: each returns the typed value or raises ConfigError ------------------------

Checker = Callable[[str, Any], Any]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, value, "a string")
    return _interpolate(key, value)


def _nonempty_string(key: str, value: Any) -> str:
    text = _string(key, value)
    if not text:
        raise ConfigError(key, value, "a non-empty string")
    return text


def _optional_string(key: str, value: Any) -> str | None:
    return None if value is None else _nonempty_string(key, value)


def _size(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(key, value, "a size in bytes: a whole number >= 0")
    return value


def _positive_int(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(key, value, "a whole number >= 1")
    return value


def _duration(key: str, value: Any) -> float:
    if not _is_number(value) or value < 0 or value != value:
        raise ConfigError(key, value, "a duration in seconds: a number >= 0")
    return float(value)


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")
    return value


def _string_list(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, value, "a list of strings")
    return tuple(_interpolate(key, v) for v in value)


def _string_table(key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(key, value, "a table of string keys to string values")
    return {k: _interpolate(f"{key}.{k}", v) for k, v in value.items()}


def _path(key: str, value: Any) -> Path:
    return Path(_nonempty_string(key, value))


def _optional_path(key: str, value: Any) -> Path | None:
    return None if value is None else _path(key, value)


def _file_mode(key: str, value: Any) -> int:
    if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", value):
        return int(value.replace("o", ""), 8)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777:
        return value
    raise ConfigError(key, value, 'an octal file mode as text, such as "0640"')


def _spool_fsync(key: str, value: Any) -> str | float:
    if value in ("never", "batch"):
        return str(value)
    if _is_number(value) and value > 0:
        return float(value)
    raise ConfigError(key, value, '"never", "batch", or an interval in seconds > 0')


def _choice(*choices: str) -> Checker:
    def check(key: str, value: Any) -> str:
        if value not in choices:
            raise ConfigError(key, value, "one of " + ", ".join(repr(c) for c in choices))
        return str(value)

    return check


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _interpolate(key: str, text: str) -> str:
    """Replace `${NAME}` with the environment variable NAME; a missing one is a ConfigError."""
    if "${" not in text:
        return text

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(key, text, f"environment variable {name} to be set")
        return os.environ[name]

    return _ENV_REFERENCE.sub(lookup, text)


# --- schemas ------------------------------------------------------------------------------------

_TOP_LEVEL: dict[str, Checker] = {
    "service": _nonempty_string,
    "signals": _string_list,
    "rename": _string_table,
    "redact": _string_list,
    "max_line_bytes": _positive_int,
    "shutdown_timeout": _duration,
    "loggers": _string_list,
    "sinks": lambda key, value: value,  # checked per sink below
}

_COMMON_SINK: dict[str, Checker] = {
    "type": _choice("file", "stdout", "http"),
    "name": _nonempty_string,
    "overflow": _choice(*OVERFLOW_POLICIES),
    "queue_max_events": _positive_int,
    "queue_max_bytes": _positive_int,
}

_SINK_KEYS: dict[str, tuple[type[SinkSettings], dict[str, Checker]]] = {
    "file": (
        FileSinkSettings,
        {
            "path": _path,
            "file_mode": _file_mode,
            "rotate_bytes": _size,
            "backups": _size,
            "sync": _boolean,
            "fsync": _boolean,
        },
    ),
    "stdout": (StdoutSinkSettings, {"stream": _choice("stdout", "stderr")}),
    "http": (
        HttpSinkSettings,
        {
            "url": _nonempty_string,
            "format": _choice(*HTTP_FORMATS),
            "headers": _string_table,
            "gzip": _boolean,
            "timeout_connect": _duration,
            "timeout_read": _duration,
            "batch_max_events": _positive_int,
            "batch_max_bytes": _positive_int,
            "batch_timeout": _duration,
            "retry_initial_backoff": _duration,
            "retry_max_backoff": _duration,
            "retry_max_duration": _duration,
            "spool_dir": _optional_path,
            "spool_max_bytes": _positive_int,
            "spool_fsync": _spool_fsync,
            "event_ttl": _duration,
            "dead_letter_path": _optional_path,
            "verify": _boolean,
            "ca_bundle": _optional_string,
            "client_cert": _optional_string,
            "client_key": _optional_string,
        },
    ),
}
_REQUIRED_SINK_KEYS = {"file": ("path",), "stdout": (), "http": ("url",)}

_DEFAULTS: dict[str, Any] = {
    "signals": ["default"],
    "rename": {},
    "redact": [],
    "max_line_bytes": 64 * 1024,
    "shutdown_timeout": 5.0,
    "loggers": [],
    "sinks": [{"type": "stdout"}],
}


def _parse_env_value(key: str, text: str) -> Any:
    """Environment values are text: JSON where it parses (numbers, booleans, lists, tables)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    if key in ("signals", "redact", "loggers"):
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def _read_toml(source: str, path_text: str) -> dict[str, Any]:
    path = Path(path_text)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(source, path_text, "the path of an existing TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, path_text, f"valid TOML ({exc})") from None


def _merge_sources(app_config: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    config_path = environ.get("BRIDGE_CONFIG") or app_config.get("BRIDGE_CONFIG")
    if config_path:
        source = "BRIDGE_CONFIG (environment)" if environ.get("BRIDGE_CONFIG") else "BRIDGE_CONFIG"
        if not isinstance(config_path, str | os.PathLike):
            raise ConfigError("BRIDGE_CONFIG", config_path, "the path of a TOML file")
        raw.update(_read_toml(source, os.fspath(config_path)))
    for name, value in app_config.items():
        if name.startswith("BRIDGE_") and name != "BRIDGE_CONFIG":
            raw[name[len("BRIDGE_") :].lower()] = value
    for name, text in environ.items():
        if name.startswith("BRIDGE_") and name != "BRIDGE_CONFIG":
            key = name[len("BRIDGE_") :].lower()
            raw[key] = _parse_env_value(key, text)
    return raw


def _check_sink(index: int, raw: Any) -> SinkSettings:
    where = f"sinks[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(where, raw, "a table with at least a `type` key")
    sink_type = _COMMON_SINK["type"](f"{where}.type", raw.get("type"))
    cls, specific = _SINK_KEYS[sink_type]
    checkers = {**_COMMON_SINK, **specific}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in checkers:
            known = ", ".join(sorted(checkers))
            raise ConfigError(
                f"{where}.{key}", value, f"a known key for a {sink_type} sink: {known}"
            )
        values[key] = checkers[key](f"{where}.{key}", value)
    for key in _REQUIRED_SINK_KEYS[sink_type]:
        if key not in values:
            raise ConfigError(f"{where}.{key}", None, f"a value: a {sink_type} sink needs `{key}`")
    values.setdefault("name", f"{sink_type}-{index}")
    has_spool = values.get("spool_dir") is not None
    values.setdefault("overflow", "spool" if has_spool else "drop_newest")
    if values["overflow"] == "spool" and not has_spool:
        raise ConfigError(
            f"{where}.overflow",
            "spool",
            "a policy this sink can follow: `spool` needs `spool_dir` on an http sink",
        )
    return cls(**values)


def load_settings(
    app_config: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    *,
    default_service: str = "app",
) -> Settings:
    """Merge file, app.config and environment into validated `Settings`, or raise ConfigError."""
    raw = _merge_sources(app_config, os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _TOP_LEVEL:
            known = ", ".join(sorted(_TOP_LEVEL))
            raise ConfigError(key, value, f"a known key: {known}")
        values[key] = _TOP_LEVEL[key](key, value)
    for key, default in _DEFAULTS.items():
        values.setdefault(key, _TOP_LEVEL[key](key, default))
    sinks = values["sinks"]
    if not isinstance(sinks, list | tuple):
        raise ConfigError("sinks", sinks, "a list of tables ([[sinks]] in TOML)")
    checked = tuple(_check_sink(i, s) for i, s in enumerate(sinks))
    names = [s.name for s in checked]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError("sinks.name", name, "a name used by one sink only")
    if values["max_line_bytes"] < 1024:
        raise ConfigError("max_line_bytes", values["max_line_bytes"], "at least 1024 bytes")
    return Settings(
        service=values.get("service", default_service),
        signals=values["signals"],
        rename=values["rename"],
        redact=values["redact"],
        max_line_bytes=values["max_line_bytes"],
        shutdown_timeout=values["shutdown_timeout"],
        loggers=values["loggers"],
        sinks=checked,
    )

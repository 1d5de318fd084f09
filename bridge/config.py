"""Typed, frozen settings, read once in `init_app` from TOML, app.config and the environment.

Sources, later ones winning: the TOML file named by `BRIDGE_CONFIG` (environment first, then
app.config), app.config keys `BRIDGE_<KEY>`, environment variables `BRIDGE_<KEY>` (tables and
lists as JSON text; see `bridge.configsources`). `${NAME}` in any string is replaced by the
environment variable NAME. Checking goes on after a mistake: one `ConfigError` lists every
problem of the configuration, each naming the key, the value as written (never interpolated,
never a header value) and what was expected (`bridge.configvalues`). Relative paths are made
absolute against the working directory of `init_app`, once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge import auditsettings, formatoptions, formats, noisesettings
from bridge import configvalues as v
from bridge.configsources import merge_sources, report_ignored
from bridge.errors import ConfigError
from bridge.overflow import POLICIES
from bridge.redaction import DEFAULT_REDACT_TERMS, normalize_key

__all__ = [
    "FileSinkSettings",
    "HttpSinkSettings",
    "Settings",
    "SinkSettings",
    "StdoutSinkSettings",
    "check_http_sink",
    "load_settings",
]

OVERFLOW_POLICIES = POLICIES


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
    # true: after every write; a number (audit sinks only): at most that many seconds after.
    fsync: bool | float = False
    # An audit file (`bridge.audit`): records signed and chained, written before the response.
    audit: bool = False
    audit_key: str = field(default="", repr=False)
    # Which events an audit sink records: globs on the event name; "auth": authentication.
    events: tuple[str, ...] = auditsettings.AUDIT_EVENTS_DEFAULT


@dataclass(frozen=True, slots=True, kw_only=True)
class StdoutSinkSettings(SinkSettings):
    """Standard output (or error) of the process, as container runtimes collect it."""

    stream: str = "stdout"


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSinkSettings(SinkSettings):
    """An HTTP log collector reached through the delivery engine (batch, retry, spool)."""

    url: str
    format: str = "ndjson"
    format_options: Any = None  # the format's `Options` (bridge.formatoptions), or a mapping
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
    # Seconds an event sent outside a request may wait to be written with others; 0: at once.
    batch_outside_requests: float = 0.0
    # Incoming headers whose (valid) value becomes the request id, first found wins.
    request_id_from: tuple[str, ...] = ("X-Request-ID",)
    # The response header that echoes the request id; "" echoes nothing.
    request_id_echo: str = "X-Request-ID"
    # `user.id` on a request's events from the user Flask-Login already loaded.
    log_user_id: bool = True
    # Where each worker publishes its counters for `flask bridge stats` ("": the default).
    stats_dir: str = ""
    # Noise control (`bridge.noise`): requests not logged, a level floor, sampling rules,
    # events never sampled away, and a limit on identical exceptions' stack traces.
    exclude_paths: tuple[str, ...] = ()
    min_level: str = "debug"
    sample: tuple[noisesettings.SampleRule, ...] = ()
    always_keep: tuple[str, ...] = noisesettings.DEFAULT_ALWAYS_KEEP
    exception_rate: noisesettings.ExceptionRate | None = None
    # The audit trail (`bridge.auditsettings`): the app's own authentication signals, and the
    # fields written as keyed pseudonyms (or, for IP addresses, truncated).
    auth: auditsettings.AuthSettings = field(default_factory=auditsettings.AuthSettings)
    pseudonymize: tuple[str, ...] = ()
    pseudonymize_key: str = field(default="", repr=False)
    pseudonymize_ip: str = "hmac"
    sinks: tuple[SinkSettings, ...]
    ignored_environment: tuple[str, ...] = ()  # BRIDGE_* variables that name no key

    @property
    def redact_terms(self) -> tuple[str, ...]:
        """The default sensitive-key terms plus the configured extra ones, normalized."""
        extra = tuple(normalize_key(term) for term in self.redact)
        return DEFAULT_REDACT_TERMS + tuple(t for t in extra if t not in DEFAULT_REDACT_TERMS)


_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
# The longest `batch_outside_requests`: a small bounded delay, not a flush interval.
MAX_BATCH_DELAY = 1.0

# --- schemas ------------------------------------------------------------------------------------

_TOP_LEVEL: dict[str, v.Checker] = {
    "service": v.nonempty_string,
    "signals": v.string_list,
    "rename": v.string_table,
    "redact": v.string_list,
    "max_line_bytes": v.positive_int,
    "shutdown_timeout": v.duration,
    "batch_outside_requests": v.duration,
    "request_id_from": v.string_list,
    "request_id_echo": v.string,
    "log_user_id": v.boolean,
    "stats_dir": v.string,
    "loggers": v.string_list,
    "exclude_paths": noisesettings.path_globs,
    "min_level": v.choice(*noisesettings.LEVELS),
    "sample": noisesettings.sample_rules,
    "always_keep": v.string_list,
    "exception_rate": noisesettings.exception_rate,
    "auth": auditsettings.auth_table,
    "pseudonymize": auditsettings.pseudonymize_fields,
    "pseudonymize_key": auditsettings.secret_key,
    "pseudonymize_ip": v.choice("hmac", "truncate"),
    "sinks": lambda key, value: value,  # checked per sink below
}

_COMMON_SINK: dict[str, v.Checker] = {
    "type": v.choice("file", "stdout", "http"),
    "name": v.nonempty_string,
    "overflow": v.choice(*OVERFLOW_POLICIES),
    "queue_max_events": v.positive_int,
    "queue_max_bytes": v.positive_int,
}

_SINK_KEYS: dict[str, tuple[type[SinkSettings], dict[str, v.Checker]]] = {
    "file": (
        FileSinkSettings,
        {
            "path": v.file_path,
            "file_mode": v.file_mode,
            "rotate_bytes": v.size,
            "backups": v.size,
            "sync": v.boolean,
            "fsync": auditsettings.audit_fsync,
            "audit": v.boolean,
            "audit_key": auditsettings.secret_key,
            "events": v.string_list,
        },
    ),
    "stdout": (StdoutSinkSettings, {"stream": v.choice("stdout", "stderr")}),
    "http": (
        HttpSinkSettings,
        {
            "url": v.url,
            "format": v.choice(*formats.NAMES),
            "format_options": formatoptions.table,
            "headers": v.headers,
            "gzip": v.boolean,
            "timeout_connect": v.duration,
            "timeout_read": v.duration,
            "batch_max_events": v.positive_int,
            "batch_max_bytes": v.positive_int,
            "batch_timeout": v.duration,
            "retry_initial_backoff": v.duration,
            "retry_max_backoff": v.duration,
            "retry_max_duration": v.duration,
            "spool_dir": v.optional(v.path),
            "spool_max_bytes": v.positive_int,
            "spool_fsync": v.spool_fsync,
            "event_ttl": v.duration,
            "dead_letter_path": v.optional(v.file_path),
            "verify": v.boolean,
            "ca_bundle": v.optional(v.existing_file),
            "client_cert": v.optional(v.existing_file),
            "client_key": v.optional(v.existing_file),
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
    "batch_outside_requests": 0.0,
    "request_id_from": ["X-Request-ID"],
    "request_id_echo": "X-Request-ID",
    "log_user_id": True,
    "stats_dir": "",
    "loggers": [],
    "exclude_paths": [],
    "min_level": "debug",
    "sample": [],
    "always_keep": list(noisesettings.DEFAULT_ALWAYS_KEEP),
    "exception_rate": {},
    "auth": {},
    "pseudonymize": [],
    "pseudonymize_ip": "hmac",
    "sinks": [{"type": "stdout"}],
}


def _check_sink(index: int, raw: Any, problems: v.Problems) -> SinkSettings | None:
    """The settings of one sink, or None when it has a mistake (noted in `problems`)."""
    where = f"sinks[{index}]"
    if not isinstance(raw, Mapping):
        problems.add(where, raw, "a table with at least a `type` key")
        return None
    sink_type = problems.check(_COMMON_SINK["type"], f"{where}.type", raw.get("type"))
    if sink_type is v.INVALID:
        return None
    cls, specific = _SINK_KEYS[sink_type]
    checkers = {**_COMMON_SINK, **specific}
    before = len(problems.found)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in checkers:
            known = ", ".join(sorted(checkers))
            problems.add(f"{where}.{key}", value, f"a known key for a {sink_type} sink: {known}")
            continue
        values[key] = problems.check(checkers[key], f"{where}.{key}", value)
    for key in _REQUIRED_SINK_KEYS[sink_type]:
        if key not in raw:
            problems.add(f"{where}.{key}", None, f"a value: a {sink_type} sink needs `{key}`")
    _check_client_key(where, raw.get("client_key"), raw.get("client_cert"), problems)
    if sink_type == "http" and values.get("format_options") is not v.INVALID:
        fmt = values.get("format", "ndjson")
        if fmt is not v.INVALID:
            options = values.get("format_options")
            where_options = f"{where}.format_options"
            values["format_options"] = formatoptions.check(fmt, options, where_options, problems)
    if sink_type == "file":
        auditsettings.check_audit_sink(where, raw, values, problems)
    values.setdefault("name", f"{sink_type}-{index}")
    has_spool = raw.get("spool_dir") is not None
    values.setdefault("overflow", "spool" if has_spool else "drop_newest")
    if values["overflow"] == "spool" and not has_spool:
        problems.add(
            f"{where}.overflow",
            "spool",
            "a policy this sink can follow: `spool` needs `spool_dir` on an http sink",
        )
    return cls(**values) if len(problems.found) == before else None


def _check_client_key(where: str, key: Any, cert: Any, problems: v.Problems) -> None:
    if key is not None and cert is None:
        problems.add(f"{where}.client_key" if where else "client_key", key, _KEY_NEEDS_CERT)


_KEY_NEEDS_CERT = "`client_cert` to be set as well"
_SEND_TIME_KEYS = ("url", "headers", "ca_bundle", "client_cert", "client_key")  # http keys


def check_http_sink(settings: HttpSinkSettings) -> None:
    """ConfigError for what an http sink built from `settings` would otherwise fail on at send
    time: the schema's own checks of the URL, headers and TLS files, on the final values.

    `load_settings` has made these checks already; settings built in code have not. Files
    are looked at again (one may have gone since `init_app` read the configuration)."""
    problems = v.Problems()
    checkers = _SINK_KEYS["http"][1]
    with v.literal():
        for key in _SEND_TIME_KEYS:
            value = getattr(settings, key)
            if value is not None:
                problems.check(checkers[key], key, value)
    _check_client_key("", settings.client_key, settings.client_cert, problems)
    if problems.found:
        raise ConfigError.of(problems.found)


def load_settings(
    app_config: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    *,
    default_service: str = "app",
) -> Settings:
    """Merge file, app.config and environment into validated `Settings`, or raise one
    ConfigError listing every mistake. Relative paths are made absolute against the working
    directory now. Environment variables that name no key are ignored (and said so, once)."""
    problems = v.Problems()
    environ = os.environ if environ is None else environ
    raw, ignored = merge_sources(app_config, environ, _TOP_LEVEL, problems)
    if ignored:
        report_ignored(ignored)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _TOP_LEVEL:
            problems.add(key, value, f"a known key: {', '.join(sorted(_TOP_LEVEL))}")
            continue
        checked = problems.check(_TOP_LEVEL[key], key, value)
        if checked is not v.INVALID:
            values[key] = checked
    for key, default in _DEFAULTS.items():  # also in place of a wrong value: checking goes on
        values.setdefault(key, _TOP_LEVEL[key](key, default))
    sinks = values["sinks"]
    if not isinstance(sinks, list | tuple):
        problems.add("sinks", sinks, "a list of tables ([[sinks]] in TOML)")
        sinks = ()
    checked_sinks = [_check_sink(i, s, problems) for i, s in enumerate(sinks)]
    names = [s.name for s in checked_sinks if s is not None]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.add("sinks.name", name, "a name used by one sink only")
    if values["max_line_bytes"] < 1024:
        problems.add("max_line_bytes", values["max_line_bytes"], "at least 1024 bytes")
    named = [("request_id_from", name) for name in values["request_id_from"]]
    named.append(("request_id_echo", values["request_id_echo"]))
    for key, name in named:
        if name and not _HEADER_NAME.fullmatch(name):
            problems.add(key, name, "an HTTP header name (letters, digits and -)")
    if values["batch_outside_requests"] > MAX_BATCH_DELAY:
        problems.add(
            "batch_outside_requests",
            values["batch_outside_requests"],
            f"at most {MAX_BATCH_DELAY:g} seconds (0 writes at once)",
        )
    auditsettings.check_pseudonymize_key(values, problems)
    auditsettings.check_keys_differ(values.get("pseudonymize_key"), checked_sinks, problems)
    if problems.found:
        raise ConfigError.of(problems.found)
    return Settings(
        service=values.get("service", default_service),
        signals=values["signals"],
        rename=values["rename"],
        redact=values["redact"],
        max_line_bytes=values["max_line_bytes"],
        shutdown_timeout=values["shutdown_timeout"],
        batch_outside_requests=values["batch_outside_requests"],
        request_id_from=values["request_id_from"],
        request_id_echo=values["request_id_echo"],
        log_user_id=values["log_user_id"],
        stats_dir=values["stats_dir"],
        loggers=values["loggers"],
        exclude_paths=values["exclude_paths"],
        min_level=values["min_level"],
        sample=values["sample"],
        always_keep=values["always_keep"],
        exception_rate=values["exception_rate"],
        auth=values["auth"],
        pseudonymize=values["pseudonymize"],
        pseudonymize_key=values.get("pseudonymize_key", ""),
        pseudonymize_ip=values["pseudonymize_ip"],
        sinks=tuple(s for s in checked_sinks if s is not None),
        ignored_environment=ignored,
    )

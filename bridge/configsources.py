"""Where configuration comes from: a TOML file, app.config keys and environment variables.

`merge_sources` returns the raw values, later sources winning (TOML named by `BRIDGE_CONFIG`,
then app.config `BRIDGE_<KEY>`, then environment `BRIDGE_<KEY>`); `bridge.config` checks them.
Environment values are text: tables and lists come as JSON. The environment is shared with
the platform (Kubernetes injects `BRIDGE_SERVICE_HOST`, `BRIDGE_PORT`, ... for a Service named
`bridge`), so a `BRIDGE_*` variable that names no key is ignored and reported once; a key the
user wrote in TOML or app.config is always checked.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from bridge.configvalues import INVALID, Problems
from bridge.diagnostics import report
from bridge.errors import NO_VALUE, ConfigError

__all__ = ["merge_sources", "read_toml", "report_ignored"]

_LIST_KEYS = ("signals", "redact", "loggers")  # also accepted as comma-separated text
_JSON_KEYS = ("sinks", "rename")  # in the environment, only as JSON text


def _parse_env_value(name: str, text: str) -> Any:
    """Environment values are text: JSON where it parses (numbers, booleans, lists, tables).

    Tables and lists must be JSON (lists may also be comma-separated names): JSON with a
    mistake is reported as such, never taken as a plain string.
    """
    key = name[len("BRIDGE_") :].lower()
    json_expected = key in _JSON_KEYS or (key in _LIST_KEYS and text.lstrip()[:1] == "[")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if json_expected:
            where = f"line {exc.lineno} column {exc.colno}: {exc.msg}"
            problem = f"invalid JSON at {where}"
            raise ConfigError(f"{name} (environment)", NO_VALUE, problem) from None
    if key in _LIST_KEYS:
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def read_toml(source: str, path_text: str) -> dict[str, Any]:
    path = Path(path_text)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, path_text, "the path of an existing TOML file") from None
    except IsADirectoryError:
        raise ConfigError(source, path_text, "the path of a TOML file, not a directory") from None
    except OSError as exc:
        raise ConfigError(source, path_text, f"a readable TOML file ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        byte = f"byte 0x{data[exc.start]:02x} on line {line}"
        raise ConfigError(source, path_text, f"a UTF-8 TOML file ({byte} is not UTF-8)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, path_text, f"valid TOML ({exc})") from None


def merge_sources(
    app_config: Mapping[str, Any],
    environ: Mapping[str, str],
    known: Collection[str],
    problems: Problems,
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The raw values, later sources winning, and the environment variables ignored."""
    raw: dict[str, Any] = {}
    config_path = environ.get("BRIDGE_CONFIG") or app_config.get("BRIDGE_CONFIG")
    if config_path:
        source = "BRIDGE_CONFIG (environment)" if environ.get("BRIDGE_CONFIG") else "BRIDGE_CONFIG"
        if not isinstance(config_path, str | os.PathLike):
            problems.add("BRIDGE_CONFIG", config_path, "the path of a TOML file")
        else:
            table = problems.check(read_toml, source, os.fspath(config_path))
            raw.update({} if table is INVALID else table)
    for name, value in app_config.items():
        if name.startswith("BRIDGE_") and name != "BRIDGE_CONFIG":
            raw[name[len("BRIDGE_") :].lower()] = value
    ignored: list[str] = []
    for name, text in environ.items():
        if name.startswith("BRIDGE_") and name != "BRIDGE_CONFIG":
            key = name[len("BRIDGE_") :].lower()
            if key not in known:  # not written for us: Kubernetes' BRIDGE_PORT, ...
                ignored.append(name)
                continue
            value = problems.check(_parse_env_value, name, text)
            if value is not INVALID:
                raw[key] = value
    return raw, tuple(sorted(ignored))


def report_ignored(names: tuple[str, ...]) -> None:
    """Once per process: the names only, since a value may be anything (a token)."""
    report(
        "ignored-environment:" + ",".join(names),
        f"ignored environment variables that name no bridge key: {', '.join(names)} "
        "(a Kubernetes Service named `bridge` sets such variables; `flask bridge check` "
        "lists them)",
        interval=math.inf,
    )

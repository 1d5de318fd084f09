"""Configuration: sources and their order, interpolation, and errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.config import (
    DEFAULT_REDACT_TERMS,
    FileSinkSettings,
    HttpSinkSettings,
    StdoutSinkSettings,
    load_settings,
)
from bridge.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "bridge.example.toml"


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return str(path)


class TestSources:
    def test_defaults(self) -> None:
        """With nothing configured: default signals, one stdout sink, 64 KiB lines."""
        settings = load_settings({}, {}, default_service="shop")
        assert "shop" == settings.service
        assert ("default",) == settings.signals
        assert (StdoutSinkSettings(type="stdout", name="stdout-0"),) == settings.sinks
        assert 65536 == settings.max_line_bytes
        assert DEFAULT_REDACT_TERMS == settings.redact_terms

    def test_toml_then_app_config_then_environment(self, tmp_path: Path) -> None:
        """app.config overrides the file and the environment overrides both."""
        path = write_toml(
            tmp_path, 'service = "from-file"\nmax_line_bytes = 2048\nshutdown_timeout = 1\n'
        )
        settings = load_settings(
            {"BRIDGE_CONFIG": path, "BRIDGE_SERVICE": "from-app", "BRIDGE_MAX_LINE_BYTES": 4096},
            {"BRIDGE_MAX_LINE_BYTES": "8192"},
        )
        assert ("from-app", 8192, 1.0) == (
            settings.service,
            settings.max_line_bytes,
            settings.shutdown_timeout,
        )

    def test_environment_names_the_file(self, tmp_path: Path) -> None:
        """BRIDGE_CONFIG in the environment wins over the app.config key."""
        env_file = write_toml(tmp_path, 'service = "env-file"\n')
        settings = load_settings(
            {"BRIDGE_CONFIG": "/nonexistent.toml"}, {"BRIDGE_CONFIG": env_file}
        )
        assert "env-file" == settings.service

    def test_environment_tables_as_json(self, tmp_path: Path) -> None:
        """SINKS and other tables come from the environment as JSON text; lists may be CSV."""
        sinks = f'[{{"type": "file", "path": "{tmp_path}/e.jsonl", "rotate_bytes": 1000}}]'
        settings = load_settings(
            {}, {"BRIDGE_SINKS": sinks, "BRIDGE_SIGNALS": "default, user-login"}
        )
        (sink,) = settings.sinks
        assert isinstance(sink, FileSinkSettings)
        assert (1000, 0o640, "file-0") == (sink.rotate_bytes, sink.file_mode, sink.name)
        assert ("default", "user-login") == settings.signals

    def test_interpolation(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """${NAME} is replaced from the environment, in nested tables too."""
        monkeypatch.setenv("COLLECTOR_TOKEN", "t0k3n")
        settings = load_settings(
            {
                "BRIDGE_SINKS": [
                    {
                        "type": "http",
                        "url": "http://127.0.0.1:9/",
                        "headers": {"Authorization": "Bearer ${COLLECTOR_TOKEN}"},
                    }
                ]
            },
            {},
        )
        (sink,) = settings.sinks
        assert isinstance(sink, HttpSinkSettings)
        assert {"Authorization": "Bearer t0k3n"} == dict(sink.headers)
        assert "ndjson" == sink.format
        assert "drop_newest" == sink.overflow

    def test_spool_sets_overflow_default(self, tmp_path: Path) -> None:
        """With a spool the overflow policy defaults to spool."""
        settings = load_settings(
            {
                "BRIDGE_SINKS": [
                    {"type": "http", "url": "http://127.0.0.1:9/", "spool_dir": str(tmp_path)}
                ]
            },
            {},
        )
        assert "spool" == settings.sinks[0].overflow

    def test_example_file_is_valid(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """config/bridge.example.toml documents every key and loads as it is."""
        monkeypatch.setenv("COLLECTOR_TOKEN", "t")
        settings = load_settings({"BRIDGE_CONFIG": str(EXAMPLE)}, {})
        assert {"file", "stdout", "http"} == {s.type for s in settings.sinks}


ERRORS: list[tuple[dict[str, Any], str, str]] = [
    ({"BRIDGE_COLOUR": "red"}, "colour", "a known key"),
    ({"BRIDGE_MAX_LINE_BYTES": "big"}, "max_line_bytes", "whole number"),
    ({"BRIDGE_MAX_LINE_BYTES": 10}, "max_line_bytes", "at least 1024"),
    ({"BRIDGE_SHUTDOWN_TIMEOUT": -1}, "shutdown_timeout", "duration"),
    ({"BRIDGE_SIGNALS": "request_finished"}, "signals", "a list of strings"),
    ({"BRIDGE_SINKS": {"type": "file"}}, "sinks", "a list of tables"),
    ({"BRIDGE_SINKS": [{"path": "x"}]}, "sinks[0].type", "one of 'file'"),
    ({"BRIDGE_SINKS": [{"type": "file"}]}, "sinks[0].path", "needs `path`"),
    (
        {"BRIDGE_SINKS": [{"type": "file", "path": "x", "rotate": 1}]},
        "sinks[0].rotate",
        "a known key for a file sink",
    ),
    (
        {"BRIDGE_SINKS": [{"type": "file", "path": "x", "file_mode": "rw"}]},
        "sinks[0].file_mode",
        "octal",
    ),
    ({"BRIDGE_SINKS": [{"type": "stdout", "stream": "tty"}]}, "sinks[0].stream", "'stderr'"),
    (
        {"BRIDGE_SINKS": [{"type": "stdout", "overflow": "spool"}]},
        "sinks[0].overflow",
        "needs `spool_dir`",
    ),
    (
        {"BRIDGE_SINKS": [{"type": "http", "url": "http://x", "format": "gelf"}]},
        "sinks[0].format",
        "'splunk_hec'",
    ),
    (
        {"BRIDGE_SINKS": [{"type": "http", "url": "http://x", "gzip": "yes"}]},
        "sinks[0].gzip",
        "true or false",
    ),
    (
        {"BRIDGE_SINKS": [{"type": "http", "url": "http://x", "spool_fsync": "always"}]},
        "sinks[0].spool_fsync",
        '"never", "batch"',
    ),
    (
        {"BRIDGE_SINKS": [{"type": "stdout"}, {"type": "stdout", "name": "stdout-0"}]},
        "sinks.name",
        "one sink only",
    ),
    (
        {
            "BRIDGE_SINKS": [
                {
                    "type": "http",
                    "url": "http://x",
                    "headers": {"Authorization": "Bearer ${UNSET_TOKEN_VAR}"},
                }
            ]
        },
        "sinks[0].headers.Authorization",
        "environment variable UNSET_TOKEN_VAR",
    ),
    ({"BRIDGE_CONFIG": "/nonexistent/bridge.toml"}, "BRIDGE_CONFIG", "existing TOML file"),
]


class TestErrors:
    @pytest.mark.parametrize(("config", "key", "expected"), ERRORS)
    def test_error_names_key_and_expectation(
        self, config: dict[str, Any], key: str, expected: str
    ) -> None:
        """Every mistake raises ConfigError naming the key and what was expected."""
        with pytest.raises(ConfigError) as info:
            load_settings(config, {})
        assert key == info.value.key
        assert expected in str(info.value)

    def test_unknown_environment_key(self) -> None:
        """An unknown BRIDGE_* environment variable is refused too."""
        with pytest.raises(ConfigError, match="sinkz"):
            load_settings({}, {"BRIDGE_SINKZ": "[]"})

    def test_bad_toml(self, tmp_path: Path) -> None:
        """A TOML syntax error names the file."""
        path = write_toml(tmp_path, "service = \n")
        with pytest.raises(ConfigError, match="valid TOML"):
            load_settings({"BRIDGE_CONFIG": path}, {})

    def test_secret_never_in_message(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Errors show values as written, before interpolation: secrets stay out."""
        monkeypatch.setenv("COLLECTOR_TOKEN", "super-secret-value")
        with pytest.raises(ConfigError) as info:
            load_settings(
                {
                    "BRIDGE_SINKS": [
                        {
                            "type": "http",
                            "url": "http://x",
                            "headers": {"X-Token": "${COLLECTOR_TOKEN}", "X-Retries": 3},
                        }
                    ]
                },
                {},
            )
        assert "sinks[0].headers" == info.value.key
        assert "${COLLECTOR_TOKEN}" in str(info.value)
        assert "super-secret-value" not in str(info.value)

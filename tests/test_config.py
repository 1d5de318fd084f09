"""Configuration: sources and their order, interpolation, and errors that name the key."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import bridge.diagnostics
from bridge import SignalBridge
from bridge.config import (
    DEFAULT_REDACT_TERMS,
    FileSinkSettings,
    HttpSinkSettings,
    StdoutSinkSettings,
    load_settings,
)
from bridge.errors import ConfigError, ConfigProblem
from tests.collector import Collector
from tests.conftest import BridgedApp, build_app, read_events

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
        monkeypatch.setenv("AUDIT_KEY", "an-audit-key-of-32-characters!!")
        monkeypatch.setenv("PSEUDONYM_KEY", "a-pseudonym-key-of-32-characters")
        settings = load_settings({"BRIDGE_CONFIG": str(EXAMPLE)}, {})
        assert {"file", "stdout", "http"} == {s.type for s in settings.sinks}
        assert [True] == [
            s.audit for s in settings.sinks if isinstance(s, FileSinkSettings) and s.audit
        ]
        assert ("client.address", "user.email") == settings.pseudonymize
        assert "pseudonymize" == settings.auth.attempted_user


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
    (
        {"BRIDGE_SINKS": [{"type": "http", "url": "http://127.0.0.1:70000/"}]},
        "sinks[0].url",
        "a port from 1 to 65535",
    ),
    (
        {"BRIDGE_SINKS": [{"type": "http", "url": "http://127.0.0.1:0/"}]},
        "sinks[0].url",
        "a port from 1 to 65535",
    ),
    (
        {"BRIDGE_SINKS": [{"type": "http", "url": "ftp://127.0.0.1/"}]},
        "sinks[0].url",
        "an http:// or https:// URL with a host",
    ),
    (
        {"BRIDGE_SINKS": [{"type": "http", "url": "http://x", "headers": {"X-A": "a\r\nX-B: b"}}]},
        "sinks[0].headers.X-A",
        "a header value without line breaks",
    ),
    (
        {"BRIDGE_SINKS": [{"type": "http", "url": "http://x", "headers": {"X A": "a"}}]},
        "sinks[0].headers.X A",
        "a header name",
    ),
    (
        {"BRIDGE_SINKS": [{"type": "http", "url": "http://x", "headers": {"X-A": "€"}}]},
        "sinks[0].headers.X-A",
        "latin-1",
    ),
    ({"BRIDGE_RENAME": {"user-login": ""}}, "rename.user-login", "a non-empty string"),
    (
        {"BRIDGE_SINKS": [{"type": "http", "url": "http://x", "headers": {"X-A": " a"}}]},
        "sinks[0].headers.X-A",
        "without leading spaces",
    ),
    (
        {"BRIDGE_SINKS": [{"type": "http", "url": "http://x", "client_key": str(EXAMPLE)}]},
        "sinks[0].client_key",
        "`client_cert` to be set as well",
    ),
    (
        {"BRIDGE_SINKS": [{"type": "http", "url": "http://x", "ca_bundle": "/nonexistent.pem"}]},
        "sinks[0].ca_bundle",
        "the path of an existing file",
    ),
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

    def test_bad_toml(self, tmp_path: Path) -> None:
        """A TOML syntax error names the file."""
        path = write_toml(tmp_path, "service = \n")
        with pytest.raises(ConfigError, match="valid TOML"):
            load_settings({"BRIDGE_CONFIG": path}, {})

    def test_secret_never_in_message(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A header value never appears in an error, neither as written nor interpolated."""
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
        assert ("sinks[0].headers.X-Retries", "[hidden]") == (info.value.key, info.value.value)
        assert "${COLLECTOR_TOKEN}" not in str(info.value)
        assert "super-secret-value" not in str(info.value)


class TestRelativePaths:
    """Relative paths are taken from the working directory at init_app, once."""

    def test_every_path_made_absolute(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """path, spool_dir, dead_letter_path and the TLS files become absolute at load time."""
        for name in ("ca.pem", "client.pem", "client.key"):
            (tmp_path / name).write_text("x")
        monkeypatch.chdir(tmp_path)
        sinks = [
            {"type": "file", "path": "logs/../logs/events.jsonl"},
            {
                "type": "http",
                "url": "http://127.0.0.1:9/",
                "spool_dir": "spool",
                "dead_letter_path": "dead.jsonl",
                "ca_bundle": "ca.pem",
                "client_cert": "client.pem",
                "client_key": "client.key",
            },
        ]
        file_sink, http_sink = load_settings({"BRIDGE_SINKS": sinks}, {}).sinks
        assert isinstance(file_sink, FileSinkSettings)
        assert isinstance(http_sink, HttpSinkSettings)
        assert tmp_path / "logs" / "events.jsonl" == file_sink.path
        assert (tmp_path / "spool", tmp_path / "dead.jsonl") == (
            http_sink.spool_dir,
            http_sink.dead_letter_path,
        )
        assert tuple(str(tmp_path / n) for n in ("ca.pem", "client.pem", "client.key")) == (
            http_sink.ca_bundle,
            http_sink.client_cert,
            http_sink.client_key,
        )

    def test_symlinks_are_kept(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A symlinked directory stays in the path: where it points is the operator's choice."""
        (tmp_path / "real").mkdir()
        (tmp_path / "current").symlink_to(tmp_path / "real")
        monkeypatch.chdir(tmp_path)
        settings = load_settings({"BRIDGE_SINKS": [{"type": "file", "path": "current/e.jsonl"}]})
        assert tmp_path / "current" / "e.jsonl" == settings.sinks[0].path  # type: ignore[attr-defined]

    def test_file_sink_rotates_after_chdir(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A relative file path keeps naming the same file, and rotating, after os.chdir."""
        home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(tmp_path)
        sink = {"type": "file", "path": "home/events.jsonl", "rotate_bytes": 4096, "sync": True}
        app = build_app(BRIDGE_SINKS=[sink])
        bridge = SignalBridge(app)
        try:
            monkeypatch.chdir(elsewhere)
            for n in range(60):
                bridge.emitter(app).emit("s", "order.paid", "info", {"n": n, "pad": "x" * 100})
            assert bridge.flush(timeout=10.0)
            stats = bridge.stats(app=app)["sinks"]["file-0"]
        finally:
            bridge.close(timeout=5.0)
        assert (60, 0) == (stats["delivered"], stats["dropped"])
        rotated = sorted(p.name for p in home.iterdir() if p.name.startswith("events.jsonl."))
        assert "events.jsonl.1" in rotated
        events = [e for p in home.glob("events.jsonl*") for e in read_events(p)]
        assert list(range(60)) == sorted(e["n"] for e in events)
        assert [] == list(elsewhere.iterdir())

    @pytest.mark.slow
    def test_spool_survives_chdir(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A relative spool_dir is still read and acknowledged after os.chdir."""
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(tmp_path)
        with Collector(start_down=True) as collector:
            sink = {"type": "http", "url": collector.url, "spool_dir": "spool"}
            sink["batch_timeout"] = 0.05
            app = build_app(BRIDGE_SINKS=[sink])
            bridge = SignalBridge(app)
            try:
                monkeypatch.chdir(elsewhere)
                for n in range(20):
                    bridge.emitter(app).emit("s", "order.paid", "info", {"n": n})
                collector.up()
                assert bridge.flush(timeout=20.0)
                stats = bridge.stats(app=app)["sinks"]["http-0"]
            finally:
                bridge.close(timeout=5.0)
            assert list(range(20)) == sorted(e["n"] for e in collector.events())
        assert (20, 0) == (stats["delivered"], stats["dropped"])
        assert [] == list(elsewhere.iterdir())


class TestAllProblemsAtOnce:
    def test_every_problem_listed(self) -> None:
        """Mistakes in top-level keys and in every sink are reported together, in order."""
        with pytest.raises(ConfigError) as info:
            load_settings(
                {
                    "BRIDGE_MAX_LINE_BYTES": "big",
                    "BRIDGE_SINKS": [
                        {"type": "file"},
                        {"type": "http", "url": "ftp://x", "gzip": "yes"},
                    ],
                },
                {"BRIDGE_SHUTDOWN_TIMEOUT": "-1"},
            )
        error = info.value
        keys = ["max_line_bytes", "shutdown_timeout", "sinks[0].path", "sinks[1].url"]
        assert [*keys, "sinks[1].gzip"] == [p.key for p in error.problems]
        assert ("max_line_bytes", "big", "a whole number >= 1") == (
            error.key,
            error.value,
            error.expected,
        )
        assert ["bridge config has 5 problems:"] + [
            f"  {p.key}={p.value!r}: expected {p.expected}" for p in error.problems
        ] == str(error).splitlines()

    def test_one_problem_keeps_one_line(self) -> None:
        """A single mistake reads as before: key, value and expectation on one line."""
        error = ConfigError("max_line_bytes", "big", "a whole number >= 1")
        assert "bridge config max_line_bytes='big': expected a whole number >= 1" == str(error)
        assert [ConfigProblem("max_line_bytes", "big", "a whole number >= 1")] == error.problems

    def test_config_is_a_directory(self, tmp_path: Path) -> None:
        """BRIDGE_CONFIG naming a directory is a ConfigError, not IsADirectoryError."""
        with pytest.raises(ConfigError) as info:
            load_settings({}, {"BRIDGE_CONFIG": str(tmp_path)})
        assert ("BRIDGE_CONFIG (environment)", str(tmp_path)) == (info.value.key, info.value.value)
        assert "the path of a TOML file, not a directory" == info.value.expected

    def test_config_not_utf8(self, tmp_path: Path) -> None:
        """A TOML file that is not UTF-8 is a ConfigError saying where."""
        path = tmp_path / "bridge.toml"
        path.write_bytes(b'service = "shop"\nredact = ["caf\xe9"]\n')
        with pytest.raises(ConfigError) as info:
            load_settings({"BRIDGE_CONFIG": str(path)}, {})
        assert "BRIDGE_CONFIG" == info.value.key
        assert "a UTF-8 TOML file (byte 0xe9 on line 2 is not UTF-8)" == info.value.expected

    def test_header_value_not_latin1(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A header value HTTP cannot carry fails at load time, its value hidden."""
        monkeypatch.setenv("COLLECTOR_TOKEN", "t\u00f6k\u20acn-secret")
        sink = {
            "type": "http",
            "url": "http://127.0.0.1:9/",
            "headers": {"Authorization": "Bearer ${COLLECTOR_TOKEN}"},
        }
        with pytest.raises(ConfigError) as info:
            load_settings({"BRIDGE_SINKS": [sink]}, {})
        assert ("sinks[0].headers.Authorization", "[hidden]") == (
            info.value.key,
            info.value.value,
        )
        assert "latin-1" in info.value.expected
        assert "secret" not in str(info.value) and "COLLECTOR_TOKEN" not in str(info.value)

    def test_dead_letter_path_is_a_directory(self, tmp_path: Path) -> None:
        """dead_letter_path naming a directory fails at load time, not at the first 4xx."""
        sink = {"type": "http", "url": "http://127.0.0.1:9/", "dead_letter_path": str(tmp_path)}
        with pytest.raises(ConfigError) as info:
            load_settings({"BRIDGE_SINKS": [sink]}, {})
        assert "sinks[0].dead_letter_path" == info.value.key
        assert "the path of a file, not a directory" == info.value.expected

    def test_url_credentials_hidden(self) -> None:
        """A wrong URL is shown without its user information."""
        sink = {"type": "http", "url": "http://ada:pa55word@127.0.0.1:99999/"}
        with pytest.raises(ConfigError) as info:
            load_settings({"BRIDGE_SINKS": [sink]}, {})
        assert "http://[REDACTED]@127.0.0.1:99999/" == info.value.value
        assert "pa55word" not in str(info.value)

    @pytest.mark.parametrize("key", ["SINKS", "RENAME", "SIGNALS"])
    def test_environment_json_syntax_error(self, key: str) -> None:
        """A table or list in the environment with a JSON mistake says so, and where."""
        text = '[{"type": "stdout"},\n {"type": "file" "path": "x"}]'
        if key == "RENAME":
            text = '{"a": "b",}'
        if key == "SIGNALS":
            text = '["default", "user-login"'
        with pytest.raises(ConfigError) as info:
            load_settings({}, {f"BRIDGE_{key}": text})
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno} column {exc.colno}: {exc.msg}"
        message = f"bridge config BRIDGE_{key} (environment): invalid JSON at {where}"
        assert message == str(info.value)
        assert [f"BRIDGE_{key} (environment)"] == [p.key for p in info.value.problems]

    def test_environment_plain_text_still_accepted(self) -> None:
        """Text that does not try to be JSON stays text (and CSV for lists)."""
        settings = load_settings({}, {"BRIDGE_SERVICE": "shop", "BRIDGE_LOGGERS": "a, b"})
        assert ("shop", ("a", "b")) == (settings.service, settings.loggers)


K8S_ENVIRONMENT = {
    "BRIDGE_SERVICE_HOST": "10.0.0.11",
    "BRIDGE_SERVICE_PORT": "8000",
    "BRIDGE_PORT": "tcp://10.0.0.11:8000",
    "BRIDGE_PORT_8000_TCP_ADDR": "10.0.0.11",
}


class TestUnknownEnvironment:
    @pytest.fixture(autouse=True)
    def _fresh_reports(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each test sees the bridge's once-per-process reports as if the process were new."""
        monkeypatch.setattr(bridge.diagnostics, "_last_reported", {})

    def test_ignored_and_listed(self) -> None:
        """Variables Kubernetes injects for a Service named `bridge` do not stop the app."""
        settings = load_settings({}, {**K8S_ENVIRONMENT, "BRIDGE_SERVICE": "shop"})
        assert "shop" == settings.service
        assert tuple(sorted(K8S_ENVIRONMENT)) == settings.ignored_environment

    def test_said_once_on_stderr_without_values(self, capsys: pytest.CaptureFixture[str]) -> None:
        """One stderr line per process names the variables, never their values."""
        load_settings({}, K8S_ENVIRONMENT)
        load_settings({}, K8S_ENVIRONMENT)
        (line,) = capsys.readouterr().err.splitlines()
        assert all(name in line for name in K8S_ENVIRONMENT)
        assert "10.0.0.11" not in line and "tcp://" not in line

    def test_app_config_stays_strict(self) -> None:
        """A key the user wrote in app.config (or TOML) is still checked."""
        with pytest.raises(ConfigError) as info:
            load_settings({"BRIDGE_PORT": 8000}, {})
        assert "port" == info.value.key

    def test_app_starts(
        self, monkeypatch: pytest.MonkeyPatch, make_bridged: Callable[..., BridgedApp]
    ) -> None:
        """A real app starts and logs in a pod with those variables."""
        for name, value in K8S_ENVIRONMENT.items():
            monkeypatch.setenv(name, value)
        bridged = make_bridged()
        bridged.client.get("/")
        assert ["request.finished"] == [e["event"] for e in bridged.events()]

"""docker-compose.yml and config/: valid for both validators, and consistent between compose,
Vector, Loki, Grafana and the bridge's config. No container engine runs here: the checks
(tests/compose_checks.py) read the files. Each check also runs on a copy of the files with
one mismatch planted, and must name it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.compose_checks import (
    COMPOSE_ENV_HINT,
    Deployment,
    check_app,
    check_bridge,
    check_consistency,
    check_docker_compose,
    check_grafana,
    check_mounts,
    check_schema,
    check_secrets,
    check_signals,
    check_vector,
)

ROOT = Path(__file__).resolve().parent.parent
# The variables docker-compose.yml requires (`${NAME:?...}`), as a user exports them.
ENVIRON = {"FLASK_LOGIN_EXAMPLE_SECRET_KEY": "test-secret-key", "GRAFANA_ADMIN_PASSWORD": "test-pw"}

Check = Callable[[Deployment], list[str]]
COMPOSE = "docker-compose.yml"
BRIDGE = "config/bridge/bridge.toml"
VECTOR = "config/vector/vector.yaml"
LOKI = "config/loki/loki.yaml"
DATASOURCE = "config/grafana/provisioning/datasources/loki.yaml"
PROVIDER = "config/grafana/provisioning/dashboards/bridge.yaml"
DASHBOARD = "config/grafana/dashboards/flask-signal-bridge.json"


def copy_deployment(tmp_path: Path) -> Path:
    """The files compose reads, copied to tmp_path, to be altered there."""
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    shutil.copytree(ROOT / "config", tmp_path / "config")
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "Dockerfile", tmp_path / "examples" / "Dockerfile")
    return tmp_path


def planted(tmp_path: Path, relative: str, old: str, new: str) -> Deployment:
    """A copy of the deployment with every `old` replaced by `new` in one file."""
    root = copy_deployment(tmp_path)
    text = (root / relative).read_text()
    assert old in text, f"{old!r} is not in {relative}"
    (root / relative).write_text(text.replace(old, new))
    return Deployment.load(root)


def require_docker_compose() -> None:
    """Never a skip: without docker-compose the validation did not happen, so it fails."""
    if shutil.which("docker-compose") is None:
        pytest.fail(COMPOSE_ENV_HINT)


class TestValidators:
    def test_compose_file_matches_the_compose_specification(self) -> None:
        """check-jsonschema's vendored Compose Specification schema accepts the file."""
        assert [] == check_schema(Deployment.load(ROOT))

    def test_schema_check_catches_an_unknown_key(self, tmp_path: Path) -> None:
        """A misspelt service key fails the schema."""
        deployment = planted(
            tmp_path,
            "docker-compose.yml",
            "    stop_signal:",
            "    stop_signl: x\n    stop_signal:",
        )
        problems = check_schema(deployment)
        assert 1 == len(problems)
        assert "stop_signl" in problems[0]

    def test_debian_docker_compose_reads_the_file(self) -> None:
        """docker-compose 1.29 `config -q` accepts the file and ignores none of it."""
        require_docker_compose()
        assert [] == check_docker_compose(Deployment.load(ROOT), ENVIRON)

    def test_docker_compose_check_catches_an_unknown_key(self, tmp_path: Path) -> None:
        """A misspelt service key fails docker-compose's own validation."""
        require_docker_compose()
        deployment = planted(
            tmp_path,
            "docker-compose.yml",
            "    stop_signal:",
            "    stop_signl: x\n    stop_signal:",
        )
        problems = check_docker_compose(deployment, ENVIRON)
        assert 1 == len(problems)
        assert "stop_signl" in problems[0]

    def test_docker_compose_check_catches_swarm_only_configs(self, tmp_path: Path) -> None:
        """Top-level `configs:`, which 1.29 silently ignores outside a swarm, is reported."""
        require_docker_compose()
        deployment = planted(
            tmp_path,
            "docker-compose.yml",
            "\nvolumes:\n  audit-logs:",
            "\nconfigs:\n  bridge:\n    file: ./config/bridge/bridge.toml\n"
            "\nvolumes:\n  audit-logs:",
        )
        text = deployment.compose_path.read_text().replace(
            "    depends_on:\n      - vector",
            "    configs:\n      - bridge\n    depends_on:\n      - vector",
        )
        deployment.compose_path.write_text(text)
        assert any("ignores" in p for p in check_docker_compose(deployment, ENVIRON))

    @pytest.mark.parametrize("missing", sorted(ENVIRON))
    def test_required_secrets_must_be_set(self, missing: str) -> None:
        """docker-compose refuses to start without each required secret variable."""
        require_docker_compose()
        environ = {k: v for k, v in ENVIRON.items() if k != missing}
        problems = check_docker_compose(Deployment.load(ROOT), environ)
        assert 1 == len(problems)
        assert missing in problems[0]


class TestConsistency:
    def test_repository_files_agree(self) -> None:
        """Ports, URLs, paths, codecs, formats and mounts agree across every file."""
        assert [] == check_consistency(Deployment.load(ROOT))

    def test_the_bridge_config_is_the_one_mounted(self) -> None:
        """The app service loads config/bridge/bridge.toml: http sinks to vector and loki."""
        settings = Deployment.load(ROOT).bridge_settings()
        urls = {getattr(s, "format", s.type): getattr(s, "url", None) for s in settings.sinks}
        expected = {
            "file": None,
            "stdout": None,
            "ndjson": "http://vector:8686/",
            "loki": "http://loki:3100",
        }
        assert expected == urls

    @pytest.mark.parametrize(
        ("check", "relative", "old", "new", "expected"),
        [
            # Vector: its http_server source against the bridge's ndjson sink, its file source
            # against the file sink's volume.
            (check_bridge, VECTOR, "0.0.0.0:8686", "0.0.0.0:8687", "not service vector port"),
            (check_vector, VECTOR, "address: 0.0.0.0:8686", "", "`address`"),
            (check_vector, VECTOR, "codec: json  ", "codec: bytes", "decoding.codec"),
            (check_vector, VECTOR, "method: newline_delimited", "method: bytes", "framing"),
            (check_vector, VECTOR, "[bridge_http, file", "[http, file", "unknown inputs"),
            (check_bridge, VECTOR, "/var/log/app/events", "/x/events", "file source includes"),
            (check_bridge, COMPOSE, "audit-logs:/var/log/app:ro", "x:/v", "does not mount"),
            (check_bridge, COMPOSE, '      - "8686"', '      - "9"', "neither exposed"),
            (check_bridge, COMPOSE, "/etc/vector/vector.yaml:ro", "/x.yaml", "vector.yaml"),
            # The bridge's sinks against the services.
            (check_bridge, BRIDGE, "vector:8686/", "vector:9000/", "not service vector port"),
            (check_bridge, BRIDGE, "vector:8686/", "vector:8686/in", "url path '/in'"),
            (check_bridge, BRIDGE, 'url = "http://loki:', 'url = "http://gw:', "not service loki"),
            (check_bridge, BRIDGE, 'format = "loki"', 'format = "json_array"', "formats are"),
            (check_bridge, BRIDGE, 'format = "ndjson"', 'format = "json_array"', "formats are"),
            (check_bridge, BRIDGE, '"/app/logs/events', '"/tmp/events', "not on a named volume"),
            (check_bridge, BRIDGE, 'name = "loki"', 'name = "loki"\nsink = 1', "known key"),
            # Loki's port, in its config, compose and Grafana.
            (check_bridge, LOKI, "_port: 3100", "_port: 3101", "not service loki port 3101"),
            (check_bridge, COMPOSE, "3100:3100", "3100:3101", "neither exposed"),
            (check_grafana, LOKI, "_port: 3100", "_port: 3101", "not loki at http://loki:3101"),
            (check_grafana, DATASOURCE, "http://loki:3100", "http://loki:1", "data source"),
            # Grafana's dashboard against its data source and the bridge's events.
            (check_grafana, DATASOURCE, "uid: loki", "uid: logs", "uid loki, not logs"),
            (check_grafana, PROVIDER, "path: /etc/grafana/", "path: /x/", "no dashboard"),
            (check_grafana, BRIDGE, 'service = "flask-app"', 'service = "s"', "service_name=s"),
            (check_grafana, DASHBOARD, 'service_name=\\"', 'app=\\"', "not labels"),
            (
                check_grafana,
                DASHBOARD,
                'event=\\"user.logged_in',
                'event=\\"user-login',
                "no logins",
            ),
            (
                check_grafana,
                DASHBOARD,
                '"user-login-failed\\"}',
                '"user-login\\"}',
                "failed logins",
            ),
            (check_grafana, DASHBOARD, "request.exception", "request.error", "no errors"),
            (check_grafana, DASHBOARD, "unwrap duration_ms", "unwrap duration", "no latency"),
            # The bridge's signals: they exist once the app's module is imported, and become
            # the events the dashboard counts.
            (check_signals, BRIDGE, '"flask_login.signals:user_logged_in",', "", "user.logged_in"),
            (check_signals, BRIDGE, '    "user-login-failed",', "", "send user-login-failed"),
            (check_signals, BRIDGE, '    "default",', "", "send request.finished"),
            (check_signals, BRIDGE, '"user-login-failed",', '"user-login-faild",', "login-faild"),
            (
                check_signals,
                BRIDGE,
                "\nredact",
                '\nrename = { "user-login-failed" = "x" }\nredact',
                "send user-login-failed",
            ),
            (
                check_signals,
                COMPOSE,
                "examples.flask_login_app:",
                "examples.factory_app:",
                "user-login-failed",
            ),
            (check_signals, COMPOSE, "examples.flask_login_app:", "examples.nowhere:", "importing"),
            # The app service, the mounts.
            (check_app, COMPOSE, "--bind=0.0.0.0:8000", "--bind=0.0.0.0:8080", "binds"),
            (check_app, COMPOSE, "BRIDGE_CONFIG: /etc/bridge/", "BRIDGE_CONFIG: /b/", "/b/"),
            (check_mounts, COMPOSE, "./config/loki/loki.yaml:", "./config/loki.yml:", "no such"),
            (check_mounts, COMPOSE, "dockerfile: examples/Dockerfile", "dockerfile: D", "build"),
            (check_mounts, COMPOSE, "\n  loki-data:", "\n  loki-dat:", "not declared"),
            # Secrets.
            (
                check_secrets,
                COMPOSE,
                '"${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD}"',
                "admin",
                "GF_SECURITY_ADMIN_PASSWORD",
            ),
            (
                check_secrets,
                COMPOSE,
                "${FLASK_LOGIN_EXAMPLE_SECRET_KEY:?",
                "${FLASK_LOGIN_EXAMPLE_SECRET_KEY:-k",
                "FLASK_LOGIN_EXAMPLE_SECRET_KEY",
            ),
        ],
    )
    def test_checks_catch_a_planted_mismatch(
        self, tmp_path: Path, check: Check, relative: str, old: str, new: str, expected: str
    ) -> None:
        """Each mismatch planted in a copy is reported by the check that owns it."""
        deployment = planted(tmp_path, relative, old, new)
        problems = check(deployment)
        assert [] != problems
        assert any(expected in p for p in problems), problems

"""What must agree between docker-compose.yml and its configs under config/, as checks that
return problems: the two validators (the Compose Specification schema through
`check-jsonschema`, Debian's `docker-compose config -q`) and the consistency of ports, URLs,
paths, codecs and formats between compose, Vector, Loki, Grafana and the bridge's own config,
and the signals the bridge config names against the app it serves and the dashboard's events.

Every check takes a `Deployment` (a checkout: the repository, or a copy a test altered) and
returns a list of sentences, [] when everything agrees; tests/test_compose.py runs them on the
repository and on copies with one mismatch planted each. No container engine is needed.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml  # PyYAML: installed with `responses`, a dev dependency

from bridge.config import FileSinkSettings, HttpSinkSettings, Settings, load_settings
from bridge.errors import ConfigError

APP, VECTOR, LOKI, GRAFANA = "login", "vector", "loki", "grafana"
# The events the dashboard counts: logins (Flask-Login's user_logged_in), failed logins (the
# Flask-Login example's own signal), errors and latency (Flask's default signals).
LOGIN_EVENT = "user.logged_in"
FAILED_LOGIN_EVENT = "user-login-failed"
ERROR_EVENT = "request.exception"
LATENCY_EVENT = "request.finished"
DASHBOARD_EVENTS = (LOGIN_EVENT, FAILED_LOGIN_EVENT, ERROR_EVENT, LATENCY_EVENT)
ROOT = Path(__file__).resolve().parent.parent  # the examples the app service imports
# Environment variables whose values are secrets: only ever `${NAME}` or `${NAME:?message}`.
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|_KEY$|API_KEY")
SECRET_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(:\?[^}]*)?\}")
COMPOSE_ENV_HINT = "docker-compose (Debian's 1.29) is not installed: `make test` installs it "
COMPOSE_ENV_HINT += "with apt-get as root; otherwise run `sudo apt-get install docker-compose`"


class Unreadable(Exception):
    """A config file a check needs is not mounted, missing, or not what its service reads."""


def reported(check: Callable[[Deployment], list[str]]) -> Callable[[Deployment], list[str]]:
    """A check whose inputs cannot be read reports that as its problem."""

    @functools.wraps(check)
    def run(deployment: Deployment) -> list[str]:
        try:
            return check(deployment)
        except (Unreadable, ConfigError) as error:
            return [f"{check.__name__}: {error}"]

    return run


@dataclass
class Deployment:
    """docker-compose.yml of a checkout, read once, with the mounts of each service."""

    root: Path
    compose: dict[str, Any]

    @classmethod
    def load(cls, root: Path) -> Deployment:
        return cls(root, yaml.safe_load((root / "docker-compose.yml").read_text()))

    @property
    def compose_path(self) -> Path:
        return self.root / "docker-compose.yml"

    def service(self, name: str) -> dict[str, Any]:
        service: dict[str, Any] = self.compose["services"][name]
        return service

    def mounts(self, service: str) -> Iterator[tuple[str, PurePosixPath]]:
        """(source, target) of each short-syntax volume: a volume name or a ./host path."""
        for entry in self.service(service).get("volumes", []):
            source, target = str(entry).split(":")[:2]
            yield source, PurePosixPath(target)

    def host_path(self, service: str, container_path: str) -> Path | None:
        """The file of the checkout bind-mounted at `container_path` (or in a directory that
        is), or None when no bind mount covers it."""
        wanted = PurePosixPath(container_path)
        for source, target in self.mounts(service):
            if source.startswith((".", "/")) and (wanted == target or target in wanted.parents):
                return self.root / source / wanted.relative_to(target)
        return None

    def volume_path(self, service: str, container_path: PurePosixPath) -> tuple[str, str] | None:
        """(named volume, path inside it) holding `container_path`, or None."""
        for source, target in self.mounts(service):
            if not source.startswith((".", "/")) and target in container_path.parents:
                return source, str(container_path.relative_to(target))
        return None

    def container_ports(self, service: str) -> set[int]:
        """Ports the service publishes or exposes, on the container's side."""
        spec = self.service(service)
        ports = {int(str(p).split(":")[-1].split("/")[0]) for p in spec.get("ports", [])}
        return ports | {int(str(p).split("/")[0]) for p in spec.get("expose", [])}

    def environment(self, service: str) -> dict[str, str]:
        env = self.service(service).get("environment", {})
        if isinstance(env, list):
            env = dict(str(item).split("=", 1) for item in env)
        return {str(k): str(v) for k, v in env.items()}

    def read_yaml(self, service: str, container_path: str) -> Any:
        path = self.host_path(service, container_path)
        if path is None or not path.is_file():
            raise Unreadable(f"{service}: no file of the repository mounted at {container_path}")
        return yaml.safe_load(path.read_text())

    def bridge_settings(self) -> Settings:
        """The bridge's settings as the app service loads them (${NAME} given test values)."""
        config = self.environment(APP).get("BRIDGE_CONFIG", "")
        path = self.host_path(APP, config)
        if path is None or not path.is_file():
            raise Unreadable(f"{APP}: BRIDGE_CONFIG={config!r} is not a file mounted from config/")
        names = SECRET_REFERENCE.findall(path.read_text())
        environ = {name: "test-value" for name, _ in names}
        return load_settings({"BRIDGE_CONFIG": str(path)}, environ)

    def vector_config(self) -> dict[str, Any]:
        command = self.service(VECTOR)["command"]
        config: dict[str, Any] = self.read_yaml(VECTOR, command[command.index("--config") + 1])
        return config

    def loki_port(self) -> int:
        (flag,) = [a for a in self.service(LOKI)["command"] if a.startswith("-config.file=")]
        config = self.read_yaml(LOKI, flag.split("=", 1)[1])
        return int(config["server"]["http_listen_port"])


# --- the two validators ----------------------------------------------------------------------


def check_schema(deployment: Deployment) -> list[str]:
    """The Compose Specification JSON schema, as `check-jsonschema` ships it (offline)."""
    schema = ["--builtin-schema", "vendor.compose-spec"]
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", *schema, str(deployment.compose_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return [] if result.returncode == 0 else [f"compose-spec schema: {result.stdout}"]


def check_docker_compose(deployment: Deployment, environ: Mapping[str, str]) -> list[str]:
    """Debian's docker-compose 1.29 reads and interpolates the file (`config -q`)."""
    executable = shutil.which("docker-compose")
    if executable is None:
        return [COMPOSE_ENV_HINT]
    result = subprocess.run(
        [executable, "-f", str(deployment.compose_path), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(deployment.root), **environ},
        cwd=deployment.root,
    )
    problems = [] if result.returncode == 0 else [f"docker-compose config: {result.stderr}"]
    if "will be ignored" in result.stderr:  # e.g. top-level `configs:`, swarm only in 1.29
        problems.append(f"docker-compose ignores part of the file: {result.stderr}")
    return problems


# --- consistency ----------------------------------------------------------------------------


@reported
def check_mounts(deployment: Deployment) -> list[str]:
    """Every file a service mounts or builds from exists; every named volume is declared."""
    problems = []
    declared = set(deployment.compose.get("volumes") or {})
    for name, spec in deployment.compose["services"].items():
        build = spec.get("build")
        if build and not (deployment.root / build["context"] / build["dockerfile"]).is_file():
            problems.append(f"{name}: build file {build['dockerfile']} does not exist")
        for source, target in deployment.mounts(name):
            if source.startswith((".", "/")):
                if not (deployment.root / source).exists():
                    problems.append(f"{name}: mounts {source} at {target}: no such file")
            elif source not in declared:
                problems.append(f"{name}: volume {source} is not declared under volumes:")
    return problems


@reported
def check_app(deployment: Deployment) -> list[str]:
    """The app: gunicorn binds the published port; BRIDGE_CONFIG names the mounted file."""
    problems = []
    command = deployment.service(APP)["command"]
    binds = [a.split("=", 1)[1] for a in command if a.startswith("--bind=")]
    ports = deployment.container_ports(APP)
    if not binds or int(binds[0].rsplit(":", 1)[1]) not in ports:
        problems.append(f"{APP}: gunicorn binds {binds}, the service publishes {sorted(ports)}")
    config = deployment.environment(APP).get("BRIDGE_CONFIG", "")
    path = deployment.host_path(APP, config)
    if path is None or not path.is_file():
        problems.append(f"{APP}: BRIDGE_CONFIG={config!r} is not a file mounted from config/")
    return problems


def _url_problems(
    deployment: Deployment, sink: HttpSinkSettings, service: str, port: int, paths: set[str]
) -> list[str]:
    url = urlsplit(sink.url)
    problems = []
    if (url.hostname, url.port or 80) != (service, port):
        problems.append(f"sink {sink.name}: url {sink.url} is not service {service} port {port}")
    if port not in deployment.container_ports(service):
        problems.append(f"{service}: port {port} is neither exposed nor published")
    if url.path not in paths:
        problems.append(f"sink {sink.name}: url path {url.path!r}, {service} reads {paths}")
    return problems


@reported
def check_bridge(deployment: Deployment) -> list[str]:
    """The bridge's sinks reach the services compose declares, in the formats they read."""
    settings = deployment.bridge_settings()
    http = {s.format: s for s in settings.sinks if isinstance(s, HttpSinkSettings)}
    problems = []
    if sorted(http) != ["loki", "ndjson"]:
        problems.append(f"http sink formats are {sorted(http)}, not ndjson (Vector) and loki")
    source = _http_server(deployment.vector_config())
    if "ndjson" in http and source is not None:
        port = int(str(source.get("address", ":0")).rsplit(":", 1)[1])
        path = str(source.get("path", "/"))
        paths = {path, path.rstrip("/")}
        problems += _url_problems(deployment, http["ndjson"], VECTOR, port, paths)
    if "loki" in http:  # a url without a path gets /loki/api/v1/push
        loki_port = deployment.loki_port()
        paths = {"", "/", "/loki/api/v1/push"}
        problems += _url_problems(deployment, http["loki"], LOKI, loki_port, paths)
    files = [s for s in settings.sinks if isinstance(s, FileSinkSettings)]
    if not files:
        problems.append("the bridge has no file sink for Vector to tail")
    for sink in files:
        problems += _tailed_problems(deployment, PurePosixPath(sink.path))
    return problems


def _tailed_problems(deployment: Deployment, path: PurePosixPath) -> list[str]:
    """The file sink writes into a volume that Vector mounts and its `file` source includes."""
    in_volume = deployment.volume_path(APP, path)
    if in_volume is None:
        return [f"file sink {path} is not on a named volume of the {APP} service"]
    volume, relative = in_volume
    seen = [t / relative for s, t in deployment.mounts(VECTOR) if s == volume]
    if not seen:
        return [f"vector does not mount volume {volume} (the file sink's {path})"]
    sources = deployment.vector_config().get("sources", {}).values()
    includes = [g for s in sources if s.get("type") == "file" for g in s.get("include", [])]
    if not any(fnmatch.fnmatch(str(p), g) for p in seen for g in includes):
        return [f"vector's file source includes {includes}, not {[str(p) for p in seen]}"]
    return []


def _http_server(config: Mapping[str, Any]) -> dict[str, Any] | None:
    servers = [s for s in config.get("sources", {}).values() if s.get("type") == "http_server"]
    return servers[0] if servers else None


@reported
def check_vector(deployment: Deployment) -> list[str]:
    """Vector's http_server reads the bridge's ndjson: an address, json codec, line framing."""
    config = deployment.vector_config()
    source = _http_server(config)
    if source is None:
        return ["vector has no http_server source"]
    problems = []
    if not re.fullmatch(r"[\w.:\[\]-]+:\d+", str(source.get("address", ""))):
        problems.append("vector http_server: `address` (host:port) is required, no default")
    if source.get("decoding", {}).get("codec") != "json":
        problems.append("vector http_server: decoding.codec must be json (the default: bytes)")
    if source.get("framing", {}).get("method") != "newline_delimited":
        problems.append("vector http_server: framing.method must be newline_delimited (ndjson)")
    components = set(config.get("sources", {})) | set(config.get("transforms", {}))
    for kind in ("transforms", "sinks"):
        for name, spec in config.get(kind, {}).items():
            missing = set(spec.get("inputs", [])) - components
            if missing:
                problems.append(f"vector {kind}.{name}: unknown inputs {sorted(missing)}")
    return problems


def _dashboards(deployment: Deployment) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Grafana's provisioned data source and the dashboards its provider loads."""
    mounted = [t for _, t in deployment.mounts(GRAFANA)]
    datasources = [t for t in mounted if "provisioning/datasources" in str(t)]
    providers = [t for t in mounted if "provisioning/dashboards" in str(t)]
    (datasource,) = deployment.read_yaml(GRAFANA, str(datasources[0]))["datasources"]
    dashboards = []
    for provider in deployment.read_yaml(GRAFANA, str(providers[0]))["providers"]:
        folder = deployment.host_path(GRAFANA, provider["options"]["path"])
        for path in sorted(folder.glob("*.json")) if folder and folder.is_dir() else []:
            dashboards.append(json.loads(path.read_text()))
    return datasource, dashboards


def _selectors(expr: str) -> list[dict[str, tuple[str, str]]]:
    """The stream selectors of a LogQL query: label -> (operator, value)."""
    matcher = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
    return [
        {label: (op, value) for label, op, value in matcher.findall(body)}
        for body in re.findall(r"\{([^{}]*)\}", expr)
    ]


def _selects(selector: Mapping[str, tuple[str, str]], label: str, value: str) -> bool:
    op, wanted = selector.get(label, ("", ""))
    return (op == "=" and wanted == value) or (op == "=~" and bool(re.fullmatch(wanted, value)))


@reported
def check_grafana(deployment: Deployment) -> list[str]:
    """The data source is the loki service; the dashboard queries what the bridge sends."""
    datasource, dashboards = _dashboards(deployment)
    problems = []
    loki_url = f"http://{LOKI}:{deployment.loki_port()}"
    if (datasource.get("type"), datasource.get("url")) != ("loki", loki_url):
        problems.append(f"grafana data source {datasource.get('url')}, not loki at {loki_url}")
    if not dashboards:
        problems.append("grafana: no dashboard JSON where the dashboard provider looks")
    settings = deployment.bridge_settings()
    labels = set()  # the stream labels the loki sinks make
    for sink in settings.sinks:
        if isinstance(sink, HttpSinkSettings) and sink.format == "loki":
            labels |= set(sink.format_options.labels) | set(sink.format_options.static_labels)
    targets = [
        (panel, target)
        for dashboard in dashboards
        for panel in dashboard.get("panels", [])
        for target in panel.get("targets", [])
    ]
    for panel, target in targets:
        for source in (panel.get("datasource"), target.get("datasource")):
            if source and source.get("uid") != datasource.get("uid"):
                problems.append(
                    f"panel {panel['title']!r}: data source uid {source.get('uid')}, "
                    f"not {datasource.get('uid')} (the provisioned one)"
                )
        for selector in _selectors(target["expr"]):
            if set(selector) - labels:
                problems.append(
                    f"panel {panel['title']!r}: {sorted(set(selector) - labels)} "
                    f"are not labels of the loki sink ({sorted(labels)})"
                )
            if not _selects(selector, "service_name", settings.service):
                problems.append(f"panel {panel['title']!r}: not service_name={settings.service}")
    problems += _missing_panels([t["expr"] for _, t in targets])
    return problems


def _missing_panels(exprs: list[str]) -> list[str]:
    """Logins, failed logins, errors and latency, each over the event that records it."""

    def queried(event: str, also: str = "") -> bool:
        return any(
            also in expr and _selects(s, "event", event) for expr in exprs for s in _selectors(expr)
        )

    wanted = {
        "logins": queried(LOGIN_EVENT),
        "failed logins": queried(FAILED_LOGIN_EVENT),
        "errors": queried(ERROR_EVENT),
        "latency": queried(LATENCY_EVENT, also="unwrap duration_ms"),
    }
    return [f"grafana dashboard: no {what} panel" for what, ok in wanted.items() if not ok]


# Run in a fresh interpreter, as a gunicorn worker would: import the app's module, then
# resolve the bridge's signals the way init_app does. A signal found by name exists only if
# that import defined it; blinker's namespace of this test process would hide a missing one.
_RESOLVE_SIGNALS = """
import importlib, json, sys
from bridge.errors import ConfigError
from bridge.signals import resolve_signals
importlib.import_module(sys.argv[1])
try:
    builtins, customs = resolve_signals(json.loads(sys.argv[2]), json.loads(sys.argv[3]))
except ConfigError as error:
    print(json.dumps({"error": str(error)}))
else:
    print(json.dumps({"events": [s.event for s in [*builtins, *customs]]}))
"""


def _app_module(deployment: Deployment) -> str:
    """The module of the WSGI app gunicorn serves: the command's last argument."""
    return str(deployment.service(APP)["command"][-1]).partition(":")[0]


@reported
def check_signals(deployment: Deployment) -> list[str]:
    """The bridge's signals exist once the app's module is imported (init_app connects only
    those) and become every event the dashboard counts."""
    settings = deployment.bridge_settings()
    module = _app_module(deployment)
    arguments = [module, json.dumps(list(settings.signals)), json.dumps(dict(settings.rename))]
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", _RESOLVE_SIGNALS, *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
    )
    if result.returncode != 0:
        return [f"{APP}: importing {module} failed: {result.stderr.strip()[-500:]}"]
    resolved = json.loads(result.stdout)
    if "error" in resolved:
        return [f"the bridge's signals, once {module} is imported: {resolved['error']}"]
    return [
        f"the bridge config does not send {event}, which the dashboard counts"
        for event in DASHBOARD_EVENTS
        if event not in resolved["events"]
    ]


@reported
def check_secrets(deployment: Deployment) -> list[str]:
    """Secrets come from the environment: `${NAME}` or `${NAME:?why}`, never a value or a
    default written in the file."""
    problems = []
    for service in deployment.compose["services"]:
        for name, value in deployment.environment(service).items():
            if SECRET_NAME.search(name) and not SECRET_REFERENCE.fullmatch(value):
                problems.append(f"{service}: {name} is not a ${{NAME}} reference: {value!r}")
    return problems


CHECKS = (
    check_mounts,
    check_app,
    check_bridge,
    check_vector,
    check_grafana,
    check_signals,
    check_secrets,
)


def check_consistency(deployment: Deployment) -> list[str]:
    return [problem for check in CHECKS for problem in check(deployment)]

"""The Flask-Login and factory examples, driven like a user drives them, and
examples/gunicorn.conf.py under a real gunicorn.

Through the test client: each step's events are in the example's file (found by the
X-Request-ID the step sent), with `user.id` or `username` where the step has them, and no
password typed anywhere in the file's bytes. The factory makes two apps in one process whose
files hold only their own events. The one-command entry points (`python -m ...`) and the
gunicorn config run for real on 127.0.0.1, and are stopped the way an operator stops them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from bridge import SignalBridge
from examples.factory_app import create_app as create_factory_app
from examples.factory_app.signals import order_placed
from examples.flask_login_app import create_app as create_login_app
from examples.flask_login_app.app import USERS
from examples.server import GunicornServer, free_port
from tests.conftest import read_events
from tests.contract import ENVELOPE, REQUEST_KEYS

ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = ROOT / "examples" / "gunicorn.conf.py"
LOGIN_AUDIT = Path("logs/flask-login-audit.jsonl")  # the examples' bridge.toml paths
FACTORY_EVENTS = Path("logs/factory-events.jsonl")
PASSWORDS = ("lovelace", "not-lovelace", "hunter2")  # every password these tests type


def file_sink(path: Path) -> dict[str, Any]:
    return {"BRIDGE_SINKS": [{"type": "file", "path": str(path)}]}


def clean_env() -> dict[str, str]:
    """This process's environment without BRIDGE_* variables, which would override the TOML."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}


def of_request(events: list[dict[str, Any]], request_id: str) -> dict[str, dict[str, Any]]:
    """The events of one request by event name; fails if a name appears twice."""
    mine = [e for e in events if e.get("request_id") == request_id]
    names = [e["event"] for e in mine]
    assert sorted(set(names)) == sorted(names), f"{request_id}: duplicated events {names}"
    return {e["event"]: e for e in mine}


def subset(event: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    return {key: event.get(key) for key in expected}


class Example:
    """An example app with its sinks pointed at one file in tmp_path."""

    def __init__(self, app: Flask, path: Path) -> None:
        self.app = app
        self.path = path
        self.bridge: SignalBridge = app.extensions["bridge"]
        self.client = app.test_client()

    def events(self) -> list[dict[str, Any]]:
        assert self.bridge.flush(timeout=10.0, app=self.app)
        return read_events(self.path)

    def request(self, method: str, path: str, request_id: str, **kwargs: Any) -> int:
        headers = {"X-Request-ID": request_id}
        return int(self.client.open(path, method=method, headers=headers, **kwargs).status_code)


@pytest.fixture
def login(tmp_path: Path) -> Iterator[Example]:
    """The Flask-Login example, configured by its bridge.toml except for the sinks."""
    path = tmp_path / "audit.jsonl"
    example = Example(create_login_app(file_sink(path)), path)
    yield example
    example.bridge.close(timeout=5.0, app=example.app)


def new_factory_app(path: Path, service: str = "factory-example") -> Example:
    return Example(create_factory_app({**file_sink(path), "BRIDGE_SERVICE": service}), path)


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[Example]:
    example = new_factory_app(tmp_path / "events.jsonl")
    yield example
    example.bridge.close(timeout=5.0, app=example.app)


class TestFlaskLoginExample:
    def test_good_login_is_audited_with_the_user_id(self, login: Example) -> None:
        """Flask-Login's user_logged_in becomes user.logged_in with user.id; then the page."""
        form = {"username": "ada", "password": "lovelace"}
        assert 303 == login.request("POST", "/login?next=/private", "in-1", data=form)
        assert 200 == login.request("GET", "/private", "page-1")
        events = login.events()
        logged_in = of_request(events, "in-1")
        assert {"user.logged_in", "message.flashed", "request.finished"} == set(logged_in)
        event = logged_in["user.logged_in"]
        assert set() == (ENVELOPE | REQUEST_KEYS) - set(event)
        expected = {
            "event": "user.logged_in",
            "level": "info",
            "service.name": "flask-login-example",
            "url.path": "/login",
            "user.id": "1",
        }
        assert expected == subset(event, expected)
        assert "Welcome back, ada!" == logged_in["message.flashed"]["message"]
        finished = of_request(events, "page-1")["request.finished"]
        assert (200, "/private") == (finished["http.response.status_code"], finished["url.path"])

    @pytest.mark.parametrize(
        ("username", "password", "reason"),
        [("ada", "not-lovelace", "bad_password"), ("mallory", "hunter2", "unknown_user")],
    )
    def test_failed_login_sends_the_custom_signal(
        self, login: Example, username: str, password: str, reason: str
    ) -> None:
        """A failed login is a 401 and one user-login-failed event with the name tried."""
        form = {"username": username, "password": password}
        assert 401 == login.request("POST", "/login", "bad-1", data=form)
        events = of_request(login.events(), "bad-1")
        assert {"user-login-failed", "request.finished"} == set(events)
        expected = {"level": "info", "username": username, "reason": reason}
        assert expected == subset(events["user-login-failed"], expected)
        assert "user.id" not in events["user-login-failed"]
        assert 401 == events["request.finished"]["http.response.status_code"]

    def test_unauthorized_goes_through_the_login_manager(self, login: Example) -> None:
        """An anonymous @login_required visit: user.unauthorized, redirect to the login page."""
        response = login.client.get("/private", headers={"X-Request-ID": "anon-1"})
        assert (302, "/login?next=%2Fprivate") == (response.status_code, response.location)
        events = of_request(login.events(), "anon-1")
        assert {"user.unauthorized", "message.flashed", "request.finished"} == set(events)
        expected = {"level": "info", "url.path": "/private", "http.route": "/private"}
        assert expected == subset(events["user.unauthorized"], expected)
        assert "warning" == events["message.flashed"]["category"]

    def test_logout_is_audited_with_the_user_id(self, login: Example) -> None:
        """Flask-Login's user_logged_out becomes user.logged_out with the user's id."""
        form = {"username": "ada", "password": "lovelace"}
        assert 303 == login.request("POST", "/login", "in-1", data=form)
        assert 303 == login.request("POST", "/logout", "out-1")
        assert 302 == login.request("GET", "/private", "after-1")  # the session is gone
        events = login.events()
        logged_out = of_request(events, "out-1")
        assert {"user.logged_out", "message.flashed", "request.finished"} == set(logged_out)
        assert ("1", "/logout") == (
            logged_out["user.logged_out"]["user.id"],
            logged_out["user.logged_out"]["url.path"],
        )
        assert "user.unauthorized" in of_request(events, "after-1")

    def test_no_password_or_hash_is_ever_written(self, login: Example) -> None:
        """No password typed in a whole session, nor the stored hash, is in the file's bytes."""
        for number, (user, password) in enumerate(
            [("ada", "not-lovelace"), ("mallory", "hunter2"), ("ada", "lovelace")]
        ):
            form = {"username": user, "password": password}
            login.request("POST", "/login", f"try-{number}", data=form)
        login.request("GET", "/private", "page")
        login.request("POST", "/logout", "out")
        events = login.events()
        names = [e["event"] for e in events]
        for name in ("user-login-failed", "user.logged_in", "user.logged_out"):
            assert name in names
        raw = login.path.read_bytes()
        assert [] == [p for p in PASSWORDS if p.encode() in raw]
        secret = USERS["ada"].password_hash.split("$")
        assert [] == [part for part in secret if part.encode() in raw]

    def test_next_only_leads_to_this_site(self, login: Example) -> None:
        """A login's ?next= pointing elsewhere lands on the private page instead."""
        form = {"username": "ada", "password": "lovelace"}
        response = login.client.post("/login?next=https://evil.example/", data=form)
        assert (303, "/private") == (response.status_code, response.location)

    def test_bridge_toml_writes_the_audit_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Unchanged, bridge.toml audits Flask-Login's signals into logs/flask-login-audit.jsonl."""
        monkeypatch.chdir(tmp_path)
        for name in [n for n in os.environ if n.startswith("BRIDGE_")]:
            monkeypatch.delenv(name)
        example = Example(create_login_app(), tmp_path / LOGIN_AUDIT)
        try:
            example.request("GET", "/private", "anon")
            example.request("POST", "/login", "bad", data={"username": "ada", "password": "x"})
            form = {"username": "ada", "password": "lovelace"}
            example.request("POST", "/login", "good", data=form)
            example.request("POST", "/logout", "out")
            names = [e["event"] for e in example.events() if e["event"] != "request.finished"]
        finally:
            example.bridge.close(timeout=5.0, app=example.app)
        expected = [
            "user.unauthorized",
            "message.flashed",
            "user-login-failed",
            "user.logged_in",
            "message.flashed",
            "user.logged_out",
            "message.flashed",
        ]
        assert expected == names


class TestFactoryExample:
    def test_blueprints_send_their_signals(self, factory: Example) -> None:
        """Each blueprint's custom signal becomes its event; a bug, a request.exception."""
        response = factory.client.post(
            "/shop/orders", json={"item": "tea", "quantity": 2}, headers={"X-Request-ID": "o-1"}
        )
        assert 201 == response.status_code
        assert 200 == factory.request("POST", "/admin/cache/clear", "c-1")
        assert 500 == factory.request("GET", "/admin/boom", "b-1")
        assert 400 == factory.request("POST", "/shop/orders", "o-2", json={"item": "caviar"})
        events = factory.events()
        order = of_request(events, "o-1")["order-placed"]
        expected = {
            "service.name": "factory-example",
            "http.route": "/shop/orders",
            "order_id": response.get_json()["order_id"],
            "item": "tea",
            "quantity": 2,
        }
        assert expected == subset(order, expected)
        assert 0 == of_request(events, "c-1")["cache-cleared"]["entries"]
        boom = of_request(events, "b-1")["request.exception"]
        assert ("error", "RuntimeError") == (boom["level"], boom["exception.type"])
        assert {"request.finished"} == set(of_request(events, "o-2"))

    def test_two_apps_from_the_factory_stay_isolated(self, tmp_path: Path) -> None:
        """Two apps of one process: each file holds only its own app's events, custom too."""
        first = new_factory_app(tmp_path / "first.jsonl", "first")
        second = new_factory_app(tmp_path / "second.jsonl", "second")
        assert first.bridge is second.bridge  # the extension made once, at module level
        try:
            first.request("POST", "/shop/orders", "first-order", json={"item": "jam"})
            second.request("POST", "/shop/orders", "second-order", json={"item": "tea"})
            second.request("POST", "/admin/cache/clear", "second-clear")
            first.request("GET", "/admin/boom", "first-boom")
            with first.app.app_context():  # a script or a job, outside any request
                order_placed.send(first.app, order_id="from-a-job", item="scones", quantity=1)
            first_events, second_events = first.events(), second.events()
        finally:
            first.bridge.close(timeout=5.0)
        assert {"first"} == {e["service.name"] for e in first_events}
        assert {"second"} == {e["service.name"] for e in second_events}
        assert {"first-order", "first-boom", None} == {e.get("request_id") for e in first_events}
        assert {"second-order", "second-clear"} == {e["request_id"] for e in second_events}
        orders = [(e.get("request_id"), e["item"]) for e in first_events if "item" in e]
        assert [("first-order", "jam"), (None, "scones")] == orders
        assert ["tea"] == [e["item"] for e in second_events if "item" in e]

    def test_bridge_config_in_the_environment_wins(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """BRIDGE_CONFIG in the environment replaces the example's bridge.toml."""
        path = tmp_path / "elsewhere.jsonl"
        toml = tmp_path / "other.toml"
        toml.write_text(
            'service = "from-env"\nsignals = ["order-placed"]\n'
            f'[[sinks]]\ntype = "file"\npath = "{path}"\n'
        )
        for name in [n for n in os.environ if n.startswith("BRIDGE_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("BRIDGE_CONFIG", str(toml))
        example = Example(create_factory_app(), path)
        try:
            example.request("POST", "/shop/orders", "env-1", json={"item": "tea"})
            events = example.events()
        finally:
            example.bridge.close(timeout=5.0, app=example.app)
        assert [("order-placed", "from-env")] == [(e["event"], e["service.name"]) for e in events]


def wait_until_answering(process: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    """Poll `url` until it answers, the process exits, or `timeout` runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1.0)
            return
        except requests.RequestException:
            pass
        try:  # doubles as the pause between polls
            process.wait(timeout=0.1)
            pytest.fail(f"{url}: the server exited with status {process.returncode}")
        except subprocess.TimeoutExpired:
            continue
    pytest.fail(f"{url} did not answer within {timeout} s")


@pytest.mark.slow
class TestOneCommand:
    @pytest.mark.parametrize(
        ("module", "method", "path", "form", "event", "written_to"),
        [
            (
                "examples.flask_login_app",
                "POST",
                "/login",
                {"username": "ada", "password": "hunter2"},
                "user-login-failed",
                LOGIN_AUDIT,
            ),
            (
                "examples.factory_app",
                "POST",
                "/admin/cache/clear",
                None,
                "cache-cleared",
                FACTORY_EVENTS,
            ),
        ],
    )
    def test_python_dash_m_serves_the_example(
        self,
        tmp_path: Path,
        module: str,
        method: str,
        path: str,
        form: dict[str, str] | None,
        event: str,
        written_to: Path,
    ) -> None:
        """`python -m <example>` serves it; after Ctrl-C the request's event is in its file."""
        port = free_port()
        env = {**clean_env(), "PORT": str(port), "PYTHONPATH": str(ROOT)}
        with (tmp_path / "stderr").open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=tmp_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_answering(process, url + "/", 30.0)
            headers = {"X-Request-ID": "one-command"}
            requests.request(method, url + path, data=form, headers=headers, timeout=10.0)
            process.send_signal(signal.SIGINT)  # Ctrl-C: the server returns, the bridge flushes
            assert 0 == process.wait(timeout=30.0)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        events = of_request(read_events(tmp_path / written_to), "one-command")
        assert {event, "request.finished"} == set(events)


class Journey:
    """Requests a user makes against a served example, each with its X-Request-ID, and the
    events each must leave in the file (exactly once)."""

    def __init__(self, url: str, http: requests.Session) -> None:
        self.url = url
        self.http = http
        self.expected: dict[str, dict[str, dict[str, Any]]] = {}

    def step(
        self,
        request_id: str,
        method: str,
        path: str,
        status: int,
        events: dict[str, dict[str, Any]],
        **kwargs: Any,
    ) -> requests.Response:
        response = self.http.request(
            method,
            self.url + path,
            headers={"X-Request-ID": request_id},
            allow_redirects=False,
            timeout=30.0,
            **kwargs,
        )
        assert status == response.status_code, f"{request_id}: {response.text[:200]}"
        self.expected[request_id] = events
        return response

    def check(self, events: list[dict[str, Any]]) -> None:
        for request_id, expected in self.expected.items():
            found = of_request(events, request_id)
            assert set(expected) == set(found), request_id
            for name, fields in expected.items():
                assert fields == subset(found[name], fields), f"{request_id}: {name}"


def factory_journey(journey: Journey) -> None:
    """Orders from the shop blueprint, an admin action, and a bug."""
    for number in range(6):
        journey.step(
            f"order-{number}",
            "POST",
            "/shop/orders",
            201,
            {"order-placed": {"item": "scones", "quantity": number + 1}, "request.finished": {}},
            json={"item": "scones", "quantity": number + 1},
        )
    journey.step(
        "clear", "POST", "/admin/cache/clear", 200, {"cache-cleared": {}, "request.finished": {}}
    )
    journey.step(
        "boom",
        "GET",
        "/admin/boom",
        500,
        {"request.exception": {"exception.type": "RuntimeError"}, "request.finished": {}},
    )


def login_journey(journey: Journey) -> None:
    """Refused, failed, logged in, private pages (on either worker: the session cookie is
    shared), logged out."""
    flashed_finished: dict[str, dict[str, Any]] = {"message.flashed": {}, "request.finished": {}}
    journey.step("anon", "GET", "/private", 302, {"user.unauthorized": {}, **flashed_finished})
    journey.step(
        "bad",
        "POST",
        "/login",
        401,
        {"user-login-failed": {"username": "ada"}, "request.finished": {}},
        data={"username": "ada", "password": "not-lovelace"},
    )
    journey.step(
        "good",
        "POST",
        "/login",
        303,
        {"user.logged_in": {"user.id": "1"}, **flashed_finished},
        data={"username": "ada", "password": "lovelace"},
    )
    for number in range(4):
        finished = {"http.response.status_code": 200}
        journey.step(f"page-{number}", "GET", "/private", 200, {"request.finished": finished})
    journey.step(
        "out", "POST", "/logout", 303, {"user.logged_out": {"user.id": "1"}, **flashed_finished}
    )


@pytest.mark.slow
class TestGunicornConf:
    @pytest.mark.parametrize(
        ("app", "extra_args", "journey", "written_to"),
        [
            (None, [], factory_journey, FACTORY_EVENTS),
            (None, ["--preload"], factory_journey, FACTORY_EVENTS),
            ("examples.flask_login_app:create_app()", [], login_journey, LOGIN_AUDIT),
        ],
        ids=["factory", "factory-preload", "flask-login"],
    )
    def test_every_request_is_written_after_sigterm(
        self,
        tmp_path: Path,
        app: str | None,
        extra_args: list[str],
        journey: Callable[[Journey], None],
        written_to: Path,
    ) -> None:
        """Under the config's two workers, every request's events are written once by SIGTERM."""
        # No hook in the config: each worker's exit flushes (the bridge's atexit handler).
        server = GunicornServer(
            app, cwd=tmp_path, config_file=GUNICORN_CONF, extra_args=extra_args, env=clean_env()
        )
        try:
            server.start()
            with requests.Session() as http:
                done = Journey(server.url, http)
                journey(done)
            assert 0 == server.stop()
        finally:
            server.kill()
        stderr = server.stderr_text()
        assert 2 == stderr.count("Booting worker with pid"), stderr
        events = read_events(tmp_path / written_to)
        done.check(events)
        outputs = [(tmp_path / written_to).read_bytes(), server.stdout_path.read_bytes()]
        outputs.append(server.stderr_path.read_bytes())
        assert [] == [p for p in PASSWORDS for raw in outputs if p.encode() in raw]
        complaints = [
            line for line in stderr.splitlines() if line.startswith("flask-signal-bridge[")
        ]
        assert [] == [line for line in complaints if "a write took" not in line]  # not failures

"""Envelope pieces: timestamps, event ids, request context capture."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import blinker
import pytest
from flask import current_app, request

from bridge import SignalBridge
from bridge.events import (
    exception_fields,
    redact_path,
    redact_query,
    request_fields,
    timestamp_and_id,
)
from bridge.processors import SensitiveKeys
from bridge.redaction import DEFAULT_REDACT_TERMS, REDACTED, Scrubber
from tests.collector import Collector
from tests.conftest import build_app, read_events

SENSITIVE = SensitiveKeys(("password", "token"))


class TestTimestamps:
    def test_rfc3339_utc_with_microseconds(self) -> None:
        """The timestamp is RFC 3339 UTC with microseconds and Z, close to now."""
        stamp, _ = timestamp_and_id()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
        parsed = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert abs((dt.datetime.now(dt.UTC) - parsed).total_seconds()) < 60


class TestEventIds:
    def test_uuid7(self) -> None:
        """Event ids are valid UUIDv7 text."""
        value = uuid.UUID(timestamp_and_id()[1])
        assert 7 == value.version
        assert uuid.RFC_4122 == value.variant

    def test_unique_and_time_ordered(self) -> None:
        """Ids from one process are unique and sort in emission order."""
        ids = [timestamp_and_id()[1] for _ in range(20_000)]
        assert len(ids) == len(set(ids))
        assert ids == sorted(ids)

    def test_forked_child_does_not_repeat_the_parent(self) -> None:
        """A forked child draws different random bits than its parent."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.write(write_fd, "\n".join(timestamp_and_id()[1] for _ in range(100)).encode())
            os._exit(0)
        os.close(write_fd)
        parent_ids = {timestamp_and_id()[1] for _ in range(100)}
        with os.fdopen(read_fd, "rb") as pipe:
            child_ids = set(pipe.read().decode().split("\n"))
        os.waitpid(pid, 0)
        assert 100 == len(child_ids)
        assert not parent_ids & child_ids


class TestRequestFields:
    def test_reads_environ_once(self) -> None:
        """The fields are cached in the environ: a second call returns the same dict."""
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/a", "REMOTE_ADDR": "10.0.0.1"}
        first = request_fields(environ, "/a", SENSITIVE)
        assert first is request_fields(environ, "/a", SENSITIVE)
        assert ("GET", "/a", "10.0.0.1") == (
            first["http.request.method"],
            first["url.path"],
            first["client.address"],
        )

    def test_utf8_path_from_wsgi_latin1(self) -> None:
        """A UTF-8 path, which WSGI passes as latin-1 text, is decoded back."""
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/café".encode().decode("latin-1")}
        assert "/café" == request_fields(environ, None, SENSITIVE)["url.path"]

    def test_request_id_header_is_bounded(self) -> None:
        """An attacker-sized X-Request-ID is not used (ids are echoed in responses: at most
        128 safe characters): a new 32-hex-digit id is made instead."""
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_X_REQUEST_ID": "r" * 10_000}
        request_id = request_fields(environ, None, SENSITIVE)["request_id"]
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)

    def test_signed_url_parameters_are_redacted(self) -> None:
        """Signed-URL and OAuth parameters lose their value; innocent ones keep it."""
        query = "X-Amz-Signature=f00d&X-Amz-Credential=AKIA1&sig=s1g&access_token=t&author=ada"
        assert (
            "X-Amz-Signature=[REDACTED]&X-Amz-Credential=[REDACTED]&sig=[REDACTED]"
            "&access_token=[REDACTED]&author=ada"
        ) == redact_query(query, SensitiveKeys(DEFAULT_REDACT_TERMS))

    def test_query_redaction(self) -> None:
        """Sensitive query parameters keep their name and lose their value."""
        assert "a=1&password=[REDACTED]&b&Token=[REDACTED]" == redact_query(
            "a=1&password=hunter2&b&Token=x", SENSITIVE
        )


class TestExceptionFields:
    def test_fields(self) -> None:
        """Type, message and stack of an exception, with OpenTelemetry names."""
        try:
            raise KeyError("missing")
        except KeyError as exc:
            fields = exception_fields(exc)
        assert "KeyError" == fields["exception.type"]
        assert "'missing'" == fields["exception.message"]
        assert "test_events.py" in fields["exception.stacktrace"]

    def test_str_that_raises(self) -> None:
        """An exception whose __str__ raises still gives fields."""

        class Nasty(Exception):
            def __str__(self) -> str:
                raise RuntimeError("no")

        fields = exception_fields(Nasty())
        assert fields["exception.type"].endswith("Nasty")
        assert "str() failed" in fields["exception.message"]

    def test_secrets_are_scrubbed_everywhere(self) -> None:
        """Message, chained causes and the stack lose URL credentials, parameters and secrets."""
        try:
            try:
                raise ConnectionError("GET https://ada:s3cretpw@db/x?api_key=k3yk3yk3y failed")
            except ConnectionError as cause:
                raise RuntimeError("collector said: invalid token tok-Zq9x81") from cause
        except RuntimeError as exc:
            fields = exception_fields(exc, Scrubber(["Bearer tok-Zq9x81"]))
        text = json.dumps(fields)
        assert [] == [s for s in ("s3cretpw", "k3yk3yk3y", "tok-Zq9x81") if s in text]
        assert f"collector said: invalid token {REDACTED}" == fields["exception.message"]
        assert (
            "ConnectionError: GET https://[REDACTED]@db/x?api_key=[REDACTED]"
            in (fields["exception.stacktrace"])
        )

    def test_url_credentials_hidden_by_default(self) -> None:
        """Without a scrubber, URL credentials and sensitive parameters are still hidden."""
        fields = exception_fields(ValueError("https://ada:s3cretpw@db/?token=abcd1234"))
        assert "https://[REDACTED]@db/?token=[REDACTED]" == fields["exception.message"]

    def test_scrubbed_before_cut(self) -> None:
        """A secret where the stack is cut is hidden whole, never written in part."""
        secret = "hunter2-s3cret-value"
        # the last 16 KiB of the stack start in the middle of the secret
        message = "x" * 100 + secret + "y" * (16 * 1024 - 10)
        fields = exception_fields(ValueError(message), Scrubber([secret]))
        assert secret[-10:] not in fields["exception.stacktrace"]
        assert secret[:10] not in fields["exception.message"]


TOKEN = "tok-Zq9x81-secret"
SECRETS = (
    "hunter2",
    "s3cretpw",
    "k3yk3yk3y",
    TOKEN,
    "pin-4321-x",
    "sess-cookie-val",
    "bpw-7777",
    "card-4111-2222",
)
PAYMENT_FAILED = blinker.signal("payment-failed")


class Leaky:
    """An app whose views put secrets into exception text, bridged to a file and a collector."""

    def __init__(self, path: Path, collector: Collector) -> None:
        self.path = path
        self.collector = collector
        self.app = app = build_app(
            BRIDGE_SIGNALS=[
                "default",
                "request_tearing_down",
                "appcontext_tearing_down",
                "payment-failed",
            ],
            BRIDGE_LOGGERS=["shop.views"],
            BRIDGE_SINKS=[
                {"type": "file", "path": str(path)},
                {
                    "type": "http",
                    "url": collector.url,
                    "headers": {"Authorization": "Bearer ${COLLECTOR_TOKEN}"},
                },
            ],
        )

        @app.post("/pin")
        def pin() -> str:
            return str(int(request.form["password"]))

        @app.get("/fetch")
        def fetch() -> str:
            raise ConnectionError("GET https://ada:s3cretpw@db/x?api_key=k3yk3yk3y failed")

        @app.get("/echo")
        def echo() -> str:
            raise RuntimeError(f"collector replied: invalid token {os.environ['COLLECTOR_TOKEN']}")

        @app.post("/chained")
        def chained() -> str:
            data = request.get_json()
            try:
                return str(int(data["pin"]))
            except ValueError as exc:
                raise RuntimeError("pin check failed") from exc

        @app.get("/cookie")
        def cookie() -> str:
            raise LookupError(f"no cart for session {request.cookies['session']}")

        @app.get("/logged")
        def logged() -> str:
            try:
                int(request.authorization.password)  # type: ignore[union-attr]
            except ValueError:
                logging.getLogger("shop.views").exception("basic auth failed")
            return "ok"

        @app.post("/pay")
        def pay() -> str:
            try:
                return str(int(request.form["card_number"]))
            except ValueError as exc:  # handled: the exception travels as a signal argument
                sender = current_app._get_current_object()  # type: ignore[attr-defined]
                PAYMENT_FAILED.send(sender, error=exc, detail={"causes": [exc]})
                return "declined"

        self.bridge = SignalBridge(app)
        self.client = app.test_client()

    def written(self) -> bytes:
        """Every byte the file sink wrote and the collector received."""
        assert self.bridge.flush(timeout=10.0)
        return self.path.read_bytes() + b"".join(r.body for r in self.collector.requests())


@pytest.fixture
def leaky(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Leaky]:
    monkeypatch.setenv("COLLECTOR_TOKEN", TOKEN)
    with Collector() as collector:
        app = Leaky(tmp_path / "events.jsonl", collector)
        yield app
        app.bridge.close(timeout=5.0)


class TestExceptionSecretsInAnApp:
    def test_no_secret_reaches_a_sink(self, leaky: Leaky) -> None:
        """Form, query, JSON, cookie and Basic-auth values and the configured token never leak."""
        client = leaky.client
        client.set_cookie("session", "sess-cookie-val")
        assert 500 == client.post("/pin", data={"password": "hunter2"}).status_code
        assert 500 == client.get("/fetch").status_code
        assert 500 == client.get("/echo").status_code
        assert 500 == client.post("/chained", json={"pin": "pin-4321-x"}).status_code
        assert 500 == client.get("/cookie").status_code
        assert 200 == client.get("/logged", auth=("ada", "bpw-7777")).status_code
        assert 200 == client.post("/pay", data={"card_number": "card-4111-2222"}).status_code
        raw = leaky.written()
        assert [] == [secret for secret in SECRETS if secret.encode() in raw]
        events = read_events(leaky.path)
        with_stack = [e["event"] for e in events if "exception.stacktrace" in e]
        assert (5, 5, 5, 1) == tuple(
            with_stack.count(name)
            for name in (
                "request.exception",
                "request.teardown",
                "appcontext.teardown",
                "basic auth failed",
            )
        )
        messages = {e["exception.message"] for e in events if e["event"] == "request.exception"}
        assert f"invalid literal for int() with base 10: '{REDACTED}'" in messages


class TestSensitivePathVariables:
    def test_a_token_in_the_path_is_never_written(self, tmp_path: Path) -> None:
        """`/reset/<token>`: url.path carries [REDACTED] for the token in every event."""
        path = tmp_path / "events.jsonl"
        app = build_app(
            BRIDGE_SIGNALS=["builtin"], BRIDGE_SINKS=[{"type": "file", "path": str(path)}]
        )

        @app.route("/reset/<token>/confirm")
        def reset(token: str) -> str:
            return "reset"

        @app.route("/share/<path:api_key>")
        def share(api_key: str) -> str:
            return "shared"

        bridge = SignalBridge(app)
        client = app.test_client()
        client.get("/reset/tok-PATH-5555/confirm")
        client.get("/share/abc-KEY-6666/part/two")
        client.get("/items/5555")
        assert bridge.close()
        raw = path.read_bytes()
        assert b"tok-PATH-5555" not in raw and b"abc-KEY-6666" not in raw
        paths = {event["url.path"] for event in read_events(path) if "url.path" in event}
        assert {"/reset/[REDACTED]/confirm", "/share/[REDACTED]", "/items/5555"} == paths

    def test_only_whole_segments_are_replaced(self) -> None:
        """A short sensitive value hides its own segment, never part of another."""
        assert "/a7b/[REDACTED]/7" == redact_path("/a7b/7/7", {"token": "7"}, SENSITIVE)
        assert "/x/1" == redact_path("/x/1", {"item_id": 1}, SENSITIVE)

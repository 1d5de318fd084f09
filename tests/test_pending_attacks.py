"""Red-team checks of issue 9 (a request's events written once, at its end): what a request,
a test, a script or a second thread could do that the old write-at-once path got right.

Real Flask apps with a real file sink (the `make_bridged` fixture); a test that could hang
runs in a forked child with a deadline (`tests.forks`).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import ipaddress
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Response, current_app, g, make_response, request, stream_with_context
from werkzeug.test import EnvironBuilder

from bridge import capture_events
from bridge.events import timestamp_and_id
from tests.conftest import LOGIN_SIGNAL, BridgedApp, read_events
from tests.forks import run_in_child

MakeBridged = Callable[..., BridgedApp]


class TestCaptureEventsInsideAView:
    def test_the_block_sees_the_event_sent_inside_it(self, make_bridged: MakeBridged) -> None:
        """`capture_events()` opened inside a view lists the view's event before the block
        ends, as it did when every event was written at once."""
        bridged = make_bridged(signals=["user-login"])
        seen: list[list[Any]] = []

        @bridged.app.route("/audited")
        def audited() -> str:
            with capture_events(bridged.bridge) as events:
                LOGIN_SIGNAL.send(current_app._get_current_object(), user_id=3)
                seen.append([event["user_id"] for event in events])
            seen.append([event["user_id"] for event in events])
            return "ok"

        assert 200 == bridged.client.get("/audited").status_code
        assert [[3], [3]] == seen
        assert [3] == [event["user_id"] for event in bridged.events()]


class _Session:
    """Stands for a request's database session (Flask-SQLAlchemy removes it at teardown)."""

    closed = False


class TestUserObjectsOfARequest:
    def test_a_user_whose_id_needs_the_request_s_session_is_logged_by_its_id(
        self, make_bridged: MakeBridged
    ) -> None:
        """Flask-Login's `user_logged_in` with a model user whose `get_id()` needs the
        request's database session (an expired SQLAlchemy instance: closed at teardown, it
        raises DetachedInstanceError) is logged as `user.id`, as when the event was written
        at the send: the id is read while the request is there."""
        flask_login = pytest.importorskip("flask_login")
        bridged = make_bridged(signals=["flask_login.signals:user_logged_in"])
        app = bridged.app
        manager = flask_login.LoginManager(app)

        class User(flask_login.UserMixin):
            def __init__(self, session: _Session, user_id: str) -> None:
                self.session = session
                self.user_id = user_id

            def get_id(self) -> str:
                if self.session.closed:
                    raise RuntimeError("Instance is not bound to a Session")
                return self.user_id

        manager.user_loader(lambda user_id: None)

        @app.teardown_appcontext
        def remove_session(exc: BaseException | None) -> None:
            session = g.pop("db_session", None)
            if session is not None:
                session.closed = True

        @app.route("/model-login")
        def model_login() -> str:
            g.db_session = _Session()
            flask_login.login_user(User(g.db_session, "42"))
            return "ok"

        assert 200 == bridged.client.get("/model-login").status_code
        (event,) = bridged.events()
        assert ("user.logged_in", "42") == (event["event"], event.get("user.id"))


class TestFlushInsideAnAsyncView:
    def test_the_view_s_own_events_are_flushed_and_the_rest_follow_at_the_request_s_end(
        self, make_bridged: MakeBridged
    ) -> None:
        """`flush()` in an async view (asgiref runs it on another thread) writes the view's
        own events at once; what the request thread captured before the view
        (`request.started`) is written when the request ends, before the response (a list is
        only ever shipped by its own thread: shipping it from another would race with its
        appends). Documented in the README."""
        bridged = make_bridged(signals=["request_started", "user-login"])
        app = bridged.app
        seen: list[list[str]] = []

        @app.route("/async-audit")
        async def async_audit() -> str:
            LOGIN_SIGNAL.send(app, user_id=12)
            assert bridged.bridge.flush(timeout=5.0)
            seen.append([event["event"] for event in read_events(bridged.path)])
            return "ok"

        environ = EnvironBuilder(path="/async-audit").get_environ()
        body = app(environ, lambda status, headers, exc_info=None: None)
        before_the_body = sorted(event["event"] for event in read_events(bridged.path))
        list(body)
        assert [["user-login"]] == seen
        assert ["request.started", "user-login"] == before_the_body


class TestAContextCopiedInARequest:
    def test_an_event_sent_through_it_after_the_request_is_written(
        self, make_bridged: MakeBridged
    ) -> None:
        """A context copied in a view and run later on the same thread (a `call_on_close`
        callback, run when the server closes the response) writes its event: the request's
        list is already shipped, so nothing may be appended to it."""
        bridged = make_bridged(signals=["user-login"])
        app = bridged.app

        @app.route("/later")
        def later() -> Response:
            context = contextvars.copy_context()
            response = make_response("ok")
            response.call_on_close(lambda: context.run(LOGIN_SIGNAL.send, app, user_id=42))
            return response

        response = bridged.client.get("/later")
        response.close()
        assert [42] == [event["user_id"] for event in bridged.events()]


class TestAChildForkedInARequest:
    def test_the_child_s_own_events_are_written_by_its_flush(
        self, make_bridged: MakeBridged
    ) -> None:
        """A child forked inside a request (multiprocessing's fork, a job spawned by a view)
        that sends a signal and flushes writes its event; the parent's event of the request
        is still written once, by the parent."""
        bridged = make_bridged(signals=["user-login"])
        app = bridged.app
        results: list[Any] = []

        @app.route("/fork-job")
        def fork_job() -> str:
            LOGIN_SIGNAL.send(app, user_id=21)

            def in_child() -> list[int]:
                LOGIN_SIGNAL.send(app, user_id=99)
                assert bridged.bridge.flush(timeout=5.0)
                events = read_events(bridged.path)
                return [event["user_id"] for event in events if event["user_id"] == 99]

            results.append(run_in_child(in_child, deadline=20.0))
            return "ok"

        assert 200 == bridged.client.get("/fork-job").status_code
        assert [[99]] == results
        assert [21, 99] == sorted(event["user_id"] for event in bridged.events())


_CHAIN_LOGGER = "tests.pending_attacks.users"


class _LoggingUser:
    """A user object whose `get_id()` logs through a logger the bridge routes."""

    def __init__(self, number: int) -> None:
        self.number = number

    def get_id(self) -> str:
        logging.getLogger(_CHAIN_LOGGER).info("user id read", extra={"number": self.number})
        return str(self.number)


class TestBufferedEventsThatLog:
    def test_a_batch_whose_values_log_is_written_without_hanging(
        self, make_bridged: MakeBridged
    ) -> None:
        """With `batch_outside_requests`, a script sending 200 events whose user objects log
        when their id is read finishes, and every event and record is written: the records
        logged while a batch is written reach the thread's buffer, which may then be full."""
        bridged = make_bridged(
            signals=["user-login"],
            BRIDGE_LOGGERS=[_CHAIN_LOGGER],
            BRIDGE_BATCH_OUTSIDE_REQUESTS=1.0,
        )
        logging.getLogger(_CHAIN_LOGGER).setLevel(logging.INFO)

        def in_child() -> list[int]:
            for number in range(200):
                LOGIN_SIGNAL.send(bridged.app, user=_LoggingUser(number))
            assert bridged.bridge.flush(timeout=5.0)
            events = read_events(bridged.path)
            return [
                len([e for e in events if e["event"] == "user-login"]),
                len([e for e in events if e["event"] == "user id read"]),
            ]

        assert [200, 200] == run_in_child(in_child, deadline=15.0)


class TestBatchOutsideRequestsLeavesRequestsAlone:
    def test_a_streamed_body_s_event_is_written_when_the_response_closes(
        self, make_bridged: MakeBridged
    ) -> None:
        """With `batch_outside_requests`, an event a streamed body sends (inside its request,
        `stream_with_context`) is in the file when the response is closed, before its
        `request.finished`, as without the key: it is the request's, not a script's."""
        bridged = make_bridged(signals=["default", "user-login"], BRIDGE_BATCH_OUTSIDE_REQUESTS=1.0)
        app = bridged.app

        @app.route("/stream-login")
        def stream_login() -> Response:
            def body() -> Iterator[str]:
                yield "a"
                LOGIN_SIGNAL.send(app, user_id=5)
                yield "b"

            return Response(stream_with_context(body()))

        response = bridged.client.get("/stream-login")
        assert b"ab" == response.get_data()
        response.close()
        written = [event["event"] for event in read_events(bridged.path)]
        assert ["user-login", "request.finished"] == written

    def test_an_async_view_s_event_is_written_before_the_response(
        self, make_bridged: MakeBridged
    ) -> None:
        """With `batch_outside_requests`, an async view's event (sent on asgiref's thread) is
        written before the response is returned, like the rest of its request's."""
        bridged = make_bridged(signals=["default", "user-login"], BRIDGE_BATCH_OUTSIDE_REQUESTS=1.0)
        app = bridged.app

        @app.route("/async-login")
        async def async_login() -> str:
            LOGIN_SIGNAL.send(app, user_id=6)
            return "ok"

        assert 200 == bridged.client.get("/async-login").status_code
        written = [event["event"] for event in read_events(bridged.path)]
        assert ["user-login", "request.finished"] == written


def _expected_timestamp(now_ns: int) -> str:
    micros = now_ns // 1000
    second, micro = divmod(micros, 1_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{text}.{micro:06d}Z"


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Threads switch often, as on a busy worker; restored afterwards."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


class TestTimestampsOfCapturedEvents:
    def test_two_threads_writing_different_seconds_each_get_their_own(
        self, fast_switching: None
    ) -> None:
        """Two threads formatting capture times seconds apart (a long request's events and
        a short one's, written at their ends at the same time) each get the timestamp of
        their own capture time, never one built from the other thread's second."""
        base = time.time_ns()
        wrong: list[tuple[str, str]] = []

        def write(offset_seconds: int) -> None:
            for step in range(100_000):
                now_ns = base + offset_seconds * 1_000_000_000 + (step % 997) * 1_000_123
                timestamp, _ = timestamp_and_id(now_ns)
                if timestamp != _expected_timestamp(now_ns):
                    wrong.append((timestamp, _expected_timestamp(now_ns)))
                    return

        threads = [threading.Thread(target=write, args=(offset,)) for offset in (0, 7)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [] == wrong

    def test_the_timestamp_of_a_captured_time_is_exact(self) -> None:
        """One thread: a capture time long past is formatted exactly (the cache of the last
        second is not reused for another)."""
        now_ns = time.time_ns()
        past_ns = now_ns - 3_600_000_000_123
        assert _expected_timestamp(now_ns) == timestamp_and_id(now_ns)[0]
        assert _expected_timestamp(past_ns) == timestamp_and_id(past_ns)[0]
        assert dt.datetime.fromisoformat(timestamp_and_id(past_ns)[0]) < dt.datetime.now(dt.UTC)


_FILES_LOGGER = "tests.pending_attacks.files"


class TestALogMessageOrjsonRefuses:
    def test_a_message_with_a_lone_surrogate_is_still_a_line(
        self, make_bridged: MakeBridged
    ) -> None:
        """A record whose message quotes a file name decoded with `surrogateescape` (lone
        surrogates, which orjson refuses in the event name) is still written, inside a
        request and outside, as one line with the surrogate replaced: none is lost."""
        bridged = make_bridged(signals=["default"], BRIDGE_LOGGERS=[_FILES_LOGGER])
        app = bridged.app
        logger = logging.getLogger(_FILES_LOGGER)
        logger.setLevel(logging.INFO)
        name = b"caf\xe9.txt".decode("utf-8", "surrogateescape")

        @app.route("/files")
        def files() -> str:
            logger.warning("cannot read %s", name)
            return "ok"

        assert 200 == bridged.client.get("/files").status_code
        with app.app_context():
            logger.warning("outside: cannot read %s", name)
        events = bridged.events()
        assert [
            "cannot read caf\ufffd.txt",
            "request.finished",
            "outside: cannot read caf\ufffd.txt",
        ] == [event["event"] for event in events]
        assert 0 == bridged.bridge.stats()["receiver_errors"]


class TestARequestContextOrjsonRefuses:
    def test_every_event_is_written_with_its_context_and_secrets_scrubbed(
        self, make_bridged: MakeBridged
    ) -> None:
        """A middleware that stores the client address as an `ipaddress` object (a request
        context value orjson refuses) costs no event: all are written with the request's
        context made safe, and an exception argument still loses the request's secret."""
        bridged = make_bridged(signals=["default", "user-login"])
        app = bridged.app
        inner = app.wsgi_app

        def real_ip(environ: dict[str, Any], start_response: Any) -> Any:
            environ["REMOTE_ADDR"] = ipaddress.ip_address("10.0.0.7")
            return inner(environ, start_response)

        app.wsgi_app = real_ip  # type: ignore[method-assign]

        @app.route("/token-check")
        def token_check() -> str:
            LOGIN_SIGNAL.send(app, user_id=1)
            LOGIN_SIGNAL.send(app, error=ValueError(f"bad {request.args['token']}"))
            return "ok"

        assert 200 == bridged.client.get("/token-check?token=s3cr3t-token-value").status_code
        events = bridged.events()
        assert ["user-login", "user-login", "request.finished"] == [e["event"] for e in events]
        assert ["10.0.0.7"] * 3 == [event.get("client.address") for event in events]
        assert b"s3cr3t-token-value" not in bridged.path.read_bytes()


class TestValuesReadAtCapture:
    def test_a_sensitive_url_variable_popped_by_the_app_stays_redacted(
        self, make_bridged: MakeBridged
    ) -> None:
        """`request.started` is captured before a `url_value_preprocessor` pops the
        sensitive URL variable: its `url.path` is redacted as it was when the event was sent
        (values the bridge reads itself are taken at capture time)."""
        bridged = make_bridged(signals=["request_started", "request_finished"])
        app = bridged.app

        @app.url_value_preprocessor
        def pull_token(endpoint: str | None, values: dict[str, Any] | None) -> None:
            if values and "token" in values:
                g.token = values.pop("token")

        @app.route("/reset/<token>")
        def reset() -> str:
            return "ok"

        assert 200 == bridged.client.get("/reset/s3cr3t-reset-value").status_code
        events = bridged.events()
        assert ["request.started", "request.finished"] == [e["event"] for e in events]
        assert "/reset/[REDACTED]" == events[0]["url.path"]
        assert b"s3cr3t-reset-value" not in bridged.path.read_bytes()

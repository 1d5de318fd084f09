"""The Emitter: one app's pipeline from an event dict to encoded lines handed to every sink."""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from typing import Any

import pytest
import structlog
from flask import Flask

import bridge.emitter
from bridge.config import load_settings
from bridge.emitter import Emitter, configured_secrets
from bridge.events import ENVELOPE_ORDER
from bridge.processors import REDACTED
from tests.test_logging import ListSink

CHILD_DEADLINE = 5.0  # seconds the child gives its work before it reports a hang


def fork_and_run(work: Any) -> int:
    """Fork; in the child run `work()` on a thread and exit 0 when it returned within
    CHILD_DEADLINE, 3 when it hung, 4 when it raised. The parent gets the exit code."""
    with warnings.catch_warnings():  # 3.12+ warns that forking a threaded process is risky
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 3
        try:
            outcome: list[int] = []

            def run() -> None:
                try:
                    work()
                    outcome.append(0)
                except BaseException:
                    outcome.append(4)

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            thread.join(CHILD_DEADLINE)
            code = outcome[0] if outcome else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)  # bounded: the child exits by its own deadline
    return os.waitstatus_to_exitcode(status)


class TestFork:
    def test_child_of_a_fork_during_a_locked_count_still_counts(self) -> None:
        """A child forked while another thread holds the error-count lock counts and emits."""
        sink = ListSink()
        emitter = Emitter(load_settings({}, {}), [sink])
        holding, release = threading.Event(), threading.Event()

        def hold_the_lock() -> None:
            with emitter._errors_lock:
                holding.set()
                release.wait(30.0)

        holder = threading.Thread(target=hold_the_lock)
        holder.start()
        try:
            assert holding.wait(10.0)

            def count_and_emit() -> None:
                emitter.count_error(RuntimeError("in the child"))
                emitter.emit("s", "after-fork", "info")
                assert 1 == emitter.receiver_errors
                assert ["after-fork"] == [json.loads(line)["event"] for line in sink.lines]

            assert 0 == fork_and_run(count_and_emit)
        finally:
            release.set()
            holder.join(10.0)
        assert not holder.is_alive()
        assert 0 == emitter.receiver_errors, "the parent's count is its own"


HTTP_SINK = {
    "type": "http",
    "url": "https://collector:url-pass-123@logs.example/in?api_key=query-key-456&page=2",
    "headers": {"Authorization": "Bearer header-token-789", "X-Tenant": "tenant-value-000"},
}


def emitter_with(*sinks: Any, processors: tuple[Any, ...] = (), **config: Any) -> Emitter:
    """An Emitter over `sinks` (default: one ListSink) with `BRIDGE_<KEY>` configuration."""
    settings = load_settings({f"BRIDGE_{k.upper()}": v for k, v in config.items()}, {})
    return Emitter(settings, sinks or [ListSink()], processors)


def events_of(emitter: Emitter) -> list[dict[str, Any]]:
    sink = emitter.sinks[0]
    assert isinstance(sink, ListSink)
    return sink.events()


@pytest.fixture
def reports(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """What the emitter reports on stderr, as (cause, message), instead of stderr."""
    made: list[tuple[str, str]] = []

    def record(cause: str, message: str) -> bool:
        made.append((cause, message))
        return True

    monkeypatch.setattr(bridge.emitter, "report", record)
    return made


class Opaque:
    """An application object with no JSON form."""


class TestEmit:
    def test_envelope_comes_first_in_its_order(self) -> None:
        """The line starts with the envelope keys, in their documented order, then fields."""
        emitter = emitter_with(service="shop")
        emitter.emit("sig", "thing.happened", "warning", {"count": 3})
        (event,) = events_of(emitter)
        assert [*ENVELOPE_ORDER, "count"] == list(event)
        assert ("warning", "thing.happened", "sig", "shop", os.getpid(), 3) == (
            event["level"],
            event["event"],
            event["signal"],
            event["service.name"],
            event["process.pid"],
            event["count"],
        )

    def test_arguments_take_the_safe_walk_and_fields_do_not(self) -> None:
        """Arguments are converted and redacted; the bridge's own fields are written as given."""
        emitter = emitter_with()
        emitter.emit(
            "s", "e", "info", {"template.name": "password.html"}, {"password": "pw", "o": Opaque()}
        )
        (event,) = events_of(emitter)
        assert "password.html" == event["template.name"]
        assert REDACTED == event["password"]
        assert "<tests.test_emitter.Opaque>" == event["o"]

    def test_an_argument_named_like_a_field_is_kept_aside(self) -> None:
        """An argument named like one of the bridge's fields or the envelope is args.<key>."""
        emitter = emitter_with()
        emitter.emit("s", "e", "info", {"message": "ours"}, {"message": "theirs", "level": "x"})
        (event,) = events_of(emitter)
        assert ("ours", "theirs", "info", "x") == (
            event["message"],
            event["args.message"],
            event["level"],
            event["args.level"],
        )

    def test_no_request_context_outside_a_request(self) -> None:
        """Outside a request the event is the envelope and what was given, nothing more."""
        emitter = emitter_with()
        emitter.emit("s", "e", "info", {"a": 1})
        (event,) = events_of(emitter)
        assert {*ENVELOPE_ORDER, "a"} == set(event)

    def test_given_context_replaces_the_current_request(self) -> None:
        """`context=` (a streamed body's captured request) is used instead of the current one."""
        emitter = emitter_with()
        app = Flask("ctx")
        with app.test_request_context("/now"):
            emitter.emit("s", "e", "info", context={"url.path": "/then", "request_id": "r-1"})
        (event,) = events_of(emitter)
        assert ("/then", "r-1") == (event["url.path"], event["request_id"])
        assert "http.request.method" not in event

    def test_user_processors_see_real_objects_before_the_walk(self) -> None:
        """With user processors, they get the real argument objects; the line is made safe."""
        seen: list[Any] = []

        def spy(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
            seen.append((logger, method, event_dict["o"]))
            return event_dict

        opaque = Opaque()
        emitter = emitter_with(processors=(spy,))
        emitter.emit("s", "e", "error", arguments={"o": opaque, "token": "t0ps3cret"})
        (event,) = events_of(emitter)
        assert [(emitter, "error", opaque)] == seen
        assert ("<tests.test_emitter.Opaque>", REDACTED) == (event["o"], event["token"])

    def test_every_sink_gets_the_same_line(self) -> None:
        """One encoding, handed to every sink."""
        first, second = ListSink("a"), ListSink("b")
        emitter = emitter_with(first, second)
        emitter.emit("s", "e", "info", {"n": 1})
        assert 1 == len(first.lines)
        assert first.lines == second.lines

    def test_a_tap_gets_each_event_while_attached(self) -> None:
        """A tap (capture_events) gets each event as the sinks get it, and none once removed."""
        emitter = emitter_with()
        tap: list[dict[str, Any]] = []
        emitter.taps.append(tap)
        emitter.emit("s", "e", "info", {"n": 1})
        emitter.taps.remove(tap)
        emitter.emit("s", "later", "info")
        assert [events_of(emitter)[0]] == tap


class TestRequestContext:
    def test_none_outside_a_request(self) -> None:
        """Without a request there is no request context."""
        assert emitter_with().request_context() is None

    def test_the_current_request_with_its_route(self) -> None:
        """Inside a matched request: method, path (sensitive URL variables hidden) and route."""
        emitter = emitter_with()
        app = Flask("routes")
        seen: dict[str, Any] = {}

        @app.route("/reset/<token>")
        def reset(token: str) -> str:
            context = emitter.request_context()
            assert context is not None
            seen.update(context)
            return "ok"

        assert 200 == app.test_client().get("/reset/abc123?x=1").status_code
        assert ("GET", "/reset/[REDACTED]", "/reset/<token>", "x=1") == (
            seen["http.request.method"],
            seen["url.path"],
            seen["http.route"],
            seen["url.query"],
        )


class TestShip:
    def test_processors_run_in_order_then_the_safe_walk(self) -> None:
        """The user's processors run in the order given; their output is made safe last."""
        order: list[str] = []

        def first(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
            order.append("first")
            return {**event_dict, "added": Opaque()}

        def second(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
            order.append("second")
            assert isinstance(event_dict["added"], Opaque)
            return event_dict

        emitter = emitter_with(processors=(first, second))
        emitter.ship({"event": "e", "level": "info"}, "info")
        assert ["first", "second"] == order
        assert [{"event": "e", "level": "info", "added": "<tests.test_emitter.Opaque>"}] == (
            events_of(emitter)
        )

    def test_drop_event_drops_the_line(self) -> None:
        """A processor raising structlog.DropEvent drops the event: no sink sees it."""

        def drop(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
            raise structlog.DropEvent

        emitter = emitter_with(processors=(drop,))
        emitter.ship({"event": "e"}, "info")
        emitter.emit("s", "e", "info")
        assert [] == events_of(emitter)


class TestExceptionFields:
    def test_configured_secrets_are_scrubbed(self) -> None:
        """An http sink's header value quoted in an exception message never reaches the event."""
        emitter = emitter_with(sinks=[HTTP_SINK])
        fields = emitter.exception_fields(ValueError("auth Bearer header-token-789 refused"))
        assert "ValueError" == fields["exception.type"]
        assert "header-token-789" not in fields["exception.message"]
        assert "header-token-789" not in fields["exception.stacktrace"]
        assert REDACTED in fields["exception.message"]

    def test_the_current_requests_secrets_are_scrubbed(self) -> None:
        """Inside a request, a sensitive header's value is scrubbed from the exception text."""
        emitter = emitter_with()
        with Flask("req").test_request_context("/", headers={"X-Api-Key": "request-key-321"}):
            fields = emitter.exception_fields(RuntimeError("key request-key-321 rejected"))
        assert f"key {REDACTED} rejected" == fields["exception.message"]

    def test_given_secrets_replace_the_current_requests(self) -> None:
        """`secrets=` is used instead of the current request's (a streamed body's error)."""
        emitter = emitter_with()
        with Flask("req").test_request_context("/", headers={"X-Api-Key": "request-key-321"}):
            fields = emitter.exception_fields(
                RuntimeError("request-key-321 and kept-secret-654"), secrets=["kept-secret-654"]
            )
        assert f"request-key-321 and {REDACTED}" == fields["exception.message"]


class TestRequestSecrets:
    def test_sensitive_values_of_the_current_request(self) -> None:
        """The values of the request's sensitive headers and query arguments, not the others."""
        emitter = emitter_with()
        app = Flask("req")
        with app.test_request_context(
            "/?password=query-pw-111&page=2", headers={"Authorization": "Bearer auth-222"}
        ):
            secrets = emitter.request_secrets()
        assert {"Bearer auth-222", "query-pw-111"} <= set(secrets)
        assert "2" not in secrets

    def test_empty_outside_a_request(self) -> None:
        """Outside any request or app context there are no request secrets."""
        assert [] == emitter_with().request_secrets()


class TestGuard:
    def test_an_exception_is_swallowed_counted_and_reported(
        self, reports: list[tuple[str, str]]
    ) -> None:
        """`with emitter.guard:` swallows an Exception, counts it and reports it once."""
        emitter = emitter_with()
        with emitter.guard:
            raise KeyError("bad key")
        assert 1 == emitter.receiver_errors
        assert 1 == emitter.stats()["receiver_errors"]
        assert [
            ("receiver-KeyError", "a signal receiver failed and was skipped: KeyError: 'bad key'")
        ] == reports

    def test_a_base_exception_passes_through(self, reports: list[tuple[str, str]]) -> None:
        """KeyboardInterrupt and SystemExit are not the receiver's failures: they propagate."""
        emitter = emitter_with()
        with pytest.raises(KeyboardInterrupt), emitter.guard:
            raise KeyboardInterrupt
        assert (0, []) == (emitter.receiver_errors, reports)

    def test_counts_from_many_threads_add_up(self, reports: list[tuple[str, str]]) -> None:
        """count_error from concurrent threads loses no count."""
        emitter = emitter_with()

        def fail_many() -> None:
            for _ in range(500):
                emitter.count_error(ValueError("x"))

        threads = [threading.Thread(target=fail_many) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10.0)
        assert 2000 == emitter.receiver_errors


class SlowSink(ListSink):
    """A sink whose flush and close take `seconds` of the time they are given, or raise."""

    def __init__(self, name: str, seconds: float = 0.0, fail: bool = False) -> None:
        super().__init__(name)
        self.seconds = seconds
        self.fail = fail
        self.given: list[float] = []

    def _act(self, timeout: float) -> bool:
        self.given.append(timeout)
        if self.fail:
            raise OSError(f"{self.name} is broken")
        deadline = time.monotonic() + min(self.seconds, timeout)
        while time.monotonic() < deadline:  # busy for its share: a sink that works that long
            time.sleep(0.005)
        return self.seconds <= timeout

    def flush(self, timeout: float) -> bool:
        return self._act(timeout)

    def close(self, timeout: float) -> bool:
        return self._act(timeout)


class TestFlushAndClose:
    @pytest.mark.parametrize("action", ["flush", "close"])
    def test_one_deadline_is_shared_by_every_sink(self, action: str) -> None:
        """A slow first sink leaves the second only what is left of the one timeout."""
        slow, after = SlowSink("slow", seconds=0.3), SlowSink("after")
        emitter = emitter_with(slow, after)
        assert getattr(emitter, action)(1.0)
        assert 0.9 < slow.given[0] <= 1.0
        assert after.given[0] <= 0.71

    @pytest.mark.parametrize("action", ["flush", "close"])
    def test_a_failing_sink_is_reported_and_the_others_still_run(
        self, action: str, reports: list[tuple[str, str]]
    ) -> None:
        """A sink raising in flush/close makes the call False, is reported, and skips no sink."""
        broken, fine = SlowSink("broken", fail=True), SlowSink("fine")
        emitter = emitter_with(broken, fine)
        assert not getattr(emitter, action)(1.0)
        assert 1 == len(fine.given)
        assert [
            ("lifecycle-broken", "sink broken failed to flush/close: broken is broken")
        ] == reports

    def test_false_when_a_sink_runs_out_of_time(self) -> None:
        """A sink that cannot finish within the timeout makes flush False."""
        emitter = emitter_with(SlowSink("slow", seconds=5.0))
        assert not emitter.flush(0.05)


class TestStats:
    def test_every_sink_by_name_and_the_error_count(self) -> None:
        """stats() is every sink's counters under its name, and receiver_errors."""
        first, second = ListSink("a"), ListSink("b")
        emitter = emitter_with(first, second)
        emitter.emit("s", "e", "info")
        assert {
            "sinks": {"a": {"enqueued": 1}, "b": {"enqueued": 1}},
            "receiver_errors": 0,
        } == emitter.stats()


class TestConfiguredSecrets:
    def test_http_header_values_and_url_credentials(self) -> None:
        """Every http sink's header values, URL password and sensitive query values."""
        settings = load_settings({"BRIDGE_SINKS": [HTTP_SINK, {"type": "stdout"}]}, {})
        assert [
            "Bearer header-token-789",
            "tenant-value-000",
            "url-pass-123",
            "query-key-456",
        ] == configured_secrets(settings)

    def test_none_without_http_sinks(self) -> None:
        """File and stdout sinks carry no secrets."""
        assert [] == configured_secrets(load_settings({"BRIDGE_SINKS": [{"type": "stdout"}]}, {}))

"""Streamed responses: `request.finished` when the body is done, and a body's exception as an event.

Flask sends `request_finished` before the server iterates a streamed body; the bridge holds the
event back until the body is done (exhausted, failed or closed, PEP 3333), with the request's
fields captured while its context was alive. Durations come from a fake clock that the bodies
advance, so they are exact.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.test import EnvironBuilder
from werkzeug.wsgi import FileWrapper

from examples.server import GunicornServer
from tests import streaming_app
from tests.conftest import BridgedApp, read_events
from tests.streaming_app import BODY, PARTIAL, add_stream_routes

Make = Callable[..., BridgedApp]


class FakeClock:
    """`time.perf_counter` for the test: it moves only when a body calls `advance`."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(time, "perf_counter", fake)
    return fake


@pytest.fixture
def streaming(make_bridged: Make, clock: FakeClock) -> Callable[..., BridgedApp]:
    """`streaming(signals=...)`: a bridged app with the stream routes on the fake clock."""

    def make(**kwargs: Any) -> BridgedApp:
        bridged = make_bridged(**kwargs)
        add_stream_routes(bridged.app, clock.advance)
        return bridged

    return make


def by_event(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    names = [e["event"] for e in events]
    assert len(names) == len(set(names)), f"an event came twice: {names}"
    return {e["event"]: e for e in events}


CONTEXT = pytest.mark.parametrize("query", ["", "?context=1"], ids=["plain", "stream_with_context"])


class TestStreamedBody:
    @CONTEXT
    def test_finished_when_the_body_is_done(
        self, streaming: Callable[..., BridgedApp], query: str
    ) -> None:
        """request.finished comes once the body is sent: its duration and size include it."""
        bridged = streaming()
        with bridged.client.get("/stream" + query, headers={"X-Request-ID": "s-1"}) as response:
            assert [] == bridged.events(), "nothing before the body is done"
            assert BODY == response.data
        (finished,) = bridged.events()
        assert ("request.finished", 200, "info") == (
            finished["event"],
            finished["http.response.status_code"],
            finished["level"],
        )
        assert (2000.0, len(BODY)) == (finished["duration_ms"], finished["http.response.body.size"])
        assert ("s-1", "/stream", "/stream") == (
            finished["request_id"],
            finished["url.path"],
            finished["http.route"],
        )

    @CONTEXT
    def test_exception_in_the_body_is_an_event(
        self, streaming: Callable[..., BridgedApp], query: str
    ) -> None:
        """A body raising midway: request.exception, then request.finished with the status sent."""
        bridged = streaming()
        response = bridged.client.get("/stream-fails" + query, headers={"X-Request-ID": "s-2"})
        with pytest.raises(RuntimeError, match="stream broke"):
            response.get_data()
        response.close()
        events = by_event(bridged.events())
        assert ["request.exception", "request.finished"] == list(events)
        exc, finished = events["request.exception"], events["request.finished"]
        assert ("error", "RuntimeError", "stream broke") == (
            exc["level"],
            exc["exception.type"],
            exc["exception.message"],
        )
        assert "Traceback" in exc["exception.stacktrace"]
        assert ("s-2", "/stream-fails") == (exc["request_id"], exc["url.path"])
        assert (200, 1000.0, len(PARTIAL), "s-2") == (
            finished["http.response.status_code"],
            finished["duration_ms"],
            finished["http.response.body.size"],
            finished["request_id"],
        )

    @CONTEXT
    def test_request_secrets_are_scrubbed_from_the_exception(
        self, streaming: Callable[..., BridgedApp], query: str
    ) -> None:
        """A body's exception quoting a sensitive parameter's value never writes that value."""
        bridged = streaming()
        url = "/stream-fails" + (query or "?") + "&token=hunter2-token&detail=+for+hunter2-token"
        response = bridged.client.get(url)
        with pytest.raises(RuntimeError, match="hunter2-token"):
            response.get_data()
        response.close()
        (exc,) = bridged.named("request.exception")
        assert "stream broke for [REDACTED]" == exc["exception.message"]
        assert "hunter2" not in exc["exception.stacktrace"]

    def test_exception_before_the_first_chunk_is_a_500(
        self, streaming: Callable[..., BridgedApp]
    ) -> None:
        """Nothing was sent yet: the server answers 500, and request.finished says so."""
        bridged = streaming()
        with pytest.raises(RuntimeError, match="before the first chunk"):
            bridged.client.get("/stream-fails-first")
        events = by_event(bridged.events())
        assert ["request.exception", "request.finished"] == list(events)
        finished = events["request.finished"]
        assert (500, "error", 0) == (
            finished["http.response.status_code"],
            finished["level"],
            finished["http.response.body.size"],
        )

    def test_closed_early(self, streaming: Callable[..., BridgedApp]) -> None:
        """A server closing the body before its end (client gone) ends the request there."""
        bridged = streaming()
        response = bridged.client.get("/stream")  # the test client reads the first chunk
        response.close()
        (finished,) = bridged.events()
        assert (200, 0.0, len(b"one,")) == (
            finished["http.response.status_code"],
            finished["duration_ms"],
            finished["http.response.body.size"],
        )

    def test_only_the_exception_signal_configured(
        self, streaming: Callable[..., BridgedApp]
    ) -> None:
        """With got_request_exception alone, a failing body still gives request.exception."""
        bridged = streaming(signals=["got_request_exception"])
        response = bridged.client.get("/stream-fails")
        with pytest.raises(RuntimeError):
            response.get_data()
        response.close()
        assert ["request.exception"] == [e["event"] for e in bridged.events()]

    def test_file_wrapper_is_kept(
        self, streaming: Callable[..., BridgedApp], tmp_path: Path
    ) -> None:
        """A wsgi.file_wrapper reaches the server unwrapped; request.finished comes at close()."""
        bridged = streaming()
        data = tmp_path / "report.csv"
        data.write_bytes(b"a,b\n" * 100)

        @bridged.app.route("/download")
        def download() -> Any:
            from flask import send_file

            return send_file(data)

        environ = EnvironBuilder(path="/download").get_environ()
        environ["wsgi.file_wrapper"] = FileWrapper
        body = bridged.app(environ, lambda status, headers, exc_info=None: None)
        assert isinstance(body, FileWrapper)
        assert b"a,b\n" * 100 == b"".join(body)
        assert [] == bridged.events()
        body.close()
        (finished,) = bridged.events()
        assert (200, 400) == (
            finished["http.response.status_code"],
            finished["http.response.body.size"],
        )


class TestPlainResponses:
    def test_unchanged(self, make_bridged: Make) -> None:
        """A response that is not streamed: the same events, order and fields as ever."""
        bridged = make_bridged(signals=["builtin"])
        response = bridged.client.get("/items/3", headers={"X-Request-ID": "p-1"})
        assert [
            "appcontext.pushed",
            "request.started",
            "request.finished",
            "request.teardown",
            "appcontext.teardown",
            "appcontext.popped",
        ] == [e["event"] for e in bridged.events()], "written before the body is read"
        assert b"3" == response.data
        (finished,) = bridged.named("request.finished")
        assert (200, 1, "p-1") == (
            finished["http.response.status_code"],
            finished["http.response.body.size"],
            finished["request_id"],
        )


@pytest.mark.slow
class TestUnderGunicorn:
    def test_streams_through_a_real_worker(self, tmp_path: Path) -> None:
        """Under gunicorn: a streamed body, a failing one, and send_file via its file wrapper."""
        path = tmp_path / "events.jsonl"
        env = {
            **os.environ,
            "BRIDGE_SINKS": f'[{{"type": "file", "path": "{path}"}}]',
            "BRIDGE_SERVICE": "streaming",
        }
        app = "tests.streaming_app:create_app()"
        with (
            GunicornServer(app, cwd=tmp_path, workers=1, env=env) as server,
            requests.Session() as http,
        ):
            ok = http.get(server.url + "/stream", headers={"X-Request-ID": "g-ok"})
            assert BODY == ok.content
            with pytest.raises(requests.exceptions.ChunkedEncodingError):
                http.get(server.url + "/stream-fails", headers={"X-Request-ID": "g-fail"})
            sent = http.get(server.url + "/download", headers={"X-Request-ID": "g-file"})
            assert streaming_app.__file__ is not None
            assert Path(streaming_app.__file__).read_bytes() == sent.content
        events = [e for e in read_events(path) if e.get("request_id", "").startswith("g-")]
        assert [
            ("g-ok", "request.finished", 200, len(BODY)),
            ("g-fail", "request.exception", None, None),
            ("g-fail", "request.finished", 200, len(PARTIAL)),
            ("g-file", "request.finished", 200, len(sent.content)),
        ] == [
            (
                e["request_id"],
                e["event"],
                e.get("http.response.status_code"),
                e.get("http.response.body.size"),
            )
            for e in events
        ]

"""Streamed responses for the tests: a body that finishes, one that fails, one in context.

`add_stream_routes(app, advance)` adds the routes to any app; `advance(seconds)` is called
between chunks (the tests pass a fake clock's, so durations are exact). Served under gunicorn
as `tests.streaming_app:create_app()`, configured by `BRIDGE_*` environment variables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from flask import Flask, Response, request, send_file, stream_with_context

from bridge import SignalBridge

__all__ = ["BODY", "PARTIAL", "add_stream_routes", "create_app"]

BODY = b"one,two,three"
PARTIAL = b"partial,"


def add_stream_routes(app: Flask, advance: Callable[[float], None] = lambda seconds: None) -> None:
    """/stream, /stream-fails and /stream-fails-first; `?context=1` wraps the body in
    `stream_with_context`, `?name=` is read inside the body when it does; /stream-fails quotes
    its `?detail=` (read by the view) in its exception."""

    def respond(body: Iterator[str]) -> Response:
        if request.args.get("context"):
            return Response(stream_with_context(body))
        return Response(body)

    @app.route("/stream")
    def stream() -> Response:
        def body() -> Iterator[str]:
            yield "one,"
            advance(1.0)
            yield "two,"
            advance(1.0)
            yield "three"

        return respond(body())

    @app.route("/stream-fails")
    def stream_fails() -> Response:
        in_context = bool(request.args.get("context"))
        detail = request.args.get("detail", "")

        def body() -> Iterator[str]:
            yield PARTIAL.decode()
            advance(1.0)
            # with stream_with_context the request is still there while the body runs
            name = request.args.get("name", "") if in_context else ""
            raise RuntimeError(f"stream broke{name}{detail}")

        return respond(body())

    @app.route("/stream-fails-first")
    def stream_fails_first() -> Response:
        def body() -> Iterator[str]:
            advance(1.0)
            raise RuntimeError("broke before the first chunk")
            yield ""  # a generator all the same

        return respond(body())


def create_app() -> Flask:
    """The app gunicorn serves (`tests.streaming_app:create_app()`), bridged from BRIDGE_*."""
    app = Flask("streaming")

    @app.route("/")
    def index() -> str:
        return "ok"

    @app.route("/download")
    def download() -> Response:
        return send_file(__file__, mimetype="text/plain")  # gunicorn's wsgi.file_wrapper

    add_stream_routes(app)
    SignalBridge(app)
    return app

"""The WSGI side of a request: when it started, its events written once, and a streamed body.

`RequestClock` wraps an app's WSGI callable and notes when each request arrived. It opens the
request's list of captured events (`bridge.pending`) before calling the app and ships it when
the app has returned, before the server sends a byte of the response (even when the app
raised). Flask sends
`request_finished` before the server iterates the response body, which is right for a body
already in memory, but a streamed one (a generator, `stream_with_context`, `send_file`) is
produced afterwards, usually once the request context is gone, and an exception it raises
reaches the server, never Flask. So the finished receiver `defer`s a streamed response's
events: the clock wraps the response iterable, and when the body is done (exhausted, failed,
or closed by the server: PEP 3333's `close()`) `request.finished` is emitted with a duration
that includes the body, the bytes that went out, and the request fields captured while the
context was alive; an exception raised by the body also becomes `request.exception`.

The clock refers to its app weakly: `app.wsgi_app` holding a bound method of the app would
be a reference cycle, and an app dropped by its last user would live on until a gc pass.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

from flask import Flask

from bridge.correlation import REQUEST_ID_KEY, header_key, incoming_request_id
from bridge.emitter import Emitter
from bridge.events import (
    REQUEST_START_KEY,
    FinishedResponse,
    request_duration_ms,
    status_level,
)
from bridge.pending import close_request, open_request
from bridge.workerstats import Publisher

__all__ = [
    "EventName",
    "FinishedResponse",
    "RequestClock",
    "StreamedRequest",
    "defer",
    "status_level",
]

EventName = tuple[str, str]  # (signal name, event name)
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_DEFERRED_KEY = "bridge.deferred"


class StreamedRequest:
    """What `request.finished` (and a body's `request.exception`) will say once the body of a
    streamed response is done; captured by the finished receiver while the request is alive."""

    __slots__ = (
        "context",
        "emitter",
        "environ",
        "exception",
        "finished",
        "length",
        "secrets",
        "status",
    )

    def __init__(
        self,
        emitter: Emitter,
        finished: EventName | None,
        exception: EventName | None,
        environ: Mapping[str, Any],
        status: int,
        length: int | None,
    ) -> None:
        self.emitter = emitter
        self.finished = finished
        self.exception = exception
        self.context = emitter.request_context()
        # Only while the request is there can its sensitive values be known, to be scrubbed
        # from the exception text of a body that fails later.
        self.secrets = emitter.request_secrets() if exception is not None else []
        self.environ = environ
        self.status = status
        self.length = length  # Content-Length, when the response declares one

    def failed(self, exc: BaseException) -> None:
        """The body raised `exc`: `request.exception`, with the request's own fields."""
        if self.exception is not None:
            emitter = self.emitter
            with emitter.guard:
                signal, event = self.exception
                fields = emitter.exception_fields(exc, self.secrets)
                emitter.emit(signal, event, "error", fields, context=self.context)

    def done(self, sent: int | None, status_sent: bool, failed: bool) -> None:
        """The body is done: `sent` bytes went out (None: not counted), the status line went out
        or not (before the first chunk a server answers a failure with a 500)."""
        if self.finished is None:
            return
        emitter = self.emitter
        with emitter.guard:
            status = 500 if failed and not status_sent else self.status
            fields: dict[str, Any] = {"http.response.status_code": status}
            duration = request_duration_ms(self.environ)
            if duration is not None:
                fields["duration_ms"] = duration
            size = self.length if sent is None else sent
            if size is not None:
                fields["http.response.body.size"] = size
            signal, event = self.finished
            emitter.emit(signal, event, status_level(status), fields, context=self.context)


def defer(environ: MutableMapping[str, Any], streamed: StreamedRequest) -> bool:
    """Hand a streamed response's events to the clock; False when no clock saw the request
    (a request context pushed by hand, a server bypassing `app.wsgi_app`): emit them now."""
    waiting: list[StreamedRequest] | None = environ.get(_DEFERRED_KEY)
    if waiting is None:
        return False
    waiting.append(streamed)
    return True


class _StreamedBody:
    """The response iterable of a streamed response, telling its requests when it is done:
    when its last declared byte is handed to the server, at its end, or at `close()`."""

    __slots__ = ("_app_iter", "_done", "_length", "_sent", "_started", "_waiting")

    def __init__(self, app_iter: Iterable[bytes], waiting: list[StreamedRequest]) -> None:
        self._app_iter = app_iter
        self._waiting = waiting
        lengths = {streamed.length for streamed in waiting}
        self._length = lengths.pop() if len(lengths) == 1 else None
        self._sent = 0
        self._started = False
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        length = self._length
        try:
            for chunk in self._app_iter:
                self._started = True
                self._sent += len(chunk)
                if length is not None and self._sent >= length:
                    # An error page's one chunk: the test client (and a server) may never ask
                    # for more, and the request is over once it is handed over.
                    self._finish()
                yield chunk
        except Exception as exc:
            self._fail(exc)
            raise
        self._finish()  # asked for more after the last chunk: every chunk was written

    def close(self) -> None:
        close = getattr(self._app_iter, "close", None)
        try:
            if close is not None:
                close()
        except Exception as exc:
            self._fail(exc)
            raise
        self._finish()

    def _fail(self, exc: BaseException) -> None:
        for streamed in self._waiting:
            streamed.failed(exc)
        self._finish(failed=True)

    def _finish(self, *, failed: bool = False) -> None:
        if self._done:
            return
        self._done = True
        for streamed in self._waiting:
            streamed.done(self._sent, self._started, failed)


def _hook_file_wrapper(app_iter: Any, waiting: list[StreamedRequest]) -> bool:
    """Keep a `wsgi.file_wrapper` as it is (the server may send it with sendfile) and learn
    that it is done from its `close()`; False when it cannot be hooked."""
    close = getattr(app_iter, "close", None)
    done: list[bool] = []

    def close_and_finish() -> None:
        try:
            if close is not None:
                close()
        finally:
            if not done:
                done.append(True)
                for streamed in waiting:
                    streamed.done(None, True, False)

    try:
        app_iter.close = close_and_finish
    except (AttributeError, TypeError):
        return False
    return True


def _echoing(
    start_response: Callable[..., Any], header: str, request_id: str
) -> Callable[..., Any]:
    """`start_response` that adds `header: request_id`, unless the app set that header."""
    lowered = header.lower()

    def start_with_id(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if not any(name.lower() == lowered for name, _ in headers):
            headers = [*headers, (header, request_id)]
        return start_response(status, headers, exc_info)

    return start_with_id


class RequestClock:
    """WSGI middleware: notes when each request arrived, and when a streamed body is done."""

    __slots__ = ("_app", "_echo", "_function", "_id_keys", "_stats", "_wsgi_app")

    def __init__(
        self,
        app: Flask,
        wsgi_app: WsgiApp,
        *,
        request_id_headers: Sequence[str] = ("X-Request-ID",),
        response_header: str = "X-Request-ID",
        stats: Publisher | None = None,
    ) -> None:
        self._app = weakref.ref(app)
        self._stats = stats  # started by the first request a process serves
        self._id_keys = tuple(header_key(name) for name in request_id_headers)
        self._echo = response_header
        function = getattr(wsgi_app, "__func__", None)
        if function is not None and getattr(wsgi_app, "__self__", None) is app:
            self._function: Callable[..., Iterable[bytes]] | None = function
            self._wsgi_app: WsgiApp | None = None  # the app's own method: called through _app
        else:
            self._function = None
            self._wsgi_app = wsgi_app  # another middleware: the user's to hold

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        environ[REQUEST_START_KEY] = time.perf_counter()
        stats = self._stats
        if stats is not None and not stats.running:
            stats.ensure_running()
        # A list, not a flag: middleware below may copy the environ, and the copy shares it.
        waiting: list[StreamedRequest] = []
        environ[_DEFERRED_KEY] = waiting
        # The request's events are collected while the app runs and written once it returned:
        # before the server sends the response, and before a streamed body starts.
        pending, token = open_request()
        request_id = incoming_request_id(environ, self._id_keys)
        environ[REQUEST_ID_KEY] = pending.request_id = request_id
        if self._echo:
            start_response = _echoing(start_response, self._echo, request_id)
        try:
            if self._wsgi_app is not None:
                app_iter = self._wsgi_app(environ, start_response)
            else:
                app = self._app()
                if app is None:
                    raise RuntimeError(
                        "the Flask app behind this WSGI callable was garbage collected"
                    )
                assert self._function is not None
                app_iter = self._function(app, environ, start_response)
        finally:
            close_request(pending, token)
        if not waiting:
            return app_iter
        file_wrapper = environ.get("wsgi.file_wrapper")
        if (
            isinstance(file_wrapper, type)
            and isinstance(app_iter, file_wrapper)
            and _hook_file_wrapper(app_iter, waiting)
        ):
            return app_iter
        return _StreamedBody(app_iter, waiting)

"""The http sink's connection to a collector: a total deadline, bounded replies, plain causes.

Three things `requests` does not do by itself, shared by `HttpTransport`
(`bridge.sinks.httptransport`) and the `flask bridge check` probe (`bridge.probes`):

- **A total deadline per request.** requests' timeouts bound each `recv`, so a collector
  trickling one byte per read timeout holds the delivery thread forever. `Deadline` watches
  every socket of one `GuardedAdapter` and shuts them down (from a thread of its own) when the
  request in flight outlives its deadline, or at once on `abort()` (the sink is closing). DNS
  resolution cannot be interrupted this way; the TCP connect is bounded by `timeout_connect`.
- **Bounded replies.** `read_reply` reads at most `REPLY_MAX_BYTES` of a reply body and closes
  the connection when more was left, so a 1 GiB error page costs 1 MiB and the next request
  never reads the rest as its own reply.
- **Failures named as such.** `failure_cause` says "TLS certificate verification failed
  (...)" or "DNS lookup failed for host X (...)" where the bare OS error would read
  `Operation not permitted (EPERM)` or `Unknown error -2`.

`origin` is how every message names a collector (no path, userinfo or query); `sink_secrets`
lists what a sink's configuration holds that must never be written anywhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import ProxyManager

from bridge.formats.base import Format
from bridge.redaction import DEFAULT_REDACT_TERMS, SensitiveKeys

__all__ = [
    "REPLY_MAX_BYTES",
    "Deadline",
    "GuardedAdapter",
    "failure_cause",
    "origin",
    "read_reply",
    "request_url",
    "sink_secrets",
    "with_default_path",
    "with_default_query",
]

# Generous for replies that itemise failures (an Elasticsearch bulk reply), yet bounded.
REPLY_MAX_BYTES = 1024 * 1024
READ_CHUNK = 64 * 1024

_EAI_NAMES = {getattr(socket, name): name for name in dir(socket) if name.startswith("EAI_")}


class Deadline:
    """Shuts the watched sockets down when the request in flight outlives its deadline.

    `start(seconds)` before a request and `finish()` after it (which says whether the deadline
    fired) belong to the delivery thread; `watch` and `forget` are called by the connections
    of a `GuardedAdapter`; `abort()` may come from any thread and is final: every socket
    watched then or later is shut down at once. The timer thread starts with the first request
    and ends with `close()`.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._due: float | None = None
        self._fired = False
        self._thread: threading.Thread | None = None
        self._closed = False
        self.aborted = False

    def start(self, seconds: float) -> None:
        with self._lock:
            self._due = time.monotonic() + seconds
            self._fired = False
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name=f"bridge-deadline-{self._name}", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def finish(self) -> bool:
        """The request is over; True when the deadline had fired (its sockets are shut)."""
        with self._lock:
            self._due = None
            return self._fired

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
            if self.aborted:
                _shut(sock)

    def forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def abort(self) -> None:
        """Cut the request in flight (if any) and every later one: the sink is closing."""
        with self._lock:
            self.aborted = True
            for sock in list(self._sockets):
                _shut(sock)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
            self._wake.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)

    def _run(self) -> None:
        with self._lock:
            while not self._closed:
                due = self._due
                if due is None:
                    self._wake.wait()
                    continue
                remaining = due - time.monotonic()
                if remaining > 0:
                    self._wake.wait(remaining)
                    continue
                self._due = None
                self._fired = True
                for sock in list(self._sockets):
                    _shut(sock)


def _shut(sock: socket.socket) -> None:
    """Shut a socket down (lock held): a blocked `recv` returns at once. Its owner closes it."""
    # The plain socket method: SSLSocket.shutdown would unwrap under the reader's feet.
    with contextlib.suppress(OSError):  # already closed, or never connected
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Guarded(HTTPConnection):
    """A connection whose sockets `deadline` watches (set on the per-adapter subclass)."""

    deadline: Deadline
    _handshake: socket.socket | None = None

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        # Wrapping for TLS detaches `sock` before the handshake: watch a duplicate, which
        # reaches the same connection, until `connect` is over.
        self._handshake = sock.dup()
        self.deadline.watch(self._handshake)
        return sock

    def connect(self) -> None:
        try:
            super().connect()
        except OSError as exc:
            _close_orphaned_tls(exc)
            raise
        finally:
            handshake, self._handshake = self._handshake, None
            if handshake is not None:
                self.deadline.forget(handshake)
                handshake.close()
        if self.sock is not None:
            self.deadline.watch(self.sock)

    def close(self) -> None:
        if self.sock is not None:
            self.deadline.forget(self.sock)
        super().close()


def _close_orphaned_tls(exc: BaseException) -> None:
    """Close the TLS socket a failed wrap made and dropped.

    When the collector resets the connection between connect and handshake (it is restarting,
    its backlog is dropped), CPython's `SSLSocket` constructor raises without closing the
    socket it made; freed later, it says so with a ResourceWarning in whatever code runs then.
    """
    tb = exc.__traceback__
    while tb is not None:
        made = tb.tb_frame.f_locals.get("self")
        if isinstance(made, ssl.SSLSocket):
            made.close()
        tb = tb.tb_next


def _guarded_pools(deadline: Deadline) -> dict[str, type[HTTPConnectionPool]]:
    plain = type("GuardedHTTPConnection", (_Guarded,), {"deadline": deadline})
    tls = type("GuardedHTTPSConnection", (_Guarded, HTTPSConnection), {"deadline": deadline})
    return {
        "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": plain}),
        "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": tls}),
    }


class GuardedAdapter(HTTPAdapter):
    """`HTTPAdapter` whose connections (direct or through an HTTP proxy) `deadline` watches."""

    def __init__(self, deadline: Deadline, **kwargs: Any) -> None:
        self.deadline = deadline
        self._pools = _guarded_pools(deadline)
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pools

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, ProxyManager):  # not SOCKS, which has pools of its own
            manager.pool_classes_by_scheme = self._pools
        return manager


def read_reply(response: requests.Response, limit: int = REPLY_MAX_BYTES) -> bytes:
    """At most `limit` bytes of a streamed reply's body, decoded.

    When more was left, the connection is closed rather than drained (and never reused), so
    the next request cannot read the rest as its reply. Call `response.close()` afterwards.
    """
    parts: list[bytes] = []
    size = 0
    for chunk in response.iter_content(READ_CHUNK):
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            response.raw.close()  # unread bytes: this connection is done
            break
    return b"".join(parts)[:limit]


def origin(url: str) -> str:
    """`scheme://host[:port]` of `url`: how messages name the collector (no path, no userinfo)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and every exception it wraps (causes, contexts, `reason`s and arguments)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for nested in (getattr(current, "reason", None), current.__cause__, current.__context__):
            if isinstance(nested, BaseException):
                todo.append(nested)
        todo.extend(arg for arg in current.args if isinstance(arg, BaseException))


def failure_cause(exc: BaseException, host: str) -> str:
    """Why a request to `host` failed, in words an operator can act on (never a URL).

    "TLS certificate verification failed (reason)", "TLS handshake failed (reason)",
    "DNS lookup failed for host X (reason, EAI_NAME)", "connection failed: strerror (ENAME)",
    else "connection failed: ExceptionType".
    """
    causes = list(_causes(exc))
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or cause.reason or "unknown reason"
            return f"TLS certificate verification failed ({reason})"
    for cause in causes:
        if isinstance(cause, socket.gaierror):
            name = _EAI_NAMES.get(cause.errno, str(cause.errno))
            return f"DNS lookup failed for host {host} ({cause.strerror}, {name})"
    for cause in causes:
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake failed ({cause.reason or type(cause).__name__})"
    for cause in causes:
        if isinstance(cause, OSError) and cause.errno and cause.errno > 0:
            name = errno.errorcode.get(cause.errno, str(cause.errno))
            return f"connection failed: {os.strerror(cause.errno)} ({name})"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS handshake failed"
    return f"connection failed: {type(exc).__name__}"


def sink_secrets(url: str, headers: Mapping[str, str]) -> list[str]:
    """What a sink's configuration holds that is secret: every header value, the URL's
    password and the values of its sensitive query parameters (`?api_key=...`)."""
    parts = urlsplit(url)
    secrets = [*headers.values()]
    try:
        password = parts.password
    except ValueError:
        password = None
    if password:
        secrets.append(password)
    sensitive = SensitiveKeys(DEFAULT_REDACT_TERMS)
    secrets.extend(v for k, v in parse_qsl(parts.query, keep_blank_values=True) if sensitive(k))
    return [s for s in secrets if s]


def request_url(url: str, fmt: Format) -> str:
    """Where a sink's requests (and its probe) go: the configured `url`, with the format's
    documented path and query parameters wherever the URL has none of its own."""
    return with_default_query(with_default_path(url, fmt.default_path), fmt.default_query)


def with_default_path(url: str, path: str) -> str:
    """`url` as the user gave it, or with a format's documented `path` when it has none
    (`http://loki:3100` -> `http://loki:3100/loki/api/v1/push`); its query is kept."""
    parts = urlsplit(url)
    if not path or parts.path not in ("", "/"):
        return url
    return urlunsplit(parts._replace(path=path))


def with_default_query(url: str, query: Mapping[str, str]) -> str:
    """`url` with a format's query parameters (`Format.default_query`, optional: Elasticsearch's
    `filter_path`) added, each only where the URL has no parameter of that name: the URL the
    user gives is used as is."""
    if not query:
        return url
    parts = urlsplit(url)
    present = {name for name, _ in parse_qsl(parts.query, keep_blank_values=True)}
    extra = urlencode({k: v for k, v in query.items() if k not in present}, safe=",*")
    if not extra:
        return url
    return urlunsplit(parts._replace(query=f"{parts.query}&{extra}" if parts.query else extra))

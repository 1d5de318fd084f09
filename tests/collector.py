"""A real HTTP log collector for tests: `ThreadingHTTPServer` on 127.0.0.1, told what to answer.

    with Collector() as collector:
        collector.plan(Reply(503, headers={"Retry-After": "0"}), Reply(200))
        ... point an http sink at collector.url ...
        assert collector.wait_for(lambda c: len(c.event_ids()) == 10)

Each request takes the next planned `Reply` (the `always` reply, 200 unless set, once the plan
is used up). A reply can hold the response back (`stall`, until the client gives up or the
collector stops), trickle it one byte at a time (`trickle`), stream a huge chunked body that
never exists in memory (`stream_bytes`), reset the connection, or return any status and
headers. `down()` closes the port (connections are refused) and `up()` opens it again on the
same port; `Collector(tls=context)` serves HTTPS. Received bodies are gunzipped and split into
events (NDJSON or a JSON array), or read by `Collector(decode=...)` for a platform's own body.
Stopping always shuts every connection and joins every handler thread, so no socket or thread
outlives a test.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import ssl
import struct
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["Collector", "Received", "Reply"]


@dataclass(frozen=True)
class Reply:
    """What the collector does with one request."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    record: bool | None = None  # count the events as received (default: for a 2xx status)
    stall: float = 0.0  # hold the reply this long (the client's read timeout fires first)
    reset: bool = False  # drop the connection with a TCP reset instead of replying
    trickle: float = 0.0  # send the reply one byte per `trickle` seconds, never finishing
    trickle_body: bool = False  # trickle only the body (status line and headers at once)
    stream_bytes: int = 0  # a chunked body this long (`body` ignored), written as read


@dataclass
class Received:
    """One request as the collector saw it."""

    path: str
    headers: dict[str, str]
    raw: bytes
    body: bytes
    events: list[dict[str, Any]]
    reply: Reply
    client_port: int = 0  # one port per connection: keep-alive reuses it
    sent: int = 0  # reply bytes the collector managed to write (set when it is done)
    done: bool = False  # the collector finished with this request (replied, or gave up)

    @property
    def recorded(self) -> bool:
        """Does this request count as delivered (a 2xx reply, unless the plan said otherwise)?"""
        if self.reply.record is not None:
            return self.reply.record
        return 200 <= self.reply.status < 300 and not self.reply.reset


Decoder = Callable[[dict[str, str], bytes], list[dict[str, Any]]]


def split_events(body: bytes, content_type: str) -> list[dict[str, Any]]:
    """The events of an NDJSON body or a JSON-array body."""
    if content_type.startswith("application/json"):
        parsed = json.loads(body)
        assert isinstance(parsed, list)
        return parsed
    return [json.loads(line) for line in body.splitlines() if line.strip()]


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, port: int, collector: Collector, tls: ssl.SSLContext | None = None) -> None:
        self.collector = collector
        self.tls = tls
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        if self.tls is None:
            return sock, address
        try:
            return self.tls.wrap_socket(sock, server_side=True), address
        except OSError as exc:
            # A client that reset the connection before it was accepted (a sink cut short):
            # CPython's SSLSocket constructor then raises without closing the SSLSocket it
            # made, and its ResourceWarning would fail whichever test runs when it is freed.
            tb = exc.__traceback__
            while tb is not None:
                made = tb.tb_frame.f_locals.get("self")
                if isinstance(made, ssl.SSLSocket):
                    made.close()
                tb = tb.tb_next
            sock.close()
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self.connections_lock:
            sockets = list(self.connections)
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed by its handler
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    sent = 0

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        collector = self.server.collector
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        reply = collector.next_reply()
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
        if collector.decode is not None:
            events = collector.decode(headers, body)
        else:
            events = split_events(body, headers.get("content-type", ""))
        received = Received(self.path, headers, raw, body, events, reply, self.client_address[1])
        collector.record(received)
        self.sent = 0
        try:
            self._reply(reply, collector)
        except OSError:  # the client went away (or the collector stopped): so be it
            self.close_connection = True
        finally:
            collector.finish(received, self.sent)

    def _reply(self, reply: Reply, collector: Collector) -> None:
        """Answer as `reply` says, counting the body bytes written in `self.sent`."""
        if reply.reset:
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.request.close()
            self.close_connection = True
            return
        if reply.trickle:
            self._trickle(reply, collector)
            return
        if reply.stall:
            collector.stopped.wait(reply.stall)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.stream_bytes:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._stream(reply.stream_bytes, collector)
            return
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)
        self.sent = len(reply.body)

    def _trickle(self, reply: Reply, collector: Collector) -> None:
        """Status line, headers and a body promised to be long, one byte at a time."""
        self.close_connection = True
        head = f"HTTP/1.1 {reply.status} Slow\r\nContent-Length: 1000000\r\n\r\n".encode()
        written = 0
        if reply.trickle_body:
            self.wfile.write(head)
            written = len(head)
        while not collector.stopped.is_set():
            self.wfile.write(head[written : written + 1] or b"x")
            self.wfile.flush()
            written += 1
            self.sent = max(0, written - len(head))
            collector.stopped.wait(reply.trickle)

    def _stream(self, size: int, collector: Collector) -> None:
        """`size` bytes of chunked body from one reused block: it never exists whole."""
        block = b"x" * 65536
        while self.sent < size and not collector.stopped.is_set():
            part = block[: size - self.sent]
            self.wfile.write(b"%x\r\n%b\r\n" % (len(part), part))
            self.sent += len(part)
        self.wfile.write(b"0\r\n\r\n")


class Collector:
    """A threaded HTTP collector on 127.0.0.1 that records events and follows a plan."""

    def __init__(
        self,
        *,
        start_down: bool = False,
        tls: ssl.SSLContext | None = None,
        decode: Decoder | None = None,
    ) -> None:
        self.decode = decode  # a platform's body (its headers lower-cased) -> its events
        self._lock = threading.RLock()  # reentrant: wait_for's predicate reads under it
        self._changed = threading.Condition(self._lock)
        self._plan: deque[Reply] = deque()
        self._always = Reply()
        self._tls = tls
        self.received: list[Received] = []
        self.stopped = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._placeholder: socket.socket | None = None
        self.port = 0
        if start_down:
            self.down()
        else:
            self.up()

    @property
    def url(self) -> str:
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/ingest"

    # -- the plan -----------------------------------------------------------------------------

    def plan(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order."""
        with self._lock:
            self._plan.extend(replies)

    def always(self, reply: Reply) -> None:
        """Answer every request after the plan like this (instead of 200)."""
        with self._lock:
            self._always = reply

    def next_reply(self) -> Reply:
        with self._lock:
            return self._plan.popleft() if self._plan else self._always

    def record(self, received: Received) -> None:
        with self._changed:
            self.received.append(received)
            self._changed.notify_all()

    def finish(self, received: Received, sent: int) -> None:
        with self._changed:
            received.sent, received.done = sent, True
            self._changed.notify_all()

    # -- what arrived -------------------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        """Events of every recorded request, in arrival order (duplicates included)."""
        with self._lock:
            return [e for r in self.received if r.recorded for e in r.events]

    def event_ids(self) -> list[str]:
        return [str(e["event_id"]) for e in self.events()]

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def wait_for(self, predicate: Callable[[Collector], bool], timeout: float = 20.0) -> bool:
        """Wait until `predicate(self)` holds (checked after each request); False at timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    # -- up and down --------------------------------------------------------------------------

    def up(self) -> None:
        """Listen (again, on the same port once it has one)."""
        if self._server is not None:
            return
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        self.stopped.clear()
        self._server = _Server(self.port, self, self._tls)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def down(self) -> None:
        """Close the port: connections are refused until `up()`. Open connections are cut."""
        self._stop_server()
        if self._placeholder is None:
            # Bound but not listening: the port stays ours and connecting to it is refused.
            self._placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._placeholder.bind(("127.0.0.1", self.port))
            self.port = self._placeholder.getsockname()[1]

    def _stop_server(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self.stopped.set()
        server.shutdown()
        server.drop_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self._stop_server()
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None

    def __enter__(self) -> Collector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

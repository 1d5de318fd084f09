"""The `http` sink: event lines batched to a log collector over HTTP(S).

`HttpSink` wires the pieces: a wire format (`bridge.formats`), the `HttpTransport` below (one
keep-alive `requests.Session`, gzip, timeouts, TLS, no redirects, status codes mapped onto
`RetryableError` / `FatalError`), the delivery engine (queue or spool, batching, retry,
dead-letter) and the sink's counters. Everything that can be checked is checked when the sink
is built, so a mistake is a `ConfigError` at `init_app`, not a failure at send time.

Secrets: header values (and a password in the URL) never appear in an error message, in
`stats()`, on stderr or in a dead-letter record; messages name the collector by its origin
(scheme, host, port) only. Redirects are never followed, so credentials never go to another
host: a 3xx reply is refused with a message saying to configure the final URL.
"""

from __future__ import annotations

import errno
import os
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InsecureRequestWarning

from bridge.config import HttpSinkSettings
from bridge.delivery.deadletter import DeadLetter
from bridge.delivery.engine import DeliveryEngine
from bridge.delivery.retry import RETRY_STATUSES, parse_retry_after
from bridge.delivery.spool import Spool
from bridge.delivery.transport import ALL_DELIVERED, Outcome
from bridge.diagnostics import report
from bridge.errors import ConfigError, FatalError, RetryableError
from bridge.formats import Format, get_format
from bridge.sinks.base import SinkStats

__all__ = ["HttpSink", "HttpTransport"]

GZIP_LEVEL = 1  # ~5x on JSON lines at a fraction of level 6's CPU, on the app's own cores
EXCERPT_BYTES = 512
USER_AGENT = "flask-signal-bridge"


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


class HttpTransport:
    """Sends one batch per request on a keep-alive session; maps replies onto the error types.

    Requests are prepared here rather than through `Session.post`, which would scan the whole
    environment for proxies and `.netrc` on every call (a third of a request's CPU): proxies
    come from the environment once, at construction; credentials only from `headers` or the
    URL. Session cookies (a load balancer's sticky session) are kept.
    """

    def __init__(self, settings: HttpSinkSettings, fmt: Format) -> None:
        self._settings = settings
        self._format = fmt
        self._url = settings.url
        self._origin = origin(settings.url)
        self._timeout = (settings.timeout_connect, settings.timeout_read)
        # Passed on every request, decided once: requests would let REQUESTS_CA_BUNDLE override
        # a configured `ca_bundle`, and it rescans the environment for proxies on every call.
        self._verify: bool | str = settings.verify
        if settings.verify and settings.ca_bundle:
            self._verify = settings.ca_bundle
        elif settings.verify:
            env_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            self._verify = env_bundle or True
        self._proxies = requests.utils.get_environ_proxies(settings.url)
        self._cert: str | tuple[str, str] | None = settings.client_cert
        if settings.client_cert and settings.client_key:
            self._cert = (settings.client_cert, settings.client_key)
        password = urlsplit(settings.url).password
        secrets = [*settings.headers.values(), *([password] if password else [])]
        self._secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))
        self._inherited: list[requests.Session] = []  # a parent's sessions, never closed here
        self._session = self._new_session()

    def _new_session(self) -> requests.Session:
        s = self._settings
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = USER_AGENT
        session.headers.update(s.headers)
        self._headers = dict(session.headers)
        return session

    def send(self, lines: Sequence[bytes]) -> Outcome:
        """POST one batch. Raises RetryableError (timeouts, connection errors, 408/429/5xx) or
        FatalError (3xx, other 4xx); returns which items a 2xx reply refused, if any."""
        payload = self._format.encode(lines, self._settings)
        body = payload.body
        headers = {**self._headers, "Content-Type": payload.content_type, **payload.headers}
        if self._settings.gzip and payload.compressible:
            packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
            body = packer.compress(body) + packer.flush()
            headers["Content-Encoding"] = "gzip"
        try:
            request = requests.PreparedRequest()
            request.prepare(
                method="POST",
                url=self._url,
                headers=headers,
                data=body,
                cookies=self._session.cookies,  # sticky-session cookies of a load balancer
            )
            response = self._session.send(
                request,
                timeout=self._timeout,
                verify=self._verify,
                cert=self._cert,
                proxies=self._proxies,
                allow_redirects=False,
                stream=False,
            )
            content = response.content
        except requests.Timeout as exc:
            phase = "connect" if isinstance(exc, requests.ConnectTimeout) else "read"
            raise RetryableError(f"{self._origin}: {phase} timed out") from None
        except requests.RequestException as exc:
            raise RetryableError(f"{self._origin}: {self._describe(exc)}") from None
        status = response.status_code
        if 200 <= status < 300:
            failures = self._format.interpret(status, content)
            if not failures.retry and not failures.reject:
                return ALL_DELIVERED
            detail = self._scrub(failures.detail)
            return Outcome(failures.retry, failures.reject, status, detail)
        excerpt = self._scrub(content[:EXCERPT_BYTES].decode("utf-8", "replace"))
        if status in RETRY_STATUSES or 500 <= status < 600:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            raise RetryableError(
                f"{self._origin}: HTTP {status}", status=status, body=excerpt, retry_after=wait
            )
        if 300 <= status < 400:
            target = (
                origin(response.headers.get("Location", ""))
                if "Location" in response.headers
                else "?"
            )
            raise FatalError(
                f"{self._origin}: HTTP {status} redirect to {target} not followed "
                "(redirects could leak credentials); set `url` to the final address",
                status=status,
                body=excerpt,
            )
        raise FatalError(
            f"{self._origin}: HTTP {status}, batch refused", status=status, body=excerpt
        )

    def _describe(self, exc: BaseException) -> str:
        """A short cause for a connection failure: the OS error if there is one, never the URL."""
        seen: set[int] = set()
        todo: list[BaseException] = [exc]
        while todo:
            current = todo.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            if isinstance(current, OSError) and current.errno:
                name = errno.errorcode.get(current.errno, str(current.errno))
                return f"connection failed: {os.strerror(current.errno)} ({name})"
            for nested in (
                getattr(current, "reason", None),
                current.__cause__,
                current.__context__,
            ):
                if isinstance(nested, BaseException):
                    todo.append(nested)
            todo.extend(arg for arg in current.args if isinstance(arg, BaseException))
        if isinstance(exc, requests.exceptions.SSLError):
            return "TLS handshake or certificate verification failed"
        return f"connection failed: {type(exc).__name__}"

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[REDACTED]")
        return text

    def close(self) -> None:
        self._session.close()

    def after_fork_in_child(self) -> None:
        """The parent's pooled connections are the parent's: start a new session, and keep
        the old one referenced (closing it here could disturb the parent's TLS sessions)."""
        self._inherited.append(self._session)
        self._session = self._new_session()


def _check(settings: HttpSinkSettings) -> None:
    """ConfigError for what would otherwise fail at send time."""
    parts = urlsplit(settings.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("url", origin(settings.url), "an http:// or https:// URL with a host")
    for key in ("ca_bundle", "client_cert", "client_key"):
        value = getattr(settings, key)
        if value is not None and not Path(value).is_file():
            raise ConfigError(key, value, "the path of an existing file")
    if settings.client_key and not settings.client_cert:
        raise ConfigError("client_key", settings.client_key, "`client_cert` to be set as well")
    for name, value in settings.headers.items():
        if any(c in value for c in "\r\n") or any(c in name for c in "\r\n: "):
            raise ConfigError(f"headers.{name}", "[hidden]", "a header without line breaks")


def _dead_letter_path(settings: HttpSinkSettings) -> Path | None:
    if settings.dead_letter_path is not None:
        return settings.dead_letter_path
    if settings.spool_dir is not None:
        return settings.spool_dir / "dead-letter.jsonl"
    return None


class HttpSink:
    """Ships event lines to an HTTP log collector in batches, from a background thread.

    `submit` appends to a bounded memory queue (or, with `spool_dir`, to the disk spool with one
    write) and never touches the network. Delivery is best effort without a spool and at least
    once with one. Raises ConfigError at construction for an unimplemented `format`, a bad URL,
    missing TLS files or a spool directory it cannot use; its key is prefixed with
    `config_key` (such as "sinks[2]") when given.
    """

    def __init__(self, settings: HttpSinkSettings, *, config_key: str | None = None) -> None:
        try:
            _check(settings)
            self._format = get_format(settings.format)
        except ConfigError as exc:
            if config_key is None:
                raise
            raise ConfigError(f"{config_key}.{exc.key}", exc.value, exc.expected) from None
        self.name = settings.name
        self.settings = settings
        self._stats = SinkStats()
        if not settings.verify:
            warnings.filterwarnings("ignore", category=InsecureRequestWarning)
            report(f"insecure-{self.name}", f"sink {self.name}: TLS verification is off")
        self._spool: Spool | None = None
        if settings.spool_dir is not None:
            try:
                self._spool = Spool(
                    settings.spool_dir,
                    max_bytes=settings.spool_max_bytes,
                    fsync=settings.spool_fsync,
                    event_ttl=settings.event_ttl,
                    stats=self._stats,
                )
            except OSError as exc:
                key = f"{config_key}.spool_dir" if config_key else "spool_dir"
                raise ConfigError(
                    key, str(settings.spool_dir), f"a usable directory ({exc.strerror})"
                ) from None
        dead_letter = DeadLetter(
            _dead_letter_path(settings), stats=self._stats, sink_name=self.name
        )
        self._transport = HttpTransport(settings, self._format)
        self._engine = DeliveryEngine(
            settings, self._transport, stats=self._stats, dead_letter=dead_letter, spool=self._spool
        )
        self.submit = self._engine.submit

    def flush(self, timeout: float) -> bool:
        """Wait until every accepted line is acknowledged by the collector (or dead-lettered)."""
        return self._engine.flush(timeout)

    def close(self, timeout: float) -> bool:
        """Flush within `timeout`, then stop; leftovers stay in the spool or count as dropped."""
        return self._engine.close(timeout)

    def stats(self) -> dict[str, Any]:
        spool_bytes = self._spool.pending_bytes() if self._spool is not None else 0
        self._stats.enqueued = self._engine.accepted()  # counted without a lock on the hot path
        snapshot = self._stats.snapshot(
            queue_depth=self._engine.queue_depth(), spool_bytes=spool_bytes
        )
        snapshot.update(type="http", format=self._format.name, collector=origin(self.settings.url))
        return snapshot

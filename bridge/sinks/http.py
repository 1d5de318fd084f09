"""The `http` sink: event lines batched to a log collector over HTTP(S).

`HttpSink` wires the pieces: a wire format (`bridge.formats`), the `HttpTransport` below (one
keep-alive `requests.Session`, gzip, timeouts, TLS, no redirects, status codes mapped onto
`RetryableError` / `FatalError`), the delivery engine (queue or spool, batching, retry,
dead-letter) and the sink's counters. Everything that can be checked is checked when the sink
is built, so a mistake is a `ConfigError` at `init_app`, not a failure at send time.

Secrets: header values (and the credential after `Bearer`), a password in the URL and the
values of sensitive query parameters (`?api_key=`) never appear in an error message, in
`stats()`, on stderr or in a dead-letter record, even where a collector echoes them inside
its reply; messages name the collector by its origin (scheme, host, port) only. Redirects are
never followed, so credentials never go to another host: a 3xx reply is refused with a
message saying to configure the final URL. The connection itself (a total deadline per
request, at most 1 MiB of any reply read, TLS and DNS failures named as such) is in
`bridge.sinks.httpwire`.
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Sequence
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import HTTPError, InsecureRequestWarning

from bridge.config import HttpSinkSettings
from bridge.delivery.deadletter import DeadLetter
from bridge.delivery.engine import DeliveryEngine
from bridge.delivery.retry import RETRY_STATUSES, parse_retry_after
from bridge.delivery.spool import Spool
from bridge.delivery.transport import ALL_DELIVERED, Outcome
from bridge.diagnostics import report
from bridge.errors import ConfigError, FatalError, RetryableError
from bridge.formats import Format, get_format
from bridge.redaction import Scrubber, register_secrets
from bridge.sinks.httpwire import (
    Deadline,
    GuardedAdapter,
    failure_cause,
    origin,
    read_reply,
    sink_secrets,
)
from bridge.stats import SinkStats

__all__ = ["HttpSink", "HttpTransport"]

GZIP_LEVEL = 1  # ~5x on JSON lines at a fraction of level 6's CPU, on the app's own cores
EXCERPT_BYTES = 512
USER_AGENT = "flask-signal-bridge"


class HttpTransport:
    """Sends one batch per request on a keep-alive session; maps replies onto the error types.

    Requests are prepared here rather than through `Session.post`, which would scan the whole
    environment for proxies and `.netrc` on every call (a third of a request's CPU): proxies
    come from the environment once, at construction; credentials only from `headers` or the
    URL. Session cookies (a load balancer's sticky session) are kept. Each request has a total
    deadline of `timeout_connect + timeout_read` (reply included), and reads at most
    `REPLY_MAX_BYTES` of the reply.
    """

    def __init__(self, settings: HttpSinkSettings, fmt: Format) -> None:
        self._settings = settings
        self._format = fmt
        self._url = settings.url
        self._origin = origin(settings.url)
        self._host = urlsplit(settings.url).hostname or "?"
        self._timeout = (settings.timeout_connect, settings.timeout_read)
        self._total = settings.timeout_connect + settings.timeout_read
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
        self._scrub = Scrubber(sink_secrets(settings.url, settings.headers))
        self._inherited: list[requests.Session] = []  # a parent's sessions, never closed here
        self._session = self._new_session()

    def _new_session(self) -> requests.Session:
        s = self._settings
        self._deadline = Deadline(s.name)
        session = requests.Session()
        adapter = GuardedAdapter(self._deadline, pool_connections=1, pool_maxsize=1, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = USER_AGENT
        session.headers.update(s.headers)
        self._headers = dict(session.headers)
        return session

    def send(self, lines: Sequence[bytes]) -> Outcome:
        """POST one batch. Raises RetryableError (timeouts, connection errors, the total
        deadline, 408/429/5xx) or FatalError (3xx, other 4xx); returns which items a 2xx reply
        refused, if any."""
        payload = self._format.encode(lines, self._settings)
        body = payload.body
        headers = {**self._headers, "Content-Type": payload.content_type, **payload.headers}
        if self._settings.gzip and payload.compressible:
            packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
            body = packer.compress(body) + packer.flush()
            headers["Content-Encoding"] = "gzip"
        deadline = self._deadline
        if deadline.aborted:
            raise RetryableError(f"{self._origin}: not sent, the sink is closing")
        deadline.start(self._total)
        failure: BaseException | None = None
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
                stream=True,
            )
            try:
                content = read_reply(response)
            finally:
                response.close()
        except (requests.RequestException, HTTPError, HTTPException, OSError) as exc:
            failure = exc
        finally:
            expired = deadline.finish()
        if failure is not None:
            raise self._unsent(failure, expired) from None
        return self._outcome(response, content)

    def _unsent(self, exc: BaseException, expired: bool) -> RetryableError:
        """The error for a request that got no complete reply."""
        if self._deadline.aborted:
            cause = "request cut short: the sink is closing"
        elif expired:
            cause = (
                f"no complete reply within {self._total:g} s "
                "(timeout_connect + timeout_read); the collector is too slow"
            )
        elif isinstance(exc, requests.Timeout):
            phase = "connect" if isinstance(exc, requests.ConnectTimeout) else "read"
            cause = f"{phase} timed out"
        else:
            cause = failure_cause(exc, self._host)
        return RetryableError(self._scrub(f"{self._origin}: {cause}"))

    def _outcome(self, response: requests.Response, content: bytes) -> Outcome:
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

    def abort(self) -> None:
        """Cut the request in flight, if any, and refuse later ones (close gave up waiting)."""
        self._deadline.abort()

    def close(self) -> None:
        self._session.close()
        self._deadline.close()

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
        # Every stderr line of the bridge hides them from now on (collectors echo tokens).
        register_secrets(sink_secrets(settings.url, settings.headers))
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
        """Flush within `timeout`, then stop (cutting a send still in flight, so this returns
        within about a second more); leftovers stay in the spool or count as dropped."""
        return self._engine.close(timeout)

    def stats(self) -> dict[str, Any]:
        spool_bytes = self._spool.pending_bytes() if self._spool is not None else 0
        self._stats.publish_progress(enqueued=self._engine.accepted())
        snapshot = self._stats.snapshot(
            queue_depth=self._engine.queue_depth(), spool_bytes=spool_bytes
        )
        snapshot.update(type="http", format=self._format.name, collector=origin(self.settings.url))
        return snapshot

"""The http sink's transport: one batch per POST, every reply read into a typed outcome.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

`HttpTransport` sends what the wire format (`bridge.formats`) encodes, on one keep-alive
`requests.Session` (gzip, timeouts, TLS, no redirects), and answers the engine with a
`bridge.outcome.Outcome`: every failure to get a complete reply is `RetryLater`; a 2xx reply
is read by the format (`Format.interpret`), any other by the format's `StatusPolicy`. No
status number is decided anywhere else. The connection itself (a total deadline per request,
at most 1 MiB of any reply read, TLS and DNS failures named as such) is in
`bridge.sinks.httpwire`.

Secrets: header values, a password in the URL and sensitive query parameters never appear in
an outcome's message or excerpt, even where a collector echoes them inside its reply;
messages name the collector by its origin (scheme, host, port) only.
"""

from __future__ import annotations

import os
import traceback
import zlib
from collections.abc import Sequence
from dataclasses import replace
from http.client import HTTPException
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import HTTPError

from bridge.config import HttpSinkSettings
from bridge.delivery.retry import parse_retry_after
from bridge.formats import Format
from bridge.outcome import Delivered, Outcome, PartlyDelivered, Rejected, RetryLater, Split
from bridge.redaction import Scrubber
from bridge.sinks.httpwire import (
    Deadline,
    GuardedAdapter,
    failure_cause,
    origin,
    read_reply,
    request_url,
    sink_secrets,
)

__all__ = ["HttpTransport"]

GZIP_LEVEL = 1  # ~5x on JSON lines at a fraction of level 6's CPU, on the app's own cores
EXCERPT_BYTES = 512
USER_AGENT = "flask-signal-bridge"


class HttpTransport:
    """Sends one batch per request on a keep-alive session; reads each reply into an outcome.

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
        self._policy = fmt.policy
        self._url = request_url(settings.url, fmt)
        self._max_body = fmt.limits.max_body_bytes
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
        self._scrub = Scrubber([*sink_secrets(settings.url, settings.headers), *fmt.secrets()])
        # Scrubbed before it is cut: a secret echoed across the excerpt's end is hidden whole.
        longest = max(map(len, self._scrub.secrets), default=0)
        self._excerpt_window = EXCERPT_BYTES + 4 * longest  # up to 4 UTF-8 bytes a character
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
        """POST one batch. `RetryLater` when no complete reply came (timeouts, connection
        errors, the total deadline, the sink closing); else what the reply means."""
        try:
            payload = self._format.encode(lines)
        except Exception as exc:  # a line the format cannot take (nested past its depth)
            return self._unencodable(exc, len(lines))
        body = payload.body
        size = len(body) if payload.raw_size is None else payload.raw_size
        if self._max_body is not None and size > self._max_body:
            return self._too_large(len(lines), size)
        headers = {**self._headers, "Content-Type": payload.content_type, **payload.headers}
        if self._settings.gzip and payload.compressible:
            packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
            body = packer.compress(body) + packer.flush()
            headers["Content-Encoding"] = "gzip"
        deadline = self._deadline
        if deadline.aborted:
            return RetryLater(f"{self._origin}: not sent, the sink is closing")
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
            return self._unsent(failure, expired)
        return self._outcome(response, content, len(lines))

    def _too_large(self, events: int, size: int) -> Split:
        """A body over the platform's limit is never sent: split the batch (the engine
        dead-letters one event that is still too large as `too_large`, as after a 413)."""
        return Split(
            f"{self._origin}: a request of {events} events would be {size} bytes, over the "
            f"{self._format.name} limit of {self._max_body} bytes"
        )

    def _unencodable(self, exc: Exception, events: int) -> Split | Rejected:
        """The format raised on the batch (nothing was sent): halve it until the line it trips
        on is alone, so only that one is dead-lettered, never the events batched with it."""
        where = traceback.extract_tb(exc.__traceback__)[-1]
        reason = (
            f"{self._origin}: {self._format.name} could not encode {events} events "
            f"({type(exc).__name__} at {where.name}:{where.lineno})"
        )
        if events > 1:
            return Split(reason)
        return Rejected(reason, drop_reason="internal_error")

    def _unsent(self, exc: BaseException, expired: bool) -> RetryLater:
        """The outcome of a request that got no complete reply."""
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
        return RetryLater(self._scrub(f"{self._origin}: {cause}"))

    def _outcome(self, response: requests.Response, content: bytes, events: int) -> Outcome:
        status = response.status_code
        if self._policy.accepted(status):
            outcome = self._format.interpret(status, content)
            if isinstance(outcome, PartlyDelivered):
                outcome = outcome.for_batch(events)  # only the transport knows the batch size
            if isinstance(outcome, PartlyDelivered | Delivered) and outcome.detail:
                return replace(outcome, detail=self._scrub(outcome.detail))  # it may quote us
            return outcome
        reply = response.headers
        return self._policy.classify(
            status,
            where=self._origin,
            body=self._scrub(content[: self._excerpt_window].decode("utf-8", "replace"))[
                :EXCERPT_BYTES
            ],
            retry_after=parse_retry_after(reply.get("Retry-After")),
            location=origin(reply["Location"]) if "Location" in reply else "?",
            events=events,
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

"""Probes for `flask bridge check`: can each configured sink actually be written to?

A probe touches the outside world as lightly as it can (one temporary file, one HEAD request)
and returns `(ok, message)`. Messages never show a header value, a URL's credentials or its
query string (they end up in CI logs), and name TLS and DNS failures as such ("TLS certificate
verification failed (...)", "DNS lookup failed for host X (...)"), as the http sink's own
errors do.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bridge.config import FileSinkSettings, HttpSinkSettings, SinkSettings
from bridge.logging import sending

__all__ = [
    "describe_sink",
    "probe_file",
    "probe_http",
    "probe_sink",
    "shown_url",
    "sink_kind_and_target",
]


def shown_url(url: str) -> str:
    """The URL without credentials or query string (either may hold a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _root_cause(exc: BaseException) -> str:
    """The innermost OS-level reason ("Connection refused"), else the exception's type."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        reason = getattr(current, "reason", None)
        nested = current.args[0] if current.args else None
        current = (
            current.__cause__
            or current.__context__
            or (reason if isinstance(reason, BaseException) else None)
            or (nested if isinstance(nested, BaseException) else None)
        )
    return type(exc).__name__


def probe_file(path: Path) -> tuple[bool, str]:
    """Can the sink create and append to `path`? Creates (and removes) one temporary file."""
    if path.is_dir():
        return False, f"{path} is a directory"
    if path.exists() and not os.access(path, os.W_OK):
        return False, f"{path} is not writable"
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return False, f"{existing} is not a directory"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return False, f"cannot create files in {existing}: {exc.strerror or exc}"
    created = "" if existing == path.parent else " (missing parts will be created)"
    return True, f"directory {path.parent} is writable{created}"


def probe_http(settings: HttpSinkSettings, timeout: float) -> tuple[bool, str]:
    """The format's harmless request (`Format.probe`: a HEAD for plain collectors, an empty
    push or a key check for platforms that have one) with the sink's headers, the format's
    credentials and the sink's TLS settings. Any reply means reachable, except the statuses
    that say the credentials were refused; the message says when a reply proved them good."""
    import requests
    from urllib3.exceptions import InsecureRequestWarning

    from bridge import formatoptions
    from bridge.errors import ConfigError
    from bridge.formats import get_format
    from bridge.redaction import Scrubber
    from bridge.sinks.httpwire import request_url, sink_secrets

    try:
        fmt = get_format(
            settings.format, formatoptions.build(settings.format, settings.format_options)
        )
    except ConfigError as exc:
        return False, str(exc)
    url = request_url(settings.url, fmt)
    probe = fmt.probe(url)
    # The sink's headers are for its collector: a probe of another host (Datadog's key check
    # on api.<site>) carries only the format's own credentials, never the sink's.
    same_host = probe.url is None or urlsplit(probe.url).netloc == urlsplit(url).netloc
    own_headers = settings.headers if same_host else {}
    scrub = Scrubber([*sink_secrets(settings.url, settings.headers), *fmt.secrets()])
    cert: str | tuple[str, str] | None = settings.client_cert
    if settings.client_cert and settings.client_key:
        cert = (settings.client_cert, settings.client_key)
    try:
        with sending(), warnings.catch_warnings(), requests.Session() as session:
            if not settings.verify:  # the user turned verification off; the sink says so too
                warnings.simplefilter("ignore", InsecureRequestWarning)
            response = session.request(
                probe.method,
                probe.url or url,
                headers={**own_headers, **probe.headers},
                data=probe.body,
                timeout=(
                    min(settings.timeout_connect, timeout),
                    min(settings.timeout_read, timeout),
                ),
                verify=settings.ca_bundle or settings.verify,
                cert=cert,
                allow_redirects=False,
            )
            response.close()
    except (requests.RequestException, OSError) as exc:
        return False, scrub(_failure(exc, probe.url or url, timeout))
    status = response.status_code
    what = f"HTTP {status} to {probe.method}"
    if probe.method != "HEAD":
        what += f" {urlsplit(probe.url or url).path or '/'}"
    if status in probe.refused:
        return False, f"reachable, but HTTP {status}: the collector refused the credentials"
    if status in probe.accepted:
        return True, f"reachable, credentials accepted ({what})"
    return True, f"reachable ({what})"


def _failure(exc: BaseException, url: str, timeout: float) -> str:
    """Why the HEAD request failed: TLS and DNS failures by name, else the OS's reason."""
    import requests

    from bridge.sinks.httpwire import failure_cause

    cause = failure_cause(exc, urlsplit(url).hostname or "?")
    if cause.startswith("TLS"):
        return cause
    if isinstance(exc, requests.exceptions.Timeout):
        return f"no answer within {timeout:g}s"
    if cause.startswith("DNS"):
        return f"unreachable: {cause}"
    return f"unreachable: {_root_cause(exc)}"


def sink_kind_and_target(sink: SinkSettings) -> tuple[str, str]:
    """`(type, target)` of a sink for the `check` table: `http, ndjson` and the URL without
    secrets, `file` and the absolute path, `stdout` and its stream."""
    if isinstance(sink, FileSinkSettings):
        return "file", str(sink.path.absolute())
    if isinstance(sink, HttpSinkSettings):
        return f"http, {sink.format}", shown_url(sink.url)
    return sink.type, str(getattr(sink, "stream", ""))


def describe_sink(sink: SinkSettings) -> str:
    """`name (type) target`, for listing the sinks."""
    kind, target = sink_kind_and_target(sink)
    return f"{sink.name} ({kind}) {target}".rstrip()


def probe_sink(sink: SinkSettings, timeout: float) -> tuple[bool, str]:
    """Probe one sink by its type; stdout is always writable."""
    if isinstance(sink, FileSinkSettings):
        return probe_file(sink.path)
    if isinstance(sink, HttpSinkSettings):
        return probe_http(sink, timeout)
    return True, "ok"

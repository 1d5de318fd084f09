"""The `http` sink: event lines batched to a log collector over HTTP(S).

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

`HttpSink` wires the pieces for one configured sink: the spool (with `spool_dir`), the feed
(`SpoolFeed` on it, else the bounded `MemoryFeed`), the wire format (`bridge.formats`), the
`HttpTransport` (`bridge.sinks.httptransport`), the dead-letter file, the `Retry` budget and
the `DeliveryEngine` that runs them. Everything that can be checked is checked when the sink
is built, so a mistake is a `ConfigError` at `init_app`, not a failure at send time.

Secrets: header values (and the credential after `Bearer`), a password in the URL and the
values of sensitive query parameters (`?api_key=`) never appear in an error message, in
`stats()`, on stderr or in a dead-letter record, even where a collector echoes them inside
its reply; messages name the collector by its origin (scheme, host, port) only. Redirects are
never followed, so credentials never go to another host: a 3xx reply is refused with a
message saying to configure the final URL.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from urllib3.exceptions import InsecureRequestWarning

from bridge import formatoptions
from bridge.config import HttpSinkSettings, check_http_sink
from bridge.delivery.deadletter import DeadLetter
from bridge.delivery.engine import DeliveryEngine
from bridge.delivery.feed import Batching, Feed
from bridge.delivery.memoryfeed import MemoryFeed
from bridge.delivery.retry import Retry
from bridge.delivery.spool import Spool
from bridge.delivery.spoolfeed import SpoolFeed
from bridge.delivery.transport import Transport
from bridge.diagnostics import report
from bridge.errors import ConfigError, ConfigProblem
from bridge.formats import NO_LIMITS, Limits, get_format
from bridge.redaction import register_secrets
from bridge.sinks.httptransport import HttpTransport
from bridge.sinks.httpwire import origin, sink_secrets
from bridge.stats import SinkStats

__all__ = ["HttpSink", "dead_letter_path", "delivery_engine"]


def delivery_engine(
    settings: HttpSinkSettings,
    transport: Transport,
    *,
    stats: SinkStats,
    dead_letter: DeadLetter,
    spool: Spool | None = None,
    limits: Limits = NO_LIMITS,
) -> DeliveryEngine:
    """The engine of one http sink: its feed (the spool, or a bounded memory queue), its
    batching and its retry budget (with a spool, retries go on until the spool's
    `event_ttl`; without, until `retry_max_duration`). A batch never holds more events, or
    more bytes of lines, than the format's platform takes in one request (`limits`)."""
    batching = Batching(
        min(settings.batch_max_events, limits.max_events or settings.batch_max_events),
        min(settings.batch_max_bytes, limits.max_body_bytes or settings.batch_max_bytes),
        settings.batch_timeout,
    )
    feed: Feed
    if spool is not None:
        feed = SpoolFeed(
            batching,
            spool=spool,
            max_bytes=settings.spool_max_bytes,
            stats=stats,
            overflow=settings.overflow,
            sync_each_batch=settings.spool_fsync == "batch",
        )
    else:
        feed = MemoryFeed(
            batching,
            max_events=settings.queue_max_events,
            max_bytes=settings.queue_max_bytes,
            stats=stats,
            overflow=settings.overflow,
        )
    retry = Retry(
        initial_backoff=settings.retry_initial_backoff,
        max_backoff=settings.retry_max_backoff,
        max_duration=None if spool is not None else settings.retry_max_duration,
    )
    return DeliveryEngine(
        settings.name, feed, transport, dead_letter=dead_letter, stats=stats, retry=retry
    )


def dead_letter_path(settings: HttpSinkSettings) -> Path | None:
    """Where the sink writes the events its collector refused: `dead_letter_path`, else
    `<spool_dir>/dead-letter.jsonl`, else nowhere."""
    if settings.dead_letter_path is not None:
        return settings.dead_letter_path
    if settings.spool_dir is not None:
        return settings.spool_dir / "dead-letter.jsonl"
    return None


class HttpSink:
    """Ships event lines to an HTTP log collector in batches, from a background thread.

    `submit` appends to a bounded memory queue (or, with `spool_dir`, to the disk spool with one
    write) and never touches the network; `submit_many` does so for a request's lines at once
    (one lock, or one spool write), counting each line as `submit` would. Delivery is best
    effort without a spool and at least once with one. Raises ConfigError at construction for an
    unimplemented `format`, a bad URL, missing TLS files or a spool directory it cannot use; its
    key is prefixed with `config_key` (such as "sinks[2]") when given.
    """

    def __init__(self, settings: HttpSinkSettings, *, config_key: str | None = None) -> None:
        try:
            check_http_sink(settings)
            options = formatoptions.build(settings.format, settings.format_options)
            self._format = get_format(settings.format, options)
        except ConfigError as exc:
            if config_key is None:
                raise
            raise ConfigError.of(
                ConfigProblem(f"{config_key}.{p.key}", p.value, p.expected) for p in exc.problems
            ) from None
        self.name = settings.name
        self.settings = settings
        self._stats = SinkStats()
        # Every stderr line of the bridge hides them from now on (collectors echo tokens).
        register_secrets([*sink_secrets(settings.url, settings.headers), *self._format.secrets()])
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
        dead_letter = DeadLetter(dead_letter_path(settings), stats=self._stats, sink_name=self.name)
        self._transport = HttpTransport(settings, self._format)
        self._engine = delivery_engine(
            settings,
            self._transport,
            stats=self._stats,
            dead_letter=dead_letter,
            spool=self._spool,
            limits=self._format.limits,
        )
        self.submit = self._engine.submit
        # A request's lines under one lock of the memory queue, or in one spool write.
        self.submit_many = self._engine.submit_many

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

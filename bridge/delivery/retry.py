"""How long the delivery engine backs off, as an immutable value (like urllib3's `Retry`).

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack
                        └ RetryLater: Retry.increment, wait `delay`, send again

Which replies are worth retrying is not decided here but by the format's status policy
(`bridge.outcome.StatusPolicy`); this is only the timing, and when to give up.

`increment()` returns a new policy one failure further on, with the delay to wait before the
next attempt already computed: the collector's `Retry-After` when it sent one (capped at
`max_backoff`), else full jitter, `random() * min(max_backoff, initial_backoff * 2**n)`.
The clock and the random source are injectable, so tests check delays without sleeping.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["Retry", "parse_retry_after"]

_MAX_EXPONENT = 64  # 2**64 * any sane base is far above any cap; avoids float overflow


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """How long to wait after each failure, and when to give up.

    `attempt` failures have happened so far, the first at `started` (on `clock`). `delay` is
    how long to wait before the next attempt. `max_duration` None means "never give up here"
    (with a spool, retries last until the spool's `event_ttl`).
    """

    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    max_duration: float | None = 300.0
    attempt: int = 0
    started: float | None = None
    delay: float = 0.0
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)
    random: Callable[[], float] = field(default=_random.random, compare=False, repr=False)

    def ceiling(self, attempt: int) -> float:
        """The largest delay full jitter may pick after `attempt` earlier failures."""
        exponent = min(attempt, _MAX_EXPONENT)
        return min(self.max_backoff, self.initial_backoff * 2.0**exponent)

    def increment(self, retry_after: float | None = None) -> Retry:
        """The policy after one more failure; `retry_after` (seconds) is the collector's wish."""
        now = self.clock()
        if retry_after is not None:
            delay = min(max(0.0, retry_after), self.max_backoff)
        else:
            delay = self.random() * self.ceiling(self.attempt)
        started = now if self.started is None else self.started
        return replace(self, attempt=self.attempt + 1, started=started, delay=delay)

    def elapsed(self) -> float:
        """Seconds since the first failure (0 before any)."""
        return 0.0 if self.started is None else self.clock() - self.started

    def is_exhausted(self) -> bool:
        """True once failures have gone on for `max_duration`: stop retrying, drop the batch."""
        return self.max_duration is not None and self.elapsed() >= self.max_duration

    def reset(self) -> Retry:
        """The policy after a success: no failures, no delay; same settings."""
        return replace(self, attempt=0, started=None, delay=0.0)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date), or None.

    `now` is the wall-clock time (epoch seconds) an HTTP-date is measured from. A date in the
    past means "now" (0). Unparseable values are ignored (None): the normal backoff applies.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": RFC 9110 dates are GMT anyway
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)

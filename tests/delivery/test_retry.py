"""The retry policy is a value: computed delays checked with an injected clock and random."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from bridge.delivery.retry import Retry, parse_retry_after


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def policy(clock: FakeClock, rand: float = 1.0, **overrides: float | None) -> Retry:
    values = {"initial_backoff": 0.5, "max_backoff": 30.0, "max_duration": 300.0, **overrides}
    return Retry(clock=clock, random=lambda: rand, **values)  # type: ignore[arg-type]


class TestRetry:
    def test_increment_returns_a_new_value_and_leaves_the_old_one(self) -> None:
        """increment() never mutates: the original policy still has no failures."""
        first = policy(FakeClock())
        second = first.increment()
        assert (0, None) == (first.attempt, first.started)
        assert (1, 1000.0) == (second.attempt, second.started)
        with pytest.raises(AttributeError):
            second.attempt = 5  # type: ignore[misc]

    def test_delays_double_up_to_the_cap_at_the_top_of_the_jitter(self) -> None:
        """With random() = 1 the delays are base * 2**n, capped at max_backoff."""
        retry = policy(FakeClock(), rand=1.0, max_backoff=5.0)
        delays = []
        for _ in range(6):
            retry = retry.increment()
            delays.append(retry.delay)
        assert [0.5, 1.0, 2.0, 4.0, 5.0, 5.0] == delays

    def test_full_jitter_scales_the_ceiling_by_the_random_draw(self) -> None:
        """Full jitter: delay = random() * min(cap, base * 2**n)."""
        draws = iter([0.25, 0.5, 0.1])
        retry = Retry(
            initial_backoff=2.0, max_backoff=100.0, clock=FakeClock(), random=lambda: next(draws)
        )
        delays = []
        for _ in range(3):
            retry = retry.increment()
            delays.append(retry.delay)
        assert [0.5, 2.0, 0.8] == pytest.approx(delays)

    def test_retry_after_wins_over_the_backoff(self) -> None:
        """A collector's Retry-After is used as is instead of the jittered delay."""
        retry = policy(FakeClock(), rand=0.0).increment(retry_after=7.0)
        assert 7.0 == retry.delay

    def test_retry_after_is_capped_at_max_backoff(self) -> None:
        """A Retry-After longer than max_backoff waits max_backoff."""
        retry = policy(FakeClock(), max_backoff=10.0).increment(retry_after=3600.0)
        assert 10.0 == retry.delay

    def test_exhausted_after_max_duration_of_failures(self) -> None:
        """Exhaustion is measured from the first failure on the injected clock."""
        clock = FakeClock()
        retry = policy(clock, max_duration=60.0).increment()
        clock.now += 59.0
        assert not retry.is_exhausted()
        clock.now += 1.0
        assert retry.is_exhausted()
        assert 60.0 == retry.elapsed()

    def test_started_stays_at_the_first_failure(self) -> None:
        """Later failures do not move the start of the failure streak."""
        clock = FakeClock()
        retry = policy(clock).increment()
        clock.now += 10.0
        retry = retry.increment()
        assert 1000.0 == retry.started

    def test_no_max_duration_never_exhausts(self) -> None:
        """max_duration None (a spool keeps the events) never gives up."""
        clock = FakeClock()
        retry = policy(clock, max_duration=None).increment()
        clock.now += 10**9
        assert not retry.is_exhausted()

    def test_reset_forgets_failures_and_keeps_settings(self) -> None:
        """After a success the policy starts over with the same settings."""
        retry = policy(FakeClock(), max_backoff=7.0).increment().increment().reset()
        assert (0, None, 0.0, 7.0) == (retry.attempt, retry.started, retry.delay, retry.max_backoff)

    def test_huge_attempt_counts_do_not_overflow(self) -> None:
        """Thousands of failures (a collector down for days) still give the cap."""
        assert 30.0 == policy(FakeClock()).ceiling(5000)


class TestParseRetryAfter:
    def test_delta_seconds(self) -> None:
        """`Retry-After: 120` is 120 seconds."""
        assert 120.0 == parse_retry_after("120")

    def test_http_date(self) -> None:
        """An HTTP-date is measured from `now`."""
        now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
        header = format_datetime(datetime(2026, 1, 1, 12, 0, 45, tzinfo=UTC), usegmt=True)
        assert 45.0 == parse_retry_after(header, now=now)

    def test_past_http_date_means_now(self) -> None:
        """A date in the past is a zero delay, never negative."""
        now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
        assert 0.0 == parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now)

    @pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5e3"])
    def test_unusable_values_are_ignored(self, value: str | None) -> None:
        """Missing or unparseable values give None: the normal backoff applies."""
        assert parse_retry_after(value) is None

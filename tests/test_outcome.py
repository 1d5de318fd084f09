"""The status policy: what each HTTP status of a reply means for its batch, as typed outcomes."""

from __future__ import annotations

import pytest

from bridge.errors import DeliveryError, FatalError, RetryableError
from bridge.outcome import (
    DEFAULT_POLICY,
    PartlyDelivered,
    Rejected,
    RetryLater,
    Split,
    StatusPolicy,
)

WHERE = "http://collector.test:8686"


class TestStatusPolicy:
    def test_retried_statuses(self) -> None:
        """408, 429 and the usual 5xx are retried; other 4xx are not in the set."""
        assert {408, 429, 500, 502, 503, 504} == set(DEFAULT_POLICY.retry)

    @pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 507, 599])
    def test_retryable_statuses_retry_later(self, status: int) -> None:
        """408, 429 and every 5xx: retry later, with the status, excerpt and Retry-After."""
        outcome = DEFAULT_POLICY.classify(status, where=WHERE, body="busy", retry_after=3.0)
        assert RetryLater(f"{WHERE}: HTTP {status}", status, 3.0, "busy") == outcome

    def test_413_asks_for_a_split(self) -> None:
        """413: the collector wants smaller requests."""
        outcome = DEFAULT_POLICY.classify(413, where=WHERE, body="too big")
        assert Split(f"{WHERE}: HTTP 413, batch refused", 413, "too big") == outcome

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
    def test_other_4xx_are_rejected(self, status: int) -> None:
        """Other 4xx: refused for good, counted rejected_4xx."""
        outcome = DEFAULT_POLICY.classify(status, where=WHERE, body="nope")
        expected = Rejected(
            f"{WHERE}: HTTP {status}, batch refused", status, "nope", "rejected_4xx"
        )
        assert expected == outcome

    def test_a_redirect_is_rejected_and_names_its_target(self) -> None:
        """3xx: refused (never followed), naming where it pointed and what to do."""
        outcome = DEFAULT_POLICY.classify(307, where=WHERE, location="https://evil.test")
        assert (
            Rejected(
                f"{WHERE}: HTTP 307 redirect to https://evil.test not followed "
                "(redirects could leak credentials); set `url` to the final address",
                307,
                "",
                "rejected_redirect",
            )
            == outcome
        )

    def test_a_format_can_narrow_what_is_retried(self) -> None:
        """A policy retrying only 429/502/503/504 rejects a 500 and a 408."""
        narrow = StatusPolicy(retry=frozenset({429, 502, 503, 504}), retry_other_5xx=False)
        assert RetryLater(f"{WHERE}: HTTP 503", 503) == narrow.classify(503, where=WHERE)
        assert Rejected(f"{WHERE}: HTTP 500, batch refused", 500, "", "rejected") == (
            narrow.classify(500, where=WHERE)
        )
        assert Rejected(f"{WHERE}: HTTP 408, batch refused", 408, "", "rejected_4xx") == (
            narrow.classify(408, where=WHERE)
        )

    def test_a_refusal_without_a_status_is_an_internal_error(self) -> None:
        """No status (a bug of ours, not the collector): dropped as internal_error."""
        assert Rejected("bug", None, "", "internal_error") == DEFAULT_POLICY.refusal("bug", None)

    def test_only_2xx_is_accepted(self) -> None:
        """2xx replies go to the format; everything else to `classify`."""
        assert [False, True, True, False] == [
            DEFAULT_POLICY.accepted(s) for s in (199, 200, 299, 300)
        ]


class TestPartlyDelivered:
    def test_negative_indices_are_dropped_not_read_from_the_end(self) -> None:
        """An index below 0 names no item: dropped like one past the batch, never taken as the
        last item (which would then be counted delivered and dead-lettered both)."""
        outcome = PartlyDelivered(retry=(-1, 1), reject=(-3, 0), status=200)
        assert PartlyDelivered((1,), (0,), 200) == outcome.for_batch(3)


class TestDeliveryErrors:
    """A transport may raise the public errors instead of returning an outcome."""

    def test_a_retryable_error_is_retried_with_its_wait(self) -> None:
        """RetryableError: retry later, with its status, excerpt and Retry-After."""
        error = RetryableError("timed out", status=503, body="busy", retry_after=2.0)
        assert RetryLater("timed out", 503, 2.0, "busy") == error.outcome()

    def test_a_fatal_413_asks_for_a_split(self) -> None:
        """FatalError with 413: the collector wants smaller requests."""
        assert Split("too big", 413, "x") == FatalError("too big", status=413, body="x").outcome()

    def test_a_fatal_4xx_is_rejected(self) -> None:
        """FatalError with another 4xx: dead-lettered, counted rejected_4xx."""
        outcome = FatalError("bad", status=400, body="no").outcome()
        assert Rejected("bad", 400, "no", "rejected_4xx") == outcome

    def test_a_bare_delivery_error_is_refused_not_lost(self) -> None:
        """A DeliveryError of no subclass is refused (dead-lettered), never left unsettled."""
        assert Rejected("odd", None, "", "internal_error") == DeliveryError("odd").outcome()

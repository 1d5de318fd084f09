"""What sending one batch came to, and what an HTTP status means: one typed outcome, one policy.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

A transport (`bridge.sinks.httptransport`, or a test's scripted one) returns one `Outcome` per
batch and the delivery engine (`bridge.delivery.engine`) settles the batch with one `match`:

    Delivered        the collector took every line: acknowledge them
    RetryLater       nothing was taken, for a reason that may pass: back off, send again
    Split            the collector wants smaller requests (413): send the two halves
    Rejected         refused for good: dead-letter the lines, counted by `drop_reason`
    PartlyDelivered  a 2xx reply naming failed items, by index: retry some, dead-letter others

`StatusPolicy` says what a non-2xx status means, kept on one frozen value as urllib3 keeps it
on its `Retry` object. Each wire format (`bridge.formats`) carries one, so a format whose
collector retries only 429/502/503/504 says so there, without touching the engine. Messages
(`reason`) never hold secrets: the transport names the collector by its origin only.

A leaf module: it imports nothing from the bridge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "DEFAULT_POLICY",
    "DELIVERED",
    "Delivered",
    "Outcome",
    "PartlyDelivered",
    "Rejected",
    "ReplyReader",
    "RetryLater",
    "Split",
    "StatusPolicy",
]


@dataclass(frozen=True, slots=True)
class Delivered:
    """The collector took the batch. `rejected`: how many of its lines the reply says were
    refused without naming which (OTLP's `partialSuccess`): counted as dropped
    `rejected_by_collector`, with `detail`, since none can be dead-lettered or retried."""

    rejected: int = 0
    detail: str = ""


DELIVERED = Delivered()


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Nothing was taken, for a reason that may pass (a timeout, a 503). `retry_after`: the
    seconds the collector asked for (Retry-After), if any."""

    reason: str
    status: int | None = None
    retry_after: float | None = None
    body: str = ""


@dataclass(frozen=True, slots=True)
class Split:
    """The collector refused the request as too large: send the batch again in two halves
    (one line that is still too large is rejected `too_large`, with `body`)."""

    reason: str
    status: int | None = None
    body: str = ""


@dataclass(frozen=True, slots=True)
class Rejected:
    """Refused for good; retrying the same request cannot help. The lines are dead-lettered
    with `status` and `body` and counted as dropped `drop_reason`."""

    reason: str
    status: int | None = None
    body: str = ""
    drop_reason: str = "rejected"


@dataclass(frozen=True, slots=True)
class PartlyDelivered:
    """A 2xx reply that names failed items, by index into the batch: `retry` are worth sending
    again (the collector was busy), `reject` are refused for good (dead-lettered with
    `detail`); every other item was delivered."""

    retry: tuple[int, ...] = ()
    reject: tuple[int, ...] = ()
    status: int = 200
    detail: str = ""
    unread_from: int | None = None
    """The reply reported items only up to this index (it was cut short, or unreadable past
    it): every later item is retried too, never taken as delivered. A format cannot know the
    batch's size, so the transport, which does, spells them out (`for_batch`)."""

    def for_batch(self, size: int) -> PartlyDelivered:
        """This outcome for a batch of `size` items: indices it does not have are dropped,
        the unread ones (from `unread_from`) are retried."""
        retry = [i for i in self.retry if 0 <= i < size]
        if self.unread_from is not None:
            retry.extend(range(max(self.unread_from, 0), size))
        reject = tuple(i for i in self.reject if 0 <= i < size)
        return PartlyDelivered(tuple(sorted(set(retry))), reject, self.status, self.detail)


Outcome = Delivered | RetryLater | Split | Rejected | PartlyDelivered

_RETRY = frozenset({408, 429, 500, 502, 503, 504})


class ReplyReader(Protocol):
    """A format's own reading of a non-2xx reply whose body says more than its status (Splunk
    HEC names the first bad event of a refused batch): an outcome, or None for the status
    rules. `events`: how many lines the refused request carried (0: not known)."""

    def __call__(self, status: int, *, where: str, body: str, events: int) -> Outcome | None: ...


@dataclass(frozen=True, slots=True)
class StatusPolicy:
    """What each HTTP status of a reply means for the batch it answered.

    2xx: accepted (the format reads the body: `Format.interpret`). `retry` statuses, and with
    `retry_other_5xx` every other 5xx, are retried. `split` statuses ask for smaller requests.
    3xx is refused: redirects are never followed (they could carry credentials elsewhere).
    Anything else (other 4xx, odd numbers) is refused for good, unless the platform names in
    the reply an error worth retrying: `error_code` reads the code out of the reply's excerpt
    and a code in `retry_codes` is retried whatever the status (SLS answers a write quota
    exceeded with 403 and `"errorCode": "WriteQuotaExceed"`, its bad signatures with 403 too).
    `hints` say what a refusal means on the platform (401: the API key is missing), added to
    the reason the operator sees. `read_reply`, when a platform's refusal says more than a
    status can (HEC's `invalid-event-number`: the events before it were taken), is consulted
    first.
    """

    retry: frozenset[int] = _RETRY
    retry_other_5xx: bool = True
    split: frozenset[int] = frozenset({413})
    read_reply: ReplyReader | None = None
    """Consulted first, with the reply's body excerpt; None from it: the rules below."""
    hints: tuple[tuple[int, str], ...] = ()
    retry_codes: frozenset[str] = frozenset()
    error_code: Callable[[str], str] | None = None

    @staticmethod
    def accepted(status: int) -> bool:
        """A 2xx reply: the collector took the request (some items may still have failed)."""
        return 200 <= status < 300

    def retries(self, status: int) -> bool:
        return status in self.retry or (self.retry_other_5xx and 500 <= status < 600)

    def classify(
        self,
        status: int,
        *,
        where: str,
        body: str = "",
        retry_after: float | None = None,
        location: str = "?",
        events: int = 0,
    ) -> Outcome:
        """The outcome of a non-2xx reply from the collector at `where` (its origin).

        `body` is an excerpt of the reply (already scrubbed of secrets), `retry_after` the
        parsed Retry-After header, `location` the origin a redirect pointed to, `events` the
        number of lines the request carried (for `read_reply`).
        """
        if self.read_reply is not None:
            read = self.read_reply(status, where=where, body=body, events=events)
            if read is not None:
                return read
        code = self.error_code(body) if self.error_code is not None else ""
        said = f"HTTP {status} {code}" if code else f"HTTP {status}"
        if self.retries(status) or code in self.retry_codes:
            return RetryLater(f"{where}: {said}", status, retry_after, body)
        if 300 <= status < 400:
            return Rejected(
                f"{where}: HTTP {status} redirect to {location} not followed "
                "(redirects could leak credentials); set `url` to the final address",
                status,
                body,
                self.drop_reason(status),
            )
        hint = next((f": {text}" for number, text in self.hints if number == status), "")
        return self.refusal(f"{where}: {said}, batch refused{hint}", status, body)

    def refusal(self, reason: str, status: int | None, body: str = "") -> Split | Rejected:
        """A request refused for good with `status` (None: a bug of ours, not the collector):
        split it when the status asks for smaller requests, else reject it."""
        if status is not None and status in self.split:
            return Split(reason, status, body)
        return Rejected(reason, status, body, self.drop_reason(status))

    def drop_reason(self, status: int | None) -> str:
        """The `dropped_by_reason` key of lines refused with `status`."""
        if status is None:
            return "internal_error"
        if status in self.split:
            return "too_large"
        if 300 <= status < 400:
            return "rejected_redirect"
        if 400 <= status < 500:
            return "rejected_4xx"
        return "rejected"


DEFAULT_POLICY = StatusPolicy()
"""408, 429 and 5xx retried, 413 split, other 4xx and 3xx rejected."""

"""The delivery engine: one background worker per sink, one loop over a feed and a transport.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

    (request    (memory      take a batch ─> send ─┬─ Delivered        feed.ack
     thread)     queue or                          ├─ RetryLater       back off, feed.give_back
                 spool)                            ├─ Split            send the halves first
                                                   ├─ Rejected         dead-letter, feed.ack
                                                   └─ PartlyDelivered  some of each

`submit` is the feed's `put` (`submit_many`, its `put_many`): it never waits on the network. The
worker starts lazily in the process that emits and is reset after `fork()`. The engine knows
neither HTTP nor storage: the transport says how a send went (`bridge.outcome`), the feed
(`bridge.delivery.feed`) keeps, acknowledges and gives back the lines, and the `Retry` it is
given says how long to back off and when to give up (the sink gives up never with a spool, whose
`event_ttl` bounds retries, and after `retry_max_duration` without). A transport may also raise
the public `RetryableError` / `FatalError`; each says which outcome it stands for.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque

from bridge import forking
from bridge.delivery.deadletter import DeadLetter
from bridge.delivery.feed import Batch, Feed
from bridge.delivery.retry import Retry
from bridge.delivery.transport import Transport
from bridge.diagnostics import report
from bridge.errors import DeliveryError
from bridge.outcome import (
    Delivered,
    Outcome,
    PartlyDelivered,
    Rejected,
    RetryLater,
    Split,
)
from bridge.redaction import scrub_known
from bridge.stats import SinkStats

__all__ = ["ABORT_GRACE", "DeliveryEngine"]

ABORT_GRACE = 1.0  # close: how long a worker whose send was cut gets to wind down


class DeliveryEngine:
    """The worker thread, retry loop and dead-letter handling of one sink, over a feed.

    `retry` is the backoff and the budget: once `retry.max_duration` of failures has passed,
    a batch is dropped (counted `retry_exhausted`) and acknowledged, whatever the feed; the
    http sink passes `max_duration=None` with a spool, whose `event_ttl` bounds retries.
    """

    def __init__(
        self,
        name: str,
        feed: Feed,
        transport: Transport,
        *,
        dead_letter: DeadLetter,
        stats: SinkStats,
        retry: Retry,
    ) -> None:
        self.name = name
        self._feed = feed
        self._transport = transport
        self._dead_letter = dead_letter
        self._stats = stats
        self._retry_template = self._retry = retry
        self.submit = feed.put
        self.submit_many = feed.put_many
        self._halves: deque[Batch] = deque()  # split batches: sent before the feed's next
        self._thread: threading.Thread | None = None
        self._close_lock = threading.Lock()
        self._closed_result: bool | None = None
        forking.reset_in_child(self)
        feed.attach(self._start_worker)  # may start it now: a spool with a dead owner's lines

    # -- lifecycle ----------------------------------------------------------------------------

    def _start_worker(self) -> None:
        """Start the worker thread (feed lock held, or at construction)."""
        self._thread = threading.Thread(
            target=self._run, args=(self._feed,), name=f"bridge-http-{self.name}", daemon=True
        )
        self._thread.start()

    def after_fork_in_child(self) -> None:
        """The parent's lines and thread stay the parent's; the child starts empty and lazily,
        on a connection of its own."""
        self._feed.after_fork_in_child()
        self._halves.clear()
        self._thread = None
        self._retry = self._retry_template
        self._close_lock = threading.Lock()
        self._transport.after_fork_in_child()

    def flush(self, timeout: float) -> bool:
        """Wait until every line accepted before the call is acknowledged by the collector or
        dead-lettered. False when `timeout` ran out, or when some of those lines were lost
        meanwhile (retries exhausted, evicted, expired; each counted in `stats()`)."""
        feed = self._feed
        deadline = time.monotonic() + timeout
        losses = self._losses()
        target = feed.begin_flush()
        try:
            while True:
                with feed.lock:
                    generation = feed.settle_gen
                if feed.settled() >= target:
                    return self._losses() == losses
                remaining = deadline - time.monotonic()
                if remaining <= 0 or feed.stopping:
                    return False
                with feed.lock:
                    if feed.settle_gen == generation and not feed.stopping:
                        feed.progress.wait(remaining)
        finally:
            feed.end_flush(target)

    def _losses(self) -> int:
        """Accepted lines lost so far: every drop except refusals at submit and dead letters."""
        snapshot = self._stats.snapshot(queue_depth=0)
        return int(snapshot["dropped"]) - self._feed.rejected - int(snapshot["dead_lettered"])

    def close(self, timeout: float) -> bool:
        """Flush within `timeout`, stop the worker, let the feed deal with what is left, close
        the transport.

        A request still in flight at the deadline is cut (`Transport.abort`), so this returns
        within `timeout` plus `ABORT_GRACE` and the worker is gone. What is left stays in the
        spool, or (no spool) is counted as dropped "shutdown"; either way one line goes to
        stderr. Idempotent: later calls return the first result.
        """
        with self._close_lock:
            if self._closed_result is not None:
                return self._closed_result
            deadline = time.monotonic() + timeout
            feed = self._feed
            feed.close()
            feed.cut_backoff()
            flushed = self.flush(timeout)
            feed.stop()
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():  # inside a send: cut it, its batch stays pending
                    self._transport.abort()
                    thread.join(ABORT_GRACE)
            left = feed.shutdown(self.name)
            self._halves.clear()
            self._transport.close()
            self._closed_result = flushed and not left
            return self._closed_result

    def queue_depth(self) -> int:
        return self._feed.depth()

    def accepted(self) -> int:
        """Lines `submit` took in this process."""
        with self._feed.lock:
            return self._feed.accepted()

    # -- worker thread ------------------------------------------------------------------------

    def _run(self, feed: Feed) -> None:
        while not feed.stopping:
            try:
                if self._halves:
                    batch: Batch | None = self._halves.popleft()
                elif feed.wait_for_batch():
                    batch = feed.take(feed.batch_events, feed.batch_bytes)
                else:
                    return
                if batch is not None:
                    self._deliver(feed, batch)
                else:
                    feed.settle()
                feed.after_round()
            except Exception as exc:  # a bug: keep the worker alive, say where, slow down
                where = traceback.extract_tb(exc.__traceback__)[-1]
                message = (
                    f"delivery worker error: {type(exc).__name__} at {where.name}:{where.lineno}"
                )
                self._stats.record_error(message)  # no str(exc): it could quote anything
                report(f"worker-{self.name}", f"sink {self.name}: {message}")
                feed.sleep(1.0)

    def _deliver(self, feed: Feed, batch: Batch) -> None:
        """Send one batch and settle it by what the transport said."""
        feed.before_send(batch)
        outcome = self._send(batch)
        if feed.abandoned:  # close gave up waiting and counted these as lost already
            return
        match outcome:
            case Delivered(rejected=rejected, detail=detail):
                rejected = min(rejected, len(batch))  # a collector may claim more than it got
                self._retry = self._retry.reset()
                self._stats.count_delivered(len(batch) - rejected)
                if rejected:
                    self._rejected_unnamed(rejected, detail)
                feed.ack(batch)
            case RetryLater():
                self._retry_later(feed, batch, outcome)
            case Split(reason=reason, status=status, body=body):
                self._stats.record_error(scrub_known(reason))
                if len(batch) > 1:
                    self._retry = self._retry.reset()
                    self._halves.extendleft(reversed(batch.split()))
                    feed.settle()
                else:
                    self._reject(feed, batch, Rejected(reason, status, body, "too_large"))
            case Rejected(reason=reason):
                self._stats.record_error(scrub_known(reason))
                self._reject(feed, batch, outcome)
            case PartlyDelivered():
                self._retry = self._retry.reset()
                self._partly_delivered(feed, batch, outcome)

    def _rejected_unnamed(self, rejected: int, detail: str) -> None:
        """The collector took the batch but refused `rejected` lines it does not name."""
        self._stats.count_dropped("rejected_by_collector", rejected)
        message = scrub_known(f"the collector refused {rejected} events of a batch: {detail}")
        self._stats.record_error(message)
        report(f"rejected-{self.name}", f"sink {self.name}: {message}")

    def _send(self, batch: Batch) -> Outcome:
        """The transport's outcome; the public errors it may raise read as outcomes here."""
        try:
            return self._transport.send(batch.lines)
        except DeliveryError as exc:
            return exc.outcome()
        except Exception as exc:  # a bug in a format or transport: keep the events, replayable
            where = traceback.extract_tb(exc.__traceback__)[-1]
            reason = f"{type(exc).__name__} at {where.name}:{where.lineno} while sending"
            return Rejected(reason, drop_reason="internal_error")

    def _retry_later(self, feed: Feed, batch: Batch, outcome: RetryLater) -> None:
        """Back off, then send it again (the feed keeps it), unless retries ran out."""
        self._retry = self._retry.increment(outcome.retry_after)
        message = scrub_known(
            f"{outcome.reason} (attempt {self._retry.attempt}, next in {self._retry.delay:.2f} s)"
        )
        self._stats.record_error(message)
        report(f"retry-{self.name}", f"sink {self.name}: delivery failed, will retry: {message}")
        if self._retry.is_exhausted():
            self._stats.count_dropped("retry_exhausted", len(batch))
            report(
                f"exhausted-{self.name}",
                f"sink {self.name}: gave up on {len(batch)} events after "
                f"{self._retry.elapsed():.0f} s of failures ({outcome.reason})",
            )
            feed.ack(batch)
        else:
            self._stats.count_retried(len(batch))
            feed.give_back(batch)
        feed.sleep(self._retry.delay)

    def _reject(self, feed: Feed, batch: Batch, outcome: Rejected) -> None:
        """Dead-letter the batch; retrying the same request cannot help.

        Unless the dead-letter file cannot be written: then the batch is kept (in the spool,
        or in memory within the retry budget) and sent again after a backoff, and only
        acknowledged once its dead letters are on disk."""
        kept = self._dead_letter.refuse(
            batch.lines, reason=outcome.drop_reason, status=outcome.status, response=outcome.body
        )
        if kept is not None:
            self._retry_later(feed, batch, kept)
            return
        self._retry = self._retry.reset()
        feed.ack(batch)

    def _partly_delivered(self, feed: Feed, batch: Batch, outcome: PartlyDelivered) -> None:
        """Some items failed inside a 2xx reply: dead-letter the rejected, retry the rest."""
        failed = set(outcome.retry) | set(outcome.reject)
        done = batch.subset([i for i in range(len(batch)) if i not in failed])
        rejected = batch.subset(sorted(set(outcome.reject)))
        retry_items = set(outcome.retry) - set(outcome.reject)
        self._stats.count_delivered(len(done))
        feed.ack(done)
        later = RetryLater(f"{len(retry_items)} items to retry", outcome.status)
        if rejected.lines:
            kept = self._dead_letter.refuse(
                rejected.lines,
                reason="rejected_item",
                status=outcome.status,
                response=outcome.detail,
            )
            if kept is None:
                feed.ack(rejected)
            else:  # sent again with the items to retry
                retry_items |= set(outcome.reject)
                later = kept
        if retry_items:
            self._retry_later(feed, batch.subset(sorted(retry_items)), later)

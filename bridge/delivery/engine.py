"""The delivery engine: one background worker per sink that batches, sends, retries, spools.

    submit ─> feed ─> worker: take a batch ─> transport.send ─┬─ 2xx: acknowledge
    (request   (memory queue                                   ├─ retryable: back off, resend
     thread)    or spool)                                      ├─ 413: split, resend halves
                                                               └─ other 4xx: dead-letter

`submit` never waits on the network: it appends to the feed (memory, or one spool write) and
returns. The worker starts lazily in the process that emits and is reset after `fork()`.
Failures are branched on by exception type (`RetryableError`, `FatalError`). Without a spool
a failing batch is kept in memory and retried with `Retry` until `retry_max_duration`; with a
spool it is released back to the spool, which keeps it until `event_ttl`.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque

from bridge import forking
from bridge.config import HttpSinkSettings
from bridge.delivery.deadletter import DeadLetter
from bridge.delivery.feed import Batch, Batching, Feed
from bridge.delivery.queue import MemoryFeed
from bridge.delivery.retry import Retry
from bridge.delivery.spool import Spool
from bridge.delivery.spoolfeed import SpoolFeed
from bridge.delivery.transport import Outcome, Transport
from bridge.diagnostics import report
from bridge.errors import FatalError, RetryableError
from bridge.redaction import scrub_known
from bridge.stats import SinkStats

__all__ = ["ABORT_GRACE", "DeliveryEngine"]

ABORT_GRACE = 1.0  # close: how long a worker whose send was cut gets to wind down


class DeliveryEngine:
    """The queue, worker thread, retry loop and dead-letter handling of one sink."""

    def __init__(
        self,
        settings: HttpSinkSettings,
        transport: Transport,
        *,
        stats: SinkStats,
        dead_letter: DeadLetter,
        spool: Spool | None = None,
        retry: Retry | None = None,
    ) -> None:
        self.name = settings.name
        self._settings = settings
        self._transport = transport
        self._stats = stats
        self._dead_letter = dead_letter
        self._spool = spool
        self._retry_template = retry or Retry(
            initial_backoff=settings.retry_initial_backoff,
            max_backoff=settings.retry_max_backoff,
            max_duration=None if spool is not None else settings.retry_max_duration,
        )
        self._retry = self._retry_template
        batching = Batching(
            settings.batch_max_events, settings.batch_max_bytes, settings.batch_timeout
        )
        self._feed: MemoryFeed | SpoolFeed
        if spool is not None:
            self._feed = SpoolFeed(
                batching,
                spool=spool,
                max_bytes=settings.spool_max_bytes,
                stats=stats,
                overflow=settings.overflow,
                start_worker=self._start_worker,
            )
        else:
            self._feed = MemoryFeed(
                batching,
                max_events=settings.queue_max_events,
                max_bytes=settings.queue_max_bytes,
                stats=stats,
                overflow=settings.overflow,
                start_worker=self._start_worker,
            )
        self.submit = self._feed.put
        self._work: deque[Batch] = deque()
        self._thread: threading.Thread | None = None
        self._close_lock = threading.Lock()
        self._closed_result: bool | None = None
        forking.reset_in_child(self)
        if spool is not None and spool.pending_events():
            # Ship what dead processes left behind without waiting for traffic.
            with self._feed.lock:
                self._feed.ensure_worker()

    # -- lifecycle ----------------------------------------------------------------------------

    def _start_worker(self) -> None:
        """Start the worker thread (feed lock held, or at construction)."""
        self._thread = threading.Thread(
            target=self._run, args=(self._feed,), name=f"bridge-http-{self.name}", daemon=True
        )
        self._thread.start()

    def after_fork_in_child(self) -> None:
        """The parent's queue and thread stay the parent's; the child starts empty and lazily."""
        closed = self._feed.closed
        self._feed.reset()
        if closed:
            self._feed.close()
        self._work.clear()
        self._thread = None
        self._retry = self._retry_template
        self._close_lock = threading.Lock()
        if self._spool is not None:
            self._spool.after_fork_in_child()
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
        """Flush within `timeout`, stop the worker, release the spool and the connection pool.

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
            left = self._leftovers()
            self._transport.close()
            self._closed_result = flushed and not left
            return self._closed_result

    def _leftovers(self) -> int:
        if isinstance(self._feed, MemoryFeed):
            lost = self._feed.discard()
            self._work.clear()
            if lost:
                self._stats.count_dropped("shutdown", lost)
                report(
                    f"shutdown-{self.name}",
                    f"sink {self.name}: {lost} events not delivered at shutdown "
                    "(no spool): dropped",
                )
            return lost
        assert self._spool is not None
        left = self._spool.pending_events()
        self._spool.close()
        if left:
            report(
                f"shutdown-{self.name}",
                f"sink {self.name}: {left} events not delivered yet; they stay in the spool",
            )
        return left

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
                if self._work:
                    batch: Batch | None = self._work.popleft()
                else:
                    if not feed.wait_for_batch():
                        return
                    batch = self._take()
                if batch is not None:
                    self._deliver(feed, batch)
                else:
                    feed.settle()
                if self._spool is not None:
                    self._spool.maybe_sync()
            except Exception as exc:  # a bug: keep the worker alive, say where, slow down
                where = traceback.extract_tb(exc.__traceback__)[-1]
                message = (
                    f"delivery worker error: {type(exc).__name__} at {where.name}:{where.lineno}"
                )
                self._stats.record_error(message)  # no str(exc): it could quote anything
                report(f"worker-{self.name}", f"sink {self.name}: {message}")
                feed.sleep(1.0)

    def _take(self) -> Batch | None:
        s = self._settings
        return self._feed.take(s.batch_max_events, s.batch_max_bytes)

    def _deliver(self, feed: Feed, batch: Batch) -> None:
        if self._spool is not None and self._spool_fsync_each_batch():
            self._spool.sync()
        try:
            outcome = self._transport.send(batch.lines)
        except RetryableError as exc:
            if not feed.abandoned:
                self._failed(feed, batch, exc)
            return
        except FatalError as exc:
            if not feed.abandoned:
                self._refused(feed, batch, exc)
            return
        except Exception as exc:  # a bug in a format or transport: keep the events, replayable
            where = traceback.extract_tb(exc.__traceback__)[-1]
            error = FatalError(f"{type(exc).__name__} at {where.name}:{where.lineno} while sending")
            if not feed.abandoned:
                self._refused(feed, batch, error)
            return
        if feed.abandoned:  # close gave up waiting and counted these as lost already
            return
        self._retry = self._retry.reset()
        if outcome.retry or outcome.reject:
            self._partly_delivered(feed, batch, outcome)
            return
        self._acknowledge(batch)
        self._stats.count_delivered(len(batch))
        feed.settle(len(batch))

    def _spool_fsync_each_batch(self) -> bool:
        return self._settings.spool_fsync == "batch"

    def _acknowledge(self, batch: Batch) -> None:
        if self._spool is not None and batch.records:
            self._spool.ack(batch.records)

    def _failed(self, feed: Feed, batch: Batch, exc: RetryableError) -> None:
        """Retryable: back off, then resend (memory) or re-read it from the spool."""
        self._retry = self._retry.increment(exc.retry_after)
        message = scrub_known(
            f"{exc} (attempt {self._retry.attempt}, next in {self._retry.delay:.2f} s)"
        )
        self._stats.record_error(message)
        report(f"retry-{self.name}", f"sink {self.name}: delivery failed, will retry: {message}")
        if self._spool is not None:
            assert batch.records is not None
            self._spool.release(batch.records)
            self._stats.count_retried(len(batch))
            feed.recheck()
            feed.settle()
        elif self._retry.is_exhausted():
            self._stats.count_dropped("retry_exhausted", len(batch))
            report(
                f"exhausted-{self.name}",
                f"sink {self.name}: gave up on {len(batch)} events after "
                f"{self._retry.elapsed():.0f} s of failures ({exc})",
            )
            feed.settle(len(batch))
        else:
            self._stats.count_retried(len(batch))
            self._work.appendleft(batch)
            feed.settle()
        feed.sleep(self._retry.delay)

    def _refused(self, feed: Feed, batch: Batch, exc: FatalError) -> None:
        """Fatal: split on 413, else dead-letter; retrying the same request cannot help.

        Unless the dead-letter file cannot be written: then the batch is kept (in the spool,
        or in memory within `retry_max_duration`) and sent again after a backoff, and only
        acknowledged once its dead letters are on disk."""
        self._stats.record_error(scrub_known(str(exc)))
        if exc.status == 413 and len(batch) > 1:
            self._retry = self._retry.reset()
            first, second = batch.split()
            self._work.appendleft(second)
            self._work.appendleft(first)
            feed.settle()
            return
        kept = self._dead_letter.refuse(batch.lines, status=exc.status, response=exc.body)
        if kept is not None:
            self._failed(feed, batch, kept)
            return
        self._retry = self._retry.reset()
        self._acknowledge(batch)
        feed.settle(len(batch))

    def _partly_delivered(self, feed: Feed, batch: Batch, outcome: Outcome) -> None:
        """Some items failed inside a 2xx reply: dead-letter the rejected, retry the rest."""
        failed = set(outcome.retry) | set(outcome.reject)
        done = [i for i in range(len(batch)) if i not in failed]
        rejected = batch.subset(sorted(set(outcome.reject)))
        retry_items = set(outcome.retry) - set(outcome.reject)
        self._acknowledge(batch.subset(done))
        self._stats.count_delivered(len(done))
        error = RetryableError(f"{len(retry_items)} items to retry", status=outcome.status)
        if rejected.lines:
            kept = self._dead_letter.refuse(
                rejected.lines,
                status=outcome.status,
                response=outcome.detail,
                reason="rejected_item",
            )
            if kept is None:
                self._acknowledge(rejected)
            else:  # sent again with the items to retry
                retry_items |= set(outcome.reject)
                rejected, error = batch.subset(()), kept
        feed.settle(len(done) + len(rejected))
        if retry_items:
            self._failed(feed, batch.subset(sorted(retry_items)), error)

"""The delivery engine: bounded queue, batching, retry, disk spool and dead-letter.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

It knows neither HTTP nor a sink: a sink (`bridge.sinks.http`) builds a feed, a transport
(which says how each send went, as a `bridge.outcome.Outcome`), a dead-letter file and a
`Retry`, and hands them to one `DeliveryEngine`.

engine.py      DeliveryEngine: the one worker loop (take, send, settle the outcome), flush/close
feed.py        Feed: what the worker takes from and settles with, when it wakes (Batch)
memoryfeed.py  MemoryFeed: the bounded in-memory queue with its overflow policies
spoolfeed.py   SpoolFeed: the disk spool used as the queue
spool/         Spool: the write-ahead log on disk (its design: the package docstring)
retry.py       Retry: the immutable backoff value; Retry-After parsing
deadletter.py  DeadLetter: the 0600 JSON-lines file of refused events
transport.py   Transport: what a sender (bridge.sinks.httptransport) must provide
"""

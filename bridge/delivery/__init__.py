"""The HTTP delivery engine: bounded queue, batching, retry, disk spool and dead-letter.

engine.py      DeliveryEngine: the worker thread, retry loop, flush/close, fork reset
feed.py        Feed: what the worker reads from, and when it wakes (Batch, Batching)
queue.py       MemoryFeed: the bounded in-memory queue with its overflow policies
spoolfeed.py   SpoolFeed: the disk spool used as the queue
spool/         Spool: the write-ahead log on disk (its design: the package docstring)
retry.py       Retry: the immutable retry policy; Retry-After parsing
deadletter.py  DeadLetter: the 0600 JSON-lines file of refused events
transport.py   Transport / Outcome: what a sender (bridge.sinks.http) must provide
"""

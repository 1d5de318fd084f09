"""The HTTP delivery engine: bounded queue, batching, retry, disk spool and dead-letter.

engine.py      DeliveryEngine: the worker thread, retry loop, flush/close, fork reset
feed.py        Feed: what the worker reads from, and when it wakes (Batch, Batching)
queue.py       MemoryFeed: the bounded in-memory queue with its overflow policies
spoolfeed.py   SpoolFeed: the disk spool used as the queue
spool.py       Spool: the write-ahead log on disk (the facade: appends, fsync, lifecycle)
spooltable.py  the spool's segment table: accounting, eviction, deletion, adoption
spoolread.py   the spool's read side: runs from the in-memory tail or the disk
spoolack.py    the spool's acknowledgements: ack and release, the saved prefix
spooltypes.py  SpoolRecord, SpoolRead and the spool's per-segment bookkeeping
segments.py    the spool's on-disk layout, re-exported from the three modules below
owners.py      file names, owners' lock files, adopting dead owners' segments
segheader.py   the segment header: format version and acknowledgement slots
records.py     the record frame: encoding, parsing, counting
retry.py       Retry: the immutable retry policy; Retry-After parsing
deadletter.py  DeadLetter: the 0600 JSON-lines file of refused events
transport.py   Transport / Outcome: what a sender (bridge.sinks.http) must provide
"""

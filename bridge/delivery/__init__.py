"""The HTTP delivery engine: bounded queue, batching, retry, disk spool and dead-letter."""

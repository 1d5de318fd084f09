"""What every sink promises the extension (its counters are `bridge.stats.SinkStats`).

A sink receives encoded event lines (UTF-8 JSON ending in b"\\n"). `submit` is called on the
request thread and must never wait on I/O; the sink owns any background thread it needs.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Sink"]


class Sink(Protocol):
    """The interface the extension uses; file, stdout and http sinks implement it."""

    name: str

    def submit(self, line: bytes) -> bool:
        """Take one encoded line; return whether it was accepted (False: dropped and counted).

        Never raises and never waits on network I/O.
        """
        ...

    def submit_many(self, lines: list[bytes]) -> int:
        """Take several lines at once, in order (one request's events); return how many were
        accepted (the others are dropped and counted). As cheap for the caller as one
        `submit`: one `write()`, one lock or one spool append for all of them. Never raises
        and never waits on network I/O.
        """
        ...

    def flush(self, timeout: float) -> bool:
        """Wait until every line accepted so far is delivered; False when `timeout` ran out."""
        ...

    def close(self, timeout: float) -> bool:
        """Flush within `timeout`, then stop threads and release files; idempotent."""
        ...

    def stats(self) -> dict[str, Any]:
        """The sink's counters, as `SinkStats.snapshot()` returns them."""
        ...

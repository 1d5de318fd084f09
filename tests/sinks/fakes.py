"""Stand-ins for a sink's `Output` (the no-op maintenance fakes share), and a watched condition."""

from __future__ import annotations

import threading


class QuietOutput:
    """An output that never needs waiting, reopening, syncing or closing; subclasses write."""

    batch_bytes = 1 << 62

    def settle_partial(self, rest: int) -> None:
        return None

    def wait_writable(self, timeout: float) -> None:
        return None

    def maintenance_due(self, now: float) -> bool:
        return False

    def maintain(self) -> None:
        return None

    def fsync(self) -> None:
        return None

    def close(self) -> None:
        return None


class Watched(threading.Condition):
    """A condition that tells when someone waits on it."""

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock)
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)

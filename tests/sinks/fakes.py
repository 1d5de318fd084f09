"""Stand-ins for a sink's `Output`: the no-op maintenance every fake shares."""

from __future__ import annotations


class QuietOutput:
    """An output that never needs waiting, reopening, syncing or closing; subclasses write."""

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

"""What the delivery engine needs from a transport, and what a transport tells it back.

A transport sends one batch of encoded lines and either returns an `Outcome` (the collector
accepted the request; some items may still have failed) or raises `RetryableError` /
`FatalError` (`bridge.errors`), whose messages never hold secrets. `bridge.sinks.http` has the
HTTP one; tests use scripted ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["ALL_DELIVERED", "Outcome", "Transport"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a successful (2xx) reply said about single items, by index into the batch."""

    retry: tuple[int, ...] = ()
    reject: tuple[int, ...] = ()
    status: int = 200
    detail: str = ""


ALL_DELIVERED = Outcome()


class Transport(Protocol):
    """Sends one batch. Raises `RetryableError` or `FatalError`; messages hold no secrets.

    `abort` may be called from another thread while `send` runs (close gave up waiting): the
    send must then end promptly with `RetryableError`, and later sends must fail at once.
    """

    def send(self, lines: Sequence[bytes]) -> Outcome: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...

    def after_fork_in_child(self) -> None: ...

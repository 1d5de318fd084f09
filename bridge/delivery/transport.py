"""What the delivery engine needs from a transport: send one batch, say how it went.

    submit -> feed -> engine -> transport(format) -> outcome -> feed.ack

A transport sends one batch of encoded lines and returns a `bridge.outcome.Outcome`
(delivered, retry later, split, rejected, partly delivered); every status policy is the
transport's (the HTTP one reads replies through its format's `StatusPolicy`). It may also raise
the public `RetryableError` / `FatalError` (`bridge.errors`): the engine reads those as
`RetryLater` / `Rejected` (or `Split`, for a status asking for smaller requests). Messages
never hold secrets. `bridge.sinks.httptransport` has the HTTP transport; tests use scripted
ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from bridge.outcome import Outcome

__all__ = ["Transport"]


class Transport(Protocol):
    """Sends one batch and says how it went; messages hold no secrets.

    `abort` may be called from another thread while `send` runs (close gave up waiting): the
    send must then end promptly with `RetryLater`, and later sends must fail at once.
    `after_fork_in_child` runs in a forked child (the engine calls it): drop the parent's
    connections without closing them.
    """

    def send(self, lines: Sequence[bytes]) -> Outcome: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...

    def after_fork_in_child(self) -> None: ...

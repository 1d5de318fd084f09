"""The bridge's exception hierarchy; a transport may raise the delivery errors.

BridgeError
├── ConfigError          bad configuration, raised by init_app: every problem (key, value,
│                        expectation) found in one pass, listed in `problems`
└── DeliveryError        a sink could not deliver a batch
    ├── RetryableError   try again later (timeouts, 408/429/5xx, connection errors)
    └── FatalError       retrying cannot help (other 4xx, a malformed batch)

The HTTP transport returns typed outcomes (`bridge.outcome`) rather than raising; a transport
that raises these gets them read as outcomes by the delivery engine (`RetryableError` as
`RetryLater`, `FatalError` by its status: `Split` for 413, else `Rejected`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bridge.outcome import DEFAULT_POLICY, Outcome, RetryLater


class BridgeError(Exception):
    """Base class of every error the bridge raises on purpose."""


class _NoValue:
    """Marks a problem whose value is not shown (text that may hold a secret)."""

    def __repr__(self) -> str:
        return "(not shown)"


NO_VALUE: Any = _NoValue()


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One configuration mistake: the key, the value as written, and what was expected.

    `value` is NO_VALUE when showing it could leak a secret; the reason is then in `expected`.
    """

    key: str
    value: object
    expected: str

    def __str__(self) -> str:
        if self.value is NO_VALUE:
            return f"{self.key}: {self.expected}"
        return f"{self.key}={self.value!r}: expected {self.expected}"


class ConfigError(BridgeError, ValueError):
    """The configuration is wrong; `problems` lists every mistake found, in order.

    `key`, `value` and `expected` describe the first one. The message names each key, its
    value as written (never after `${NAME}` interpolation, never a header value) and what was
    expected, one per line.
    """

    def __init__(
        self, key: str, value: object, expected: str, *, more: Iterable[ConfigProblem] = ()
    ) -> None:
        self.key = key
        self.value = value
        self.expected = expected
        self.problems = [ConfigProblem(key, value, expected), *more]
        if len(self.problems) == 1:
            message = f"bridge config {self.problems[0]}"
        else:
            lines = [f"bridge config has {len(self.problems)} problems:"]
            message = "\n  ".join(lines + [str(problem) for problem in self.problems])
        super().__init__(message)

    @classmethod
    def of(cls, problems: Iterable[ConfigProblem]) -> ConfigError:
        """One error reporting every problem (at least one)."""
        first, *more = problems
        return cls(first.key, first.value, first.expected, more=more)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_config_error, (self.problems,))


def _rebuild_config_error(problems: list[ConfigProblem]) -> ConfigError:
    return ConfigError.of(problems)


class DeliveryError(BridgeError):
    """A batch could not be delivered."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body

    def outcome(self) -> Outcome:
        """What this failure means for the batch, as the engine settles it: refused, by its
        status under the default policy (`Split` for 413, else `Rejected`)."""
        return DEFAULT_POLICY.refusal(str(self), self.status, self.body)


class RetryableError(DeliveryError):
    """Delivery failed for a reason that may pass: the batch is retried.

    `retry_after` is the delay the collector asked for (Retry-After), in seconds, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.retry_after = retry_after

    def outcome(self) -> RetryLater:
        return RetryLater(str(self), self.status, self.retry_after, self.body)


class FatalError(DeliveryError):
    """Delivery failed for a reason retrying cannot fix: the batch is dead-lettered (or, with
    a status that asks for smaller requests, such as 413, sent again in halves)."""

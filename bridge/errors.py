"""The bridge's exception hierarchy; sinks raise these and the engine branches on the type.

BridgeError
├── ConfigError          bad configuration, raised by init_app (names key, value, expectation)
└── DeliveryError        a sink could not deliver a batch
    ├── RetryableError   try again later (timeouts, 408/429/5xx, connection errors)
    └── FatalError       retrying cannot help (other 4xx, a malformed batch)
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base class of every error the bridge raises on purpose."""


class ConfigError(BridgeError, ValueError):
    """A configuration value is wrong; the message names the key, the value and the expectation."""

    def __init__(self, key: str, value: object, expected: str) -> None:
        self.key = key
        self.value = value
        self.expected = expected
        super().__init__(f"bridge config {key}={value!r}: expected {expected}")


class DeliveryError(BridgeError):
    """A batch could not be delivered."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


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


class FatalError(DeliveryError):
    """Delivery failed for a reason retrying cannot fix: the batch is dead-lettered."""

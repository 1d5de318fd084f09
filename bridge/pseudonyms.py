"""Pseudonymization: personal data written as keyed pseudonyms, or IP addresses truncated.

`pseudonymize = ["client.address", "user.email"]` with `pseudonymize_key = "${PSEUDONYM_KEY}"`
writes each of those fields as `hmac:<key id>:<32 hex>`, HMAC-SHA256 of the value under the
key: one person's events still link together (the same value gives the same pseudonym), but
the raw value is never stored, and without the key it cannot be recomputed from a guess (an
unkeyed hash of an IPv4 address is reversed by trying all 2^32). With
`pseudonymize_ip = "truncate"`, IP address fields keep their network instead (IPv4 /24, IPv6
/48), which needs no key but links only by network.

Values are normalized before hashing, so trivial variants link: text is stripped and
case-folded (`Alice@Example.COM` is `alice@example.com`), an IP address is written in its
standard form (`::FFFF:1.2.3.4` is `::ffff:1.2.3.4`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from typing import Any

from bridge.audit.chain import AuditKey
from bridge.auditsettings import IP_FIELDS

__all__ = ["PSEUDONYM_PREFIX", "Pseudonymizer", "truncate_ip"]

PSEUDONYM_PREFIX = "hmac:"
REDACTED = "[REDACTED]"
_DOMAIN = b"flask-signal-bridge pseudonym\x00"


def truncate_ip(text: str) -> str | None:
    """The address's network (IPv4 /24, IPv6 /48) as an address, or None when `text` is not
    an IP address."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    prefix = 24 if address.version == 4 else 48
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    return str(network.network_address)


def _normalized(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return text.strip().casefold()


class Pseudonymizer:
    """Which fields are pseudonymized, and how; see the module docstring."""

    __slots__ = ("_key", "fields", "ip_mode")

    def __init__(self, fields: Iterable[str], key: str | None, ip_mode: str = "hmac") -> None:
        self.fields = frozenset(fields)
        self.ip_mode = ip_mode
        self._key = AuditKey.of(key) if key else None

    @classmethod
    def of(cls, settings: Any) -> Pseudonymizer | None:
        """From `Settings` (`pseudonymize`, `pseudonymize_key`, `pseudonymize_ip`); None when
        neither a field nor a key is configured."""
        if not settings.pseudonymize and not settings.pseudonymize_key:
            return None
        return cls(settings.pseudonymize, settings.pseudonymize_key, settings.pseudonymize_ip)

    @property
    def kid(self) -> str | None:
        """The key's public id (in every pseudonym): it changes when the key is rotated."""
        return None if self._key is None else self._key.kid[:8]

    def pseudonym(self, value: Any) -> str:
        """`hmac:<key id>:<32 hex>` of the normalized value; `[REDACTED]` without a key."""
        if self._key is None:
            return REDACTED
        digest = hmac.new(
            self._key.secret, _DOMAIN + _normalized(value).encode(errors="replace"), hashlib.sha256
        ).hexdigest()
        return f"{PSEUDONYM_PREFIX}{self._key.kid[:8]}:{digest[:32]}"

    def field(self, name: str, value: Any) -> Any:
        """What a configured field's value is written as (None stays None)."""
        if value is None:
            return None
        if self.ip_mode == "truncate" and name in IP_FIELDS and isinstance(value, str):
            truncated = truncate_ip(value)
            if truncated is not None:
                return truncated
        return self.pseudonym(value)

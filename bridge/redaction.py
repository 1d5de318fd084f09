"""What counts as a secret, and how to hide it in keys and in free text.

Two questions, answered in one place for the whole bridge:

- Is this key sensitive? (`SensitiveKeys`: a signal argument, a query parameter, a form field.)
  Its value is replaced by `[REDACTED]`, at any depth.
- Does this text quote a secret? (`Scrubber`: an exception message, a stack trace, a
  collector's reply, an error in `stats()` or on stderr.) URL credentials, the values of
  sensitive `name=value` parameters and every known secret (a configured header value, a
  password in a sink URL, a sensitive form value of the current request) are replaced.

Secrets the process knows of (header values and URL passwords of every configured sink) are
registered once with `register_secrets`; `scrub_known` hides them in any text, which is how
the bridge's own stderr lines and counters stay clean.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Callable, Iterable

__all__ = [
    "DEFAULT_REDACT_TERMS",
    "REDACTED",
    "Scrubber",
    "SensitiveKeys",
    "normalize_key",
    "register_secrets",
    "scrub_known",
    "secret_variants",
]

REDACTED = "[REDACTED]"

DEFAULT_REDACT_TERMS = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "session",
    "csrf",
    "card_number",
    "cvv",
)

# A secret shorter than this is not scrubbed as a substring: it would mangle innocent text.
MIN_SECRET_CHARS = 4


def normalize_key(key: str) -> str:
    """Lower case, `-` and spaces to `_`: `X-Api-Key` and `x_api_key` are the same key."""
    return key.lower().replace("-", "_").replace(" ", "_")


class SensitiveKeys:
    """Decides whether a key names a secret: normalized, it contains one of the terms.

    Answers are cached, since the same few keys recur on every event.
    """

    _CACHE_LIMIT = 4096

    def __init__(self, terms: Iterable[str]) -> None:
        self.terms = tuple(terms)
        self._cache: dict[str, bool] = {}

    def __call__(self, key: str) -> bool:
        answer = self._cache.get(key)
        if answer is None:
            normalized = normalize_key(key)
            answer = any(term in normalized for term in self.terms)
            if len(self._cache) < self._CACHE_LIMIT:
                self._cache[key] = answer
        return answer


def secret_variants(value: str) -> set[str]:
    """The substrings of a header value that are secret on their own.

    `Bearer abc123` is echoed by collectors as `invalid token abc123`, so the credential after
    an auth scheme counts too; a Basic credential also as decoded `user:password` and password.
    """
    value = value.strip()
    variants = {value}
    scheme, _, credential = value.partition(" ")
    credential = credential.strip()
    if credential:
        variants.add(credential)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credential, validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                decoded = ""
            if decoded:
                variants.add(decoded)
                variants.add(decoded.partition(":")[2])
    return {v for v in variants if len(v) >= MIN_SECRET_CHARS}


# scheme://user:password@host -> scheme://[REDACTED]@host
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s'\"<>]+)@")
# name=value, as in a query string, a form body or a log message
_NAME_VALUE = re.compile(r"(?P<name>[A-Za-z0-9_.\-\[\]%]+)=(?P<value>[^&\s'\"<>#;,)]*)")


class Scrubber:
    """Hides secrets in free text; never raises.

    `secrets` are literal values to replace wherever they appear (longest first);
    `is_sensitive` decides which `name=value` parameters have their value replaced.
    """

    def __init__(
        self,
        secrets: Iterable[str] = (),
        is_sensitive: Callable[[str], bool] | None = None,
    ) -> None:
        found: set[str] = set()
        for secret in secrets:
            found |= secret_variants(secret)
        self.secrets = tuple(sorted(found, key=len, reverse=True))
        self.is_sensitive = is_sensitive or SensitiveKeys(DEFAULT_REDACT_TERMS)

    def with_secrets(self, secrets: Iterable[str]) -> Scrubber:
        """A scrubber that also hides `secrets` (values of one request, for example)."""
        extra = [s for s in secrets if len(s) >= MIN_SECRET_CHARS]
        if not extra:
            return self
        return Scrubber((*self.secrets, *extra), self.is_sensitive)

    def __call__(self, text: str) -> str:
        try:
            for secret in self.secrets:
                if secret in text:
                    text = text.replace(secret, REDACTED)
            if "://" in text:
                text = _URL_USERINFO.sub(rf"\g<scheme>{REDACTED}@", text)
            if "=" in text:
                text = _NAME_VALUE.sub(self._replace_value, text)
            return text
        except Exception:  # never let scrubbing fail a report; say less instead
            return "[text withheld: scrubbing failed]"

    def _replace_value(self, match: re.Match[str]) -> str:
        name = match.group("name")
        if match.group("value") and self.is_sensitive(name):
            return f"{name}={REDACTED}"
        return match.group(0)


_known_lock = threading.Lock()
_known = Scrubber()


def register_secrets(secrets: Iterable[str]) -> None:
    """Add configured secrets (header values, URL passwords) to what `scrub_known` hides."""
    global _known
    with _known_lock:
        _known = _known.with_secrets(secret_variants_all(secrets))


def secret_variants_all(secrets: Iterable[str]) -> list[str]:
    out: list[str] = []
    for secret in secrets:
        out.extend(secret_variants(secret))
    return out


def scrub_known(text: str) -> str:
    """`text` with every registered secret, URL credential and sensitive parameter hidden."""
    return _known(text)

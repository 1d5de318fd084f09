"""What counts as a secret, and how to hide it in keys and in free text.

Two questions, answered in one place for the whole bridge:

- Is this key sensitive? (`SensitiveKeys`: a signal argument, a query parameter, a form field.)
  Its value is replaced by `[REDACTED]`, at any depth.
- Does this text quote a secret? (`Scrubber`: an exception message, a stack trace, a
  collector's reply, an error in `stats()` or on stderr.) URL credentials, the values of
  sensitive parameters (`name=value`, `'name': value`, `Name: value` header lines) and every
  known secret (a configured header value, a password in a sink URL, a sensitive form value of
  the current request) are replaced.

Secrets the process knows of (header values and URL passwords of every configured sink) are
registered once with `register_secrets`; `scrub_known` hides them in any text, which is how
the bridge's own stderr lines and counters stay clean.

Key matching. A key is split into lower-case words on separators, digits and camelCase
(`X-Amz-Signature`, `refreshToken`, `user[password]`, `cvv2`). A term of at most four letters
(`pwd`, `pin`, `auth`, `sig`) must be a whole word, optionally plural, so `author`, `spinner`
and `signal` are innocent; a longer term may sit inside a word (`newpassword`,
`passwordHash`). A key whose last word measures rather than holds the secret (`token_count`,
`password_length`, `token_type`), a few words that merely contain a term (`tokenizer`,
`secretary`) and LLM usage counters (`prompt_tokens`) are innocent. Over-redaction is the safe
failure: `auth_provider` or `pass_rate` are redacted. `code` is not a default term (it would
hide every `status_code`); OAuth codes are single-use and bound to their client.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Callable, Iterable
from urllib.parse import unquote, unquote_plus, urlsplit

__all__ = [
    "DEFAULT_REDACT_TERMS",
    "REDACTED",
    "Scrubber",
    "SensitiveKeys",
    "key_words",
    "normalize_key",
    "register_secrets",
    "scrub_known",
    "secret_variants",
    "url_secrets",
]

REDACTED = "[REDACTED]"

DEFAULT_REDACT_TERMS = (
    # passwords and one-time codes
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "pass",
    "pin",
    "otp",
    "totp",
    # tokens, keys, credentials, signed URLs (X-Amz-Signature, X-Goog-Credential, Azure `sig`)
    "secret",
    "token",
    "api_key",
    "apikey",
    "private_key",
    "access_key",
    "credential",
    "signature",
    "sig",
    "jwt",
    "dsn",
    # HTTP authentication and sessions
    "authorization",
    "auth",
    "cookie",
    "session",
    "sessid",
    "sid",
    "csrf",
    "xsrf",
    # payment cards and identity
    "card_number",
    "cvv",
    "cvc",
    "ssn",
)

# A secret shorter than this is not scrubbed as a substring: it would mangle innocent text.
MIN_SECRET_CHARS = 4
# Terms up to this many letters must be whole words: `pin` is not in `spinner`.
_SHORT_TERM_CHARS = 4
# A key whose last word is one of these measures a secret rather than holds it.
_MEASURES = frozenset(
    [
        "count",
        "counts",
        "len",
        "length",
        "size",
        "ttl",
        "type",
        "total",
        "expires",
        "expiry",
        "age",
        "limit",
        "max",
        "min",
    ]
)
# Words that contain a term and name no secret.
_INNOCENT_WORDS = frozenset(
    ["tokenize", "tokenized", "tokenizer", "tokenizers", "tokenization", "secretary", "secretaries"]
)
# LLM usage counters: `prompt_tokens`, `max_tokens` are numbers, not credentials.
_COUNTED_TOKENS = frozenset(
    ["prompt", "completion", "input", "output", "cached", "reasoning", "total", "max", "min", "num"]
)

_WORDS = re.compile(r"[^\W\d_]+|\d+")
# camelCase words of an ASCII key: `XAmzSignature` -> X, Amz, Signature; `APIKey` -> API, Key
_ASCII_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NOT_ALNUM = re.compile(r"[\W_]+")


def key_words(key: str) -> list[str]:
    """The lower-case words of a key: `X-Amz-Signature` and `xAmzSignature` give the same."""
    if "%" in key:
        key = unquote(key)
    if key.islower():
        return _WORDS.findall(key)
    if key.isascii():
        return [word.lower() for word in _ASCII_WORDS.findall(key)]
    return _WORDS.findall(_CAMEL.sub("_", key).lower())


def normalize_key(key: str) -> str:
    """The canonical form of a key or term: its words joined by `_` (`X-Api-Key` is `x_api_key`)."""
    return "_".join(key_words(key))


class SensitiveKeys:
    """Decides whether a key names a secret (see the module docstring for the rules).

    `terms` are matched the same way whether they are defaults or configured `redact` terms.
    Answers are cached, since the same few keys recur on every event; keys longer than 256
    characters are answered but never stored.
    """

    _CACHE_LIMIT = 4096
    _CACHED_KEY_CHARS = 256

    def __init__(self, terms: Iterable[str]) -> None:
        self.terms = tuple(terms)
        words_of = [key_words(term) for term in self.terms]
        compacts = {"".join(words) for words in words_of} - {""}
        self._long = tuple(sorted(c for c in compacts if len(c) > _SHORT_TERM_CHARS))
        # short terms of one word, singular and plural, matched by set look-ups
        self._short = frozenset(
            form
            for words in words_of
            if len(words) == 1 and len(words[0]) <= _SHORT_TERM_CHARS
            for form in (words[0], words[0] + "s")
        )
        # short terms of several words (`x_1`): `_x_1_` must be in `_a_x_1_`
        self._phrases = tuple(
            "_" + "_".join(words) + "_"
            for words in words_of
            if len(words) > 1 and len("".join(words)) <= _SHORT_TERM_CHARS
        )
        # Most keys hold no term at all, not even across words: one search says so first.
        self._any = re.compile("|".join(map(re.escape, sorted(compacts))) or "(?!)")
        self._cache: dict[str, bool] = {}

    def __call__(self, key: str) -> bool:
        answer = self._cache.get(key)
        if answer is None:
            answer = self._decide(key)
            if len(self._cache) < self._CACHE_LIMIT and len(key) <= self._CACHED_KEY_CHARS:
                self._cache[key] = answer
        return answer

    def _decide(self, key: str) -> bool:
        flat = _NOT_ALNUM.sub("", unquote(key) if "%" in key else key).lower()
        if self._any.search(flat) is None:
            return False
        words = key_words(key)
        if len(words) > 1 and (
            words[-1] in _MEASURES or (words[-1] == "tokens" and words[-2] in _COUNTED_TOKENS)
        ):
            return False
        if not self._short.isdisjoint(words):
            return True
        if self._phrases:
            padded = "_" + "_".join(words) + "_"
            if any(phrase in padded for phrase in self._phrases):
                return True
        compact = "".join(w for w in words if w not in _INNOCENT_WORDS)
        return any(term in compact for term in self._long)


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


def url_secrets(url: str, is_sensitive: Callable[[str], bool] | None = None) -> list[str]:
    """The secrets a URL carries, raw and decoded: its password (or a user name standing
    alone, as in `https://TOKEN@github.com`) and the values of its sensitive query parameters."""
    is_sensitive = is_sensitive or _default_keys
    found: list[str] = []
    try:
        parts = urlsplit(url)
        credential = parts.password if parts.password is not None else parts.username
    except ValueError:
        return found
    if credential:
        found += [credential, unquote(credential)]
    for pair in parts.query.split("&"):
        name, sep, value = pair.partition("=")
        if sep and value and is_sensitive(unquote_plus(name)):
            found += [value, unquote_plus(value)]
    return [s for s in dict.fromkeys(found) if len(s) >= MIN_SECRET_CHARS]


# --- free text ---------------------------------------------------------------------------------

_QUOTED = r"""'(?:[^'\\\n]|\\.){0,4096}'|"(?:[^"\\\n]|\\.){0,4096}\""""
_BARE = r"""[^&\s'"<>#;,(){}\[\]]{1,4096}"""
_NAME_CHARS = r"A-Za-z0-9_.\-\[\]%"

# scheme://user:password@host -> scheme://[REDACTED]@host (a raw `@` in a password included).
# Anchored on `://` alone: matching the scheme too made each start in a long run of scheme
# characters (`a.a.a...`) rescan the run, quadratic on hostile exception text.
_URL_USERINFO = re.compile(r"://(?P<value>[^/\s'\"<>]+)@")
_PARAMETER_FORMS = (
    # name=value (query strings, form bodies, keyword reprs); `name = "x"` only when quoted
    re.compile(
        rf"(?<![{_NAME_CHARS}])(?P<name>[{_NAME_CHARS}]+)"
        rf"(?:=|[ \t]*=[ \t]*(?=['\"]))(?P<value>{_QUOTED}|{_BARE})"
    ),
    # 'name': value and "name": value (dict reprs, JSON); nested containers are left to their keys
    re.compile(
        rf"(?P<q>['\"])(?P<name>[^'\"\n]{{1,128}})(?P=q)[ \t]*:[ \t]*"
        rf"(?P<value>{_QUOTED}|[^\s'\"<>,{{}}\[\]()]{{1,4096}})"
    ),
    # ('name', 'value') pairs (MultiDict reprs)
    re.compile(
        rf"\([ \t]*(?P<q>['\"])(?P<name>[^'\"\n]{{1,128}})(?P=q),[ \t]*(?P<value>{_QUOTED})"
    ),
    # header lines: `Authorization: Bearer x`, `X-Api-Key: x` (a name without a hyphen,
    # such as `CSRFError: ...`, is an exception line, not a header)
    re.compile(
        r"(?im)^[ \t]*(?P<name>authorization|cookie|[A-Za-z0-9]{1,64}(?:-[A-Za-z0-9]{1,64}){1,8})"
        r":[ \t]*(?P<value>[^\r\n]{1,8192})"
    ),
)


class Scrubber:
    """Hides secrets in free text; never raises.

    `secrets` are literal values to replace wherever they appear (longest first, with their
    `secret_variants`); `is_sensitive` decides which parameters have their value replaced.
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
        self.is_sensitive = is_sensitive or _default_keys

    def with_secrets(self, secrets: Iterable[str]) -> Scrubber:
        """A scrubber that also hides `secrets` (values of one request, for example)."""
        extra = [s for s in secrets if len(s) >= MIN_SECRET_CHARS and s not in self.secrets]
        if not extra:
            return self
        return Scrubber((*self.secrets, *extra), self.is_sensitive)

    def __call__(self, text: str) -> str:
        try:
            for secret in self.secrets:
                if secret in text:
                    text = text.replace(secret, REDACTED)
            if "://" in text:
                text = _URL_USERINFO.sub(self._hide_value, text)
            if "=" in text:
                text = _PARAMETER_FORMS[0].sub(self._hide_sensitive, text)
            if ":" in text:
                text = _PARAMETER_FORMS[1].sub(self._hide_sensitive, text)
                text = _PARAMETER_FORMS[3].sub(self._hide_sensitive, text)
            if "(" in text:
                text = _PARAMETER_FORMS[2].sub(self._hide_sensitive, text)
            return text
        except Exception:  # never let scrubbing fail a report; say less instead
            return "[text withheld: scrubbing failed]"

    @staticmethod
    def _hide_value(match: re.Match[str]) -> str:
        """The match with its `value` group replaced (inside the quotes, if quoted)."""
        value = match.group("value")
        if len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]:
            hidden = f"{value[0]}{REDACTED}{value[0]}"
        else:
            hidden = REDACTED
        start, end = match.span("value")
        whole = match.group(0)
        offset = match.start()
        return whole[: start - offset] + hidden + whole[end - offset :]

    def _hide_sensitive(self, match: re.Match[str]) -> str:
        if self.is_sensitive(match.group("name")):
            return self._hide_value(match)
        return match.group(0)


_default_keys = SensitiveKeys(DEFAULT_REDACT_TERMS)
_known_lock = threading.Lock()
_known = Scrubber()


def register_secrets(secrets: Iterable[str]) -> None:
    """Add configured secrets (header values, URL passwords) to what `scrub_known` hides."""
    global _known
    with _known_lock:
        _known = _known.with_secrets(secret_variants_all(secrets))


def secret_variants_all(secrets: Iterable[str]) -> list[str]:
    """Every `secret_variants` of every secret, in one list."""
    out: list[str] = []
    for secret in secrets:
        out.extend(secret_variants(secret))
    return out


def scrub_known(text: str) -> str:
    """`text` with every registered secret, URL credential and sensitive parameter hidden."""
    return _known(text)

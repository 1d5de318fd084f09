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
standard form (`::FFFF:1.2.3.4` is `::ffff:1.2.3.4`), a number is its decimal text.

Which fields: a field's name is its dotted path, nested keys joined with "." (`{"user":
{"email": ...}}` holds `user.email`, as does a flat key `"user.email"`; lists add nothing to
the path). A configured name matches every field whose path ends with it on a dot, so a bare
name (`email`) matches that key at any depth, and an argument kept as `args.user.email` (its
name is the bridge's, `bridge.eventlines.PROTECTED_KEYS`) still matches `user.email`. Names
match whatever their case (`Email` and `EMAIL` are `email`: an app's spelling must not let a
value through). Every value at or below a matching field is hidden (a list of addresses item by
item, a mapping's keys as well as its values); None stays None, a `[REDACTED]` value stays
redacted, and the envelope (`timestamp`, `event`, `service.name`, ...) is never touched. Any
field may be listed, `user.id` included.

Where: `Pseudonymizer.apply` runs on what is about to be encoded, in the two places a line is
made (`bridge.eventlines.EventLines` for a spliced line and its request context fragment,
`bridge.emitter.Emitter` for an event built as a dict, before `capture_events()` gets its
copy), so every writer (signals, the request context, log records, structlog) is covered by
construction and no cache upstream can let a raw value through. When no field is listed the
emitter holds no Pseudonymizer (`for_fields` gives None) and a line costs one attribute test.
Free text is not searched: an e-mail inside a log message or an exception's text is written
as it is.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import string
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, unquote, unquote_plus

from bridge.audit.chain import AuditKey
from bridge.auditsettings import IP_FIELDS
from bridge.events import ENVELOPE_KEYS

__all__ = ["PSEUDONYM_PREFIX", "Pseudonymizer", "truncate_ip"]

PSEUDONYM_PREFIX = "hmac:"
REDACTED = "[REDACTED]"
# A whole-segment Flask/werkzeug URL variable: `<name>` or `<converter(args):name>`.
_VARIABLE = re.compile(r"<(?:([a-zA-Z_][\w]*)(?:\([^)]*\))?:)?([a-zA-Z_][\w]*)>")
_DOMAIN = b"flask-signal-bridge pseudonym\x00"
_DIGEST_CHARS = 32
_MAX_CACHED = 4096  # distinct values remembered (one HMAC each); a flood of new ones resets it
_HEX = frozenset(string.hexdigits.lower())

_M = TypeVar("_M", bound=Mapping[Any, Any])


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

    __slots__ = (
        "_cache",
        "_folded",
        "_ip_cache",
        "_key",
        "_names",
        "_prefix",
        "_routes",
        "_truncating",
        "fields",
        "ip_mode",
    )

    def __init__(self, fields: Iterable[str], key: str | None, ip_mode: str = "hmac") -> None:
        self.fields = frozenset(fields)
        self._folded = {name.casefold(): name for name in self.fields}  # matched caselessly
        self.ip_mode = ip_mode
        self._key = AuditKey.of(key) if key else None
        self._prefix = "" if self._key is None else f"{PSEUDONYM_PREFIX}{self.kid}:"
        # The configured names whose IP address values are truncated rather than hashed.
        self._truncating = self.fields & IP_FIELDS if ip_mode == "truncate" else frozenset()
        # A field's path -> the configured name it ends with ("" for none): the same few
        # paths recur on every event, so each is matched once.
        self._names: dict[str, str] = {}
        # A text value -> what it is written as (one HMAC each): a user's recur too.
        self._cache: dict[str, str] = {}
        self._ip_cache: dict[str, str] = {}
        self._routes: dict[str, list[tuple[int, str]]] = {}  # route -> its hidden variables

    @classmethod
    def of(cls, settings: Any) -> Pseudonymizer | None:
        """From `Settings` (`pseudonymize`, `pseudonymize_key`, `pseudonymize_ip`); None when
        neither a field nor a key is configured."""
        if not settings.pseudonymize and not settings.pseudonymize_key:
            return None
        return cls(settings.pseudonymize, settings.pseudonymize_key, settings.pseudonymize_ip)

    @classmethod
    def for_fields(cls, settings: Any) -> Pseudonymizer | None:
        """What hides the configured fields of every event; None when none is listed (a key
        alone serves only `auth.attempted_user`)."""
        return cls.of(settings) if settings.pseudonymize else None

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
        return f"{self._prefix}{digest[:_DIGEST_CHARS]}"

    def field(self, name: str, value: Any) -> Any:
        """What a configured field's value is written as (None stays None)."""
        if value is None:
            return None
        if self.ip_mode == "truncate" and name in IP_FIELDS and isinstance(value, str):
            truncated = truncate_ip(value)
            if truncated is not None:
                return truncated
        return self.pseudonym(value)

    def apply(self, mapping: _M, *, top_level: bool = True) -> _M | dict[str, Any]:
        """`mapping` with every configured field hidden: a new dict when one was found, else
        `mapping` itself; never changed in place (the caller's dicts may be shared). At the
        top level (an event, its own part, its request context) envelope keys are left."""
        return self._mapping(mapping, "", top_level)

    def _mapping(self, mapping: _M, path: str, top_level: bool) -> _M | dict[str, Any]:
        out: dict[str, Any] | None = None
        names = self._names
        for key, value in mapping.items():
            text = key if type(key) is str else str(key)
            full = f"{path}.{text}" if path else text
            name = names.get(full)
            if name is None:
                name = self._learn(full)
            if name and not (top_level and text in ENVELOPE_KEYS):
                new = self._hide(name, value)
            elif top_level and text == "url.query" and type(value) is str:
                new = self._query(value)
            elif type(value) is dict or type(value) is list:
                new = self._nested(value, full)
            else:
                continue
            if new is not value:
                if out is None:
                    out = dict(mapping)
                out[key] = new
        if top_level and "http.route" in mapping:  # URL variables named like a field
            url_path, route = mapping.get("url.path"), mapping["http.route"]
            if type(url_path) is str and type(route) is str and "<" in route:
                hidden_path = self._path(url_path, route)
                if hidden_path != url_path:
                    if out is None:
                        out = dict(mapping)
                    out["url.path"] = hidden_path
        return mapping if out is None else out

    def _path(self, path: str, route: str) -> str:
        """`url.path` with the segments of URL variables named like a configured field hidden
        (`/users/<email>`): the route's segments laid over the path's last ones (a mount
        prefix comes first). A route with a variable spanning segments (`<path:...>`) is
        left alone: which segments are its value is not known."""
        variables = self._routes.get(route)
        if variables is None:
            variables = self._route_variables(route)
        if not variables:
            return path
        segments = path.split("/")
        offset = len(segments) - len(route.split("/"))
        if offset < 0:
            return path
        for index, name in variables:
            value = unquote(segments[offset + index])
            hidden = self._hide(name, value)
            if hidden != value:
                segments[offset + index] = quote(str(hidden), safe=":")
        return "/".join(segments)

    def _route_variables(self, route: str) -> list[tuple[int, str]]:
        """(segment index, configured name) of each variable of `route` named like a field;
        [] for a route with a variable that spans segments. Remembered per route."""
        found: list[tuple[int, str]] = []
        for index, segment in enumerate(route.split("/")):
            match = _VARIABLE.fullmatch(segment)
            if match is None:
                if "<" in segment:  # part of a segment, or a converter we cannot place
                    found = []
                    break
                continue
            converter, name = match.group(1) or "", match.group(2)
            if converter.startswith("path"):
                found = []
                break
            configured = self._names.get(name)
            if configured is None:
                configured = self._learn(name)
            if configured:
                found.append((index, configured))
        if len(self._routes) < _MAX_CACHED:
            self._routes[route] = found
        return found

    def _query(self, query: str) -> str:
        """`url.query` with the value of each parameter named like a configured field hidden
        (`?email=ada@example.org` -> `?email=hmac:...`); the rest kept as it was."""
        parts = query.split("&")
        changed = False
        for index, part in enumerate(parts):
            raw_name, equals, raw_value = part.partition("=")
            if not equals or not raw_value:
                continue
            name = unquote_plus(raw_name)
            configured = self._names.get(name)
            if configured is None:
                configured = self._learn(name)
            if configured:
                value = unquote_plus(raw_value)
                hidden = self._hide(configured, value)
                if hidden != value:  # `[REDACTED]` already (a sensitive name) stays as it is
                    parts[index] = f"{raw_name}={quote(str(hidden), safe=':')}"
                    changed = True
        return "&".join(parts) if changed else query

    def _nested(self, value: Any, path: str) -> Any:
        if isinstance(value, Mapping):
            return self._mapping(value, path, False)
        if isinstance(value, list | tuple):
            items = [self._nested(item, path) for item in value]
            return value if all(a is b for a, b in zip(items, value, strict=True)) else items
        return value

    def _learn(self, path: str) -> str:
        """The configured name `path` ends with (on a dot, in any case), or ""; remembered."""
        folded, lowered = self._folded, path.casefold()
        name = folded.get(lowered, "")
        dot = lowered.find(".")
        while not name and dot >= 0:
            name = folded.get(lowered[dot + 1 :], "")
            dot = lowered.find(".", dot + 1)
        if len(path) <= 256:  # a client's unique long keys must not pin memory
            _remember(self._names, path, name)
        return name

    def _hide(self, name: str, value: Any) -> Any:
        """Every value at or below a configured field, as it is written."""
        if type(value) is str:
            cache = self._ip_cache if name in self._truncating else self._cache
            hidden = cache.get(value)
            if hidden is None:
                hidden = value if self._kept(value) else self.field(name, value)
                _remember(cache, value, hidden)
            return hidden
        if value is None:
            return None
        if isinstance(value, Mapping):  # its keys too: `{"email": {"ada@example.org": ...}}`
            return {self._hide(name, key): self._hide(name, item) for key, item in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._hide(name, item) for item in value]
        return self.field(name, value)

    def _kept(self, text: str) -> bool:
        """Redacted already, or hidden already (a receiver called `field`): exactly a pseudonym's
        form under this key, so a value that merely starts like one is hidden too."""
        prefix = self._prefix
        return text == REDACTED or (
            bool(prefix)
            and len(text) == len(prefix) + _DIGEST_CHARS
            and text.startswith(prefix)
            and _HEX.issuperset(text[len(prefix) :])
        )


def _remember(cache: dict[str, str], key: str, value: str) -> None:
    if len(cache) >= _MAX_CACHED:  # a flood of new values: start again
        cache.clear()
    cache[key] = value

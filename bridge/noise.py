"""Noise control: the events an operator chose not to write, as configuration.

`Noise` is the policy the emitter asks, built once per app in `init_app` from the keys
`exclude_paths`, `min_level`, `sample`, `always_keep` and `exception_rate` (checked by
`bridge.config` with `bridge.noisesettings`); `Noise.of` gives None when none is set, so an
app that controls no noise pays one attribute test per event.

Cheap on the request thread, by design:

- `exclude_paths` globs are compiled into one regex at `init_app`; a request's path is
  matched once, on its first event, and the answer is cached in its environ. An excluded
  request captures nothing.
- `min_level` is one dict look-up per event (`request.finished`, whose level comes from its
  status, is judged when the request's events are written).
- Sampling is decided once per request, when its events are written (`Emitter.write_captured`,
  where its status is known), from what it captured: a kept request keeps all its events, a
  dropped one writes none. A request holding an event that is never sampled away (level
  error, so a 5xx and `request.exception`; or an `always_keep` name) is kept whole. Events
  outside a request, or of a request the WSGI wrapper did not see, are decided one by one.
- Identical exceptions (type and scrubbed message) beyond `exception_rate.max` per
  `exception_rate.per_seconds` are still written, without `exception.stacktrace`; the next
  one written with its stack trace carries `exception.suppressed_since_last`.

Every event suppressed is counted per reason in `stats()["suppressed"]`.

Authentication events (`event.category` = "authentication", `bridge.authsignals`) are never
suppressed, whatever their name after `rename`: not by `exclude_paths`, `min_level` nor
sampling (their request is kept whole, as with `always_keep`). An audit trail with holes is
no audit trail. Every check reads the event's own `event.category` (the bridge-made fields
`bridge.authsignals` gives it).
"""

from __future__ import annotations

import fnmatch
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from flask.globals import _cv_request

from bridge import forking
from bridge.auditsettings import AUTH_CATEGORY
from bridge.noisesettings import LEVELS, ExceptionRate, SampleRule
from bridge.pending import Pending, current_pending

__all__ = ["REASONS", "Noise", "NoiseSettings"]

REASONS = ("excluded", "level", "sampled", "stacktrace")
_MAX_EXCEPTIONS = 1024  # distinct exceptions remembered at once: bounded memory


def _complete_fields(fields: Any) -> bool:
    return type(fields) is dict and fields.get("event.category") == AUTH_CATEGORY


def _complete(item: Any) -> bool:
    """Whether a captured item (`bridge.pending.Captured`) is an authentication event: its
    bridge-made fields say so (processed at capture: its whole dict)."""
    return _complete_fields(item[2] if item[1] is None else item[5])


class NoiseSettings(Protocol):
    @property
    def exclude_paths(self) -> tuple[str, ...]: ...
    @property
    def min_level(self) -> str: ...
    @property
    def sample(self) -> tuple[SampleRule, ...]: ...
    @property
    def always_keep(self) -> tuple[str, ...]: ...
    @property
    def exception_rate(self) -> ExceptionRate | None: ...


def _matcher(globs: Sequence[str]) -> Callable[[str], Any]:
    return re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in globs)).match


class Noise:
    """What one app does not write. `random` may be replaced (tests: a seeded source)."""

    def __init__(self, settings: NoiseSettings) -> None:
        globs = settings.exclude_paths
        self.excluded = _matcher(globs) if globs else None
        # This app's answers for a request, kept in its environ.
        self.key = f"bridge.noise.{id(self)}.excluded"
        self.sample_key = f"bridge.noise.{id(self)}.sampled"
        self.floor = LEVELS[settings.min_level]
        self.rules = tuple(
            (rule, None if rule.path is None else _matcher([rule.path])) for rule in settings.sample
        )
        self.always_keep = frozenset(settings.always_keep)
        self.rate = settings.exception_rate
        self.random: Callable[[], float] = random.random
        self.counts = dict.fromkeys(REASONS, 0)
        self._seen: dict[tuple[Any, Any], list[float]] = {}  # [window start, count, dropped]
        self._lock = threading.Lock()
        forking.reset_in_child(self)

    @classmethod
    def of(cls, settings: NoiseSettings) -> Noise | None:
        """The policy, or None when `settings` control no noise."""
        chosen = settings.exclude_paths or settings.sample or settings.exception_rate
        return cls(settings) if chosen or settings.min_level != "debug" else None

    def after_fork_in_child(self) -> None:
        """A parent's thread may have held the lock at the fork: the child would hang."""
        self._lock = threading.Lock()

    def count(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.counts[reason] += n

    def suppressed(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def admits(self, level: str, context: Mapping[str, Any] | None, fields: Any = None) -> bool:
        """Whether an event may be captured: not below `min_level`, not of an excluded
        path (the request's answer cached in its environ; `context`'s path when given).
        An authentication event (its `fields`) always may."""
        if level and LEVELS.get(level, 40) < self.floor and not _complete_fields(fields):
            self.count("level")
            return False
        excluded = self.excluded
        if excluded is None:
            return True
        if context is not None:
            path = context.get("url.path")
            quiet = isinstance(path, str) and excluded(path) is not None
        else:
            ctx = _cv_request.get(None)
            if ctx is None:  # maybe still in a request's list (`appcontext.popped`)
                pending = current_pending()
                quiet = pending is not None and self.key in (pending.excluded or ())
            else:
                environ = ctx.request.environ
                known = environ.get(self.key)
                if known is None:
                    known = environ[self.key] = excluded(ctx.request.path) is not None
                    pending = current_pending()
                    if known and pending is not None:
                        self._exclude(pending)
                quiet = bool(known)
        if quiet and not _complete_fields(fields):
            self.count("excluded")
            return False
        return True

    def excludes(self, request: Any) -> bool:
        """Whether `request`'s path is excluded (cached in its environ): a streamed response's
        events, written after the request, follow the answer its other events got."""
        excluded = self.excluded
        if excluded is None:
            return False
        environ = request.environ
        known = environ.get(self.key)
        if known is None:
            known = environ[self.key] = excluded(request.path) is not None
        return bool(known)

    def _exclude(self, pending: Pending) -> None:
        """Mark the request's list as excluded, and take out what this app captured before
        the request context was there (`appcontext.pushed`)."""
        pending.excluded = {*(pending.excluded or ()), self.key}
        events = [
            item
            for item in pending.events
            if getattr(item[0], "noise", None) is not self or _complete(item)
        ]
        self.count("excluded", len(pending.events) - len(events))
        pending.events = events

    def limit(self, fields: Any) -> Any:
        """`fields`, without `exception.stacktrace` past `exception_rate` for its exception."""
        rate = self.rate
        if rate is None or type(fields) is not dict or "exception.stacktrace" not in fields:
            return fields
        key = (fields.get("exception.type"), fields.get("exception.message"))
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or now - seen[0] >= rate.per_seconds:
                if seen is None and len(self._seen) >= _MAX_EXCEPTIONS:
                    self._seen.clear()
                dropped = 0 if seen is None else int(seen[2])
                self._seen[key] = [now, 1, 0]
                return {**fields, "exception.suppressed_since_last": dropped} if dropped else fields
            seen[1] += 1
            if seen[1] <= rate.max:
                return fields
            seen[2] += 1
            self.counts["stacktrace"] += 1
        return {name: value for name, value in fields.items() if name != "exception.stacktrace"}

    def keeps(
        self, signal: str, event: str, level: str, fields: Any, context: Mapping[str, Any] | None
    ) -> bool:
        """One event decided on its own (outside a request, or the WSGI wrapper unseen)."""
        complete = _complete_fields(fields)
        if LEVELS.get(level, 40) < self.floor and not complete:
            self.count("level")
            return False
        if not self.rules or complete or self._always(signal, event, level):
            return True
        status = fields.get("http.response.status_code") if type(fields) is dict else None
        path = context.get("url.path") if context else None
        if self._decide({event}, status, path):
            return True
        self.count("sampled")
        return False

    def sampled(self, captured: list[Any]) -> list[Any]:
        """The events of `captured` (`bridge.pending.Captured`) to write: those below
        `min_level` out, and each request's kept or dropped whole (decided once: the answer
        is kept in its environ for the rounds of a request of many events). Events of a
        request's list sent without its request context (`appcontext.popped`, after the
        request context is gone) belong to that request."""
        groups: dict[Any, list[Any]] = {}
        kept: list[tuple[Any, Any]] = []
        batch_group = None
        if self.rules:
            batch_group = next((g for g in map(self._group, captured) if g is not None), None)
        for item in captured:
            if item[1] is None:  # processed at capture: its dict holds what is needed
                level = str(item[2].get("level", ""))
            elif not item[4]:  # request.finished: its level comes from the response
                level, fields = item[5].settle()
                item = (*item[:4], level, fields, *item[6:])
            else:
                level = item[4]
            if LEVELS.get(level, 40) < self.floor and not _complete(item):
                self.count("level")
                continue
            group = (self._group(item) or batch_group) if self.rules else None
            if group is None:
                if not self.rules or self._keeps_item(item):
                    kept.append((None, item))
                continue
            groups.setdefault(group, []).append(item)
            kept.append((group, item))
        dropped = {group for group, items in groups.items() if not self._keeps_request(items)}
        return [item for group, item in kept if group is None or group not in dropped]

    @staticmethod
    def _group(item: Any) -> Any:
        """Which request a captured item belongs to (None: outside one)."""
        if item[1] is None:
            request_id = item[2].get("request_id")
            return None if request_id is None else ("id", request_id)
        return None if item[7] is None else ("request", id(item[7]))

    def _facts(self, item: Any) -> tuple[str, str, str, Any, Any]:
        """(signal, event, level, fields, request path) of a captured item."""
        if item[1] is None:
            event_dict = item[2]
            return (
                str(event_dict.get("signal", "")),
                str(event_dict.get("event", "")),
                str(event_dict.get("level", "")),
                event_dict,
                event_dict.get("url.path"),
            )
        request = item[7]
        return item[2], item[3], item[4], item[5], None if request is None else request.path

    def _keeps_item(self, item: Any) -> bool:
        signal, event, level, fields, path = self._facts(item)
        context = None if path is None else {"url.path": path}
        return self.keeps(signal, event, level, fields, context)

    def _keeps_request(self, items: list[Any]) -> bool:
        """One request's events (of this round): kept whole, or dropped whole (counted)."""
        facts = [self._facts(item) for item in items]
        requests = [item[7] for item in items if item[1] is not None and item[7] is not None]
        environ = requests[0].environ if requests else None
        if any(_complete(item) for item in items) or any(
            self._always(signal, event, level) for signal, event, level, _, _ in facts
        ):
            if environ is not None:
                environ[self.sample_key] = True
            return True
        known = None if environ is None else environ.get(self.sample_key)
        if known is None:
            status = None
            for _, _, _, fields, _ in facts:
                if type(fields) is dict and "http.response.status_code" in fields:
                    status = fields["http.response.status_code"]
            path = next((path for *_, path in facts if path is not None), None)
            known = self._decide({event for _, event, _, _, _ in facts}, status, path)
            if environ is not None:
                environ[self.sample_key] = known
        if not known:
            self.count("sampled", len(items))
        return bool(known)

    def _always(self, signal: str, event: str, level: str) -> bool:
        """Never sampled away: errors (a 5xx, `request.exception`) and `always_keep` names."""
        return level == "error" or event in self.always_keep or signal in self.always_keep

    def _decide(self, events: set[str], status: Any, path: Any) -> bool:
        """The first rule that matches decides (keep with its rate); none: keep."""
        for rule, path_match in self.rules:
            if rule.event is not None and rule.event not in events:
                continue
            if rule.status_from is not None or rule.status_below is not None:
                if not isinstance(status, int):
                    continue
                if rule.status_from is not None and status < rule.status_from:
                    continue
                if rule.status_below is not None and status >= rule.status_below:
                    continue
            if path_match is not None and (not isinstance(path, str) or not path_match(path)):
                continue
            return rule.rate >= 1 or (rule.rate > 0 and self.random() < rule.rate)
        return True

"""The audit chain: every record of an audit file signed and linked to the one before it.

A record is an event line plus these `audit.*` keys (the chain format, a contract that
`flask bridge verify` reads back):

| key | value |
|---|---|
| `audit.chain` | the chain's name, `<host>:<pid>:<16 random hex>`: one per process and sink |
| `audit.seq` | 1, 2, 3, ... within the chain, with no gap |
| `audit.prev` | the previous record's `audit.mac` (`""` for seq 1) |
| `audit.kid` | the key's id: 16 hex of HMAC-SHA256(key, "flask-signal-bridge audit key id") |
| `audit.mac` | hex HMAC-SHA256(key, the record's canonical JSON without `audit.mac`) |

The line is written in its signed form: the canonical JSON of the record without `audit.mac`
(keys sorted, no whitespace, UTF-8: `orjson.dumps(record, option=OPT_SORT_KEYS)`), then
`audit.mac` appended as its last member:

    {"audit.chain":"web-1:4242:8c1d2e3f4a5b6c7d",...,"user.id":"7","audit.mac":"<64 hex>"}

so the MAC is over bytes that are in the file: a verifier cuts `,"audit.mac":"<64 hex>"`
off the end and computes HMAC-SHA256 of what is left, without serializing anything again
(no two JSON libraries need agree on how to write a number). `openssl dgst -sha256 -hmac`
can check a line. The previous MAC is inside (as `audit.prev`), so each MAC covers the whole
chain before it. A checkpoint is a record of its own (`event` = `audit.checkpoint`,
`audit.reason` = `rotation` or `shutdown`, `audit.records` = the records the chain held
before it): the last record of a chain whose process ended cleanly is its shutdown
checkpoint, so a tail cut off the file shows. A record may carry `audit.lost` = N: N records
before it could not be written (a full disk); the chain itself skips nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "AUDIT_KEYS",
    "CHECKPOINT_EVENT",
    "MIN_KEY_BYTES",
    "AuditKey",
    "Chain",
    "canonical",
    "chain_name",
    "new_chain",
    "split_signed",
]

CHECKPOINT_EVENT = "audit.checkpoint"
AUDIT_KEYS = ("audit.chain", "audit.seq", "audit.prev", "audit.kid", "audit.mac")
MIN_KEY_BYTES = 16  # an HMAC key shorter than this is guessable offline
_KEY_ID_MESSAGE = b"flask-signal-bridge audit key id"


@dataclass(frozen=True, slots=True)
class AuditKey:
    """An HMAC key and its public id (which names the key without revealing it)."""

    secret: bytes
    kid: str

    @classmethod
    def of(cls, text: str | bytes) -> AuditKey:
        secret = text.encode() if isinstance(text, str) else bytes(text)
        kid = hmac.new(secret, _KEY_ID_MESSAGE, hashlib.sha256).hexdigest()[:16]
        return cls(secret, kid)

    def __repr__(self) -> str:  # never the secret, in a traceback or a log
        return f"AuditKey(kid={self.kid!r})"


def canonical(record: dict[str, Any]) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the bytes a MAC is made over."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


_MAC_MEMBER = b',"audit.mac":"'
_SIGNED_TAIL = len(_MAC_MEMBER) + 64 + len(b'"}')


def split_signed(line: bytes) -> tuple[bytes, str] | None:
    """(the signed bytes, the MAC) of a line in signed form (a final newline allowed), or
    None when it does not end with `,"audit.mac":"<64 lower-case hex>"}`."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if len(line) < _SIGNED_TAIL + 2 or not line.endswith(b'"}'):
        return None
    start = len(line) - _SIGNED_TAIL
    if line[start : start + len(_MAC_MEMBER)] != _MAC_MEMBER:
        return None
    mac = line[start + len(_MAC_MEMBER) : -2]
    if not all(c in b"0123456789abcdef" for c in mac):
        return None
    return line[:start] + b"}", mac.decode()


def chain_name(host: str, pid: int) -> str:
    return f"{host}:{pid}:{secrets.token_hex(8)}"


class Chain:
    """One process's chain: seals records in the order they are written. Not thread-safe:
    its owner (the audit sink) seals and writes under one lock, so file order is seq order."""

    __slots__ = ("key", "lost", "name", "prev", "seq")

    def __init__(self, key: AuditKey, name: str) -> None:
        self.key = key
        self.name = name
        self.seq = 0
        self.prev = ""
        self.lost = 0  # records that could not be written since the last one that was

    def seal(self, record: dict[str, Any], *, own: bool = False) -> bytes:
        """Add the audit keys to `record` (in place), advance the chain, return the line in
        signed form (see the module docstring).

        An event's own `audit.*` keys are moved to `args.audit.*` (the chain's keys are the
        chain's); `own=True` keeps them: a checkpoint the sink wrote itself."""
        for key in [k for k in record if k.startswith("audit.") and not own]:
            moved = "args." + key
            while moved in record:  # the app sent args.audit.x too: keep both
                moved = "args." + moved
            record[moved] = record.pop(key)
        record["audit.chain"] = self.name
        record["audit.seq"] = self.seq + 1
        record["audit.prev"] = self.prev
        record["audit.kid"] = self.key.kid
        if self.lost:
            record["audit.lost"] = self.lost
        body = canonical(record)
        mac = hmac.new(self.key.secret, body, hashlib.sha256).hexdigest()
        record["audit.mac"] = mac
        self.seq += 1
        self.prev = mac
        self.lost = 0
        return b"".join((body[:-1], _MAC_MEMBER, mac.encode(), b'"}\n'))

    def mark(self) -> tuple[int, str, int]:
        """The chain's state, to `rewind` to when sealed lines could not be written."""
        return self.seq, self.prev, self.lost

    def rewind(self, mark: tuple[int, str, int], unwritten: int) -> None:
        self.seq, self.prev, self.lost = mark
        self.lost += unwritten


def new_chain(key: AuditKey, host: str) -> Chain:
    return Chain(key, chain_name(host, os.getpid()))

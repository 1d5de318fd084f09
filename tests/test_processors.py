"""Hostile payloads: any signal arguments give exactly one valid JSON line, within the limit."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import math
import re
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.config import DEFAULT_REDACT_TERMS
from bridge.processors import REDACTED, LineEncoder, MakeJsonSafe, SensitiveKeys
from tests.conftest import LOGIN_SIGNAL, BridgedApp

MAX_LINE = 4096
ENVELOPE = {
    "timestamp": "2026-11-25T08:30:00.123456Z",
    "level": "info",
    "event": "user-login",
    "signal": "user-login",
    "event_id": "01a21302-61b5-745d-9310-3e50077952f0",
    "service.name": "shop",
    "host.name": "h",
    "process.pid": 1,
}


def make_encoder(max_line: int = MAX_LINE) -> tuple[MakeJsonSafe, LineEncoder]:
    safe = MakeJsonSafe(SensitiveKeys(DEFAULT_REDACT_TERMS), max(256, max_line // 4))
    return safe, LineEncoder(max_line, safe)


def encode(fields: dict[Any, Any], max_line: int = MAX_LINE) -> dict[str, Any]:
    """Run the bridge's last processor and encoder; check the line and parse it."""
    safe, encoder = make_encoder(max_line)
    event = {**ENVELOPE, **fields}
    line = encoder(safe(None, "info", event))
    assert line.endswith(b"\n")
    assert 1 == line.count(b"\n"), "exactly one line"
    assert len(line) <= max_line
    parsed = json.loads(line)
    assert isinstance(parsed, dict)
    assert "user-login" == parsed["event"]
    return parsed


class NoRepr:
    __slots__ = ()

    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")

    def __str__(self) -> str:
        raise RuntimeError("str exploded")


class HostileGetattr:
    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no {name}")


class User:
    password = "hunter2"

    def get_id(self) -> str:
        return "u-1"


class Login(NamedTuple):
    user: str
    password: str


@dataclasses.dataclass
class Card:
    holder: str
    card_number: str
    expires: dt.date
    login: Login | None = None

    def __repr__(self) -> str:
        return f"Card({self.card_number})"  # a repr that quotes the secret


class TestMakeJsonSafe:
    def test_datetimes(self) -> None:
        """Aware datetimes become UTC RFC 3339; naive ones are taken as UTC."""
        tz = dt.timezone(dt.timedelta(hours=2))
        parsed = encode(
            {
                "aware": dt.datetime(2026, 1, 1, 12, 0, tzinfo=tz),
                "naive": dt.datetime(2026, 1, 1, 12, 0, 0, 5),
            }
        )
        assert "2026-01-01T10:00:00.000000Z" == parsed["aware"]
        assert "2026-01-01T12:00:00.000005Z" == parsed["naive"]

    def test_bytes_sets_decimals(self) -> None:
        """Bytes decode with replacement, sets become lists, Decimals text."""
        parsed = encode(
            {
                "raw": b"ok\xff",
                "tags": {"a"},
                "price": decimal.Decimal("1.10"),
                "id": uuid.UUID(int=1),
                "path": Path("/x"),
            }
        )
        assert "ok\ufffd" == parsed["raw"]
        assert ["a"] == parsed["tags"]
        assert "1.10" == parsed["price"]
        assert "00000000-0000-0000-0000-000000000001" == parsed["id"]
        assert "/x" == parsed["path"]

    def test_objects_become_type_tags(self) -> None:
        """Unknown objects (even with a raising repr) become a short type tag."""
        parsed = encode({"thing": NoRepr(), "weird": HostileGetattr()})
        assert "<tests.test_processors.NoRepr>" == parsed["thing"]
        assert "<tests.test_processors.HostileGetattr>" == parsed["weird"]

    def test_get_id_objects(self) -> None:
        """An object with get_id() under key K becomes K.id, never its attributes."""
        parsed = encode({"user": User(), "nested": {"actor": User()}})
        assert "u-1" == parsed["user.id"]
        assert {"actor.id": "u-1"} == parsed["nested"]
        assert "hunter2" not in json.dumps(parsed)

    def test_redaction_at_any_depth(self) -> None:
        """Sensitive keys are redacted at any depth, whatever their case or separators."""
        parsed = encode(
            {
                "Password": "p",
                "form": {"X-Api-Key": "k", "items": [{"cvv": 1}]},
                "session id": "s",
                "username": "ada",
            }
        )
        assert REDACTED == parsed["Password"]
        assert REDACTED == parsed["form"]["X-Api-Key"]
        assert REDACTED == parsed["form"]["items"][0]["cvv"]
        assert REDACTED == parsed["session id"]
        assert "ada" == parsed["username"]

    def test_long_keys_are_judged_whole(self) -> None:
        """A key longer than 256 characters is redacted when its end names a secret."""
        key = "x" * 300 + "_password"
        parsed = encode({key: "hunter2"})
        assert {"x" * 256 + "...[truncated]": REDACTED}.items() <= parsed.items()

    def test_namedtuples_by_field_names(self) -> None:
        """A namedtuple is an object of its fields, each redacted by its name."""
        parsed = encode({"login": Login("ada", "hunter2"), "many": [Login("bob", "pw12")]})
        assert {"user": "ada", "password": REDACTED} == parsed["login"]
        assert [{"user": "bob", "password": REDACTED}] == parsed["many"]

    def test_dataclasses_by_fields_never_repr(self) -> None:
        """A dataclass instance is an object of its fields, redacted; never its repr."""
        card = Card("ada", "4111111111111111", dt.date(2030, 1, 1), Login("ada", "hunter2"))
        parsed = encode({"card": card, "cards": [card]})
        expected = {
            "holder": "ada",
            "card_number": REDACTED,
            "expires": "2030-01-01",
            "login": {"user": "ada", "password": REDACTED},
        }
        assert (expected, [expected]) == (parsed["card"], parsed["cards"])
        assert "4111" not in json.dumps(parsed)

    def test_dataclass_classes_are_type_tags(self) -> None:
        """A dataclass type (not an instance) is just a type tag."""
        assert "<builtins.type>" == encode({"kind": Card})["kind"]

    def test_exception_arguments_are_scrubbed(self) -> None:
        """An exception passed as an argument keeps its type and message, secrets hidden."""
        exc = ValueError("cannot reach https://ada:hunter22@db/x?token=abcd1234")
        text = encode({"error": exc})["error"]
        assert text.startswith("<builtins.ValueError>: cannot reach https://")
        assert [] == [s for s in ("hunter22", "abcd1234") if s in text]

    def test_extra_redact_terms(self) -> None:
        """Configured terms extend the defaults."""
        safe = MakeJsonSafe(SensitiveKeys((*DEFAULT_REDACT_TERMS, "iban")), 1000)
        assert {"user_iban": REDACTED} == safe.convert_mapping({"user_iban": "DE89"})

    def test_cycles(self) -> None:
        """Cyclic structures are cut, not followed forever."""
        loop: dict[str, Any] = {"name": "a"}
        loop["self"] = loop
        items: list[Any] = [1]
        items.append(items)
        parsed = encode({"loop": loop, "items": items})
        assert "<cycle>" == parsed["loop"]["self"]
        assert [1, "<cycle>"] == parsed["items"]

    def test_nan_inf_and_huge_ints(self) -> None:
        """NaN and infinities become null; integers beyond 64 bits become text."""
        parsed = encode({"nan": math.nan, "inf": -math.inf, "big": 2**80})
        assert (None, None, str(2**80)) == (parsed["nan"], parsed["inf"], parsed["big"])

    def test_non_string_keys(self) -> None:
        """Keys that are not strings are converted."""
        parsed = encode({"m": {1: "one", None: "none", (1, 2): "tuple", b"k": "bytes"}})
        assert {"1": "one", "None": "none", "<builtins.tuple>": "tuple", "k": "bytes"} == (
            parsed["m"]
        )

    def test_lone_surrogates(self) -> None:
        """Lone surrogates, in keys and values, are replaced rather than failing."""
        parsed = encode({"bad\ud800key": "x\udfffy"})
        assert {"bad\ufffdkey": "x\ufffdy"}.items() <= parsed.items()

    def test_crlf_stays_inside_the_line(self) -> None:
        """CR/LF in user values are escaped: they never start a forged log line."""
        safe, encoder = make_encoder()
        forged = 'ada\n{"event": "admin.granted"}\r\n'
        line = encoder(safe(None, "info", {**ENVELOPE, "username": forged}))
        assert 1 == line.count(b"\n")
        assert forged == json.loads(line)["username"]

    def test_ten_megabyte_string(self) -> None:
        """A 10 MB string is truncated with a marker and the line stays within the limit."""
        parsed = encode({"blob": "x" * 10_000_000})
        assert parsed["blob"].endswith("...[truncated]")

    def test_huge_structure_keeps_the_envelope(self) -> None:
        """When nothing else fits, the envelope survives with bridge.truncated."""
        parsed = encode({f"k{i}": i for i in range(5000)})
        assert parsed["bridge.truncated"] is True
        assert parsed["bridge.original_bytes"] > MAX_LINE
        assert ENVELOPE.items() <= parsed.items()

    def test_envelope_keys_are_left_alone(self) -> None:
        """The walk does not touch the envelope the bridge wrote."""
        parsed = encode({})
        assert ENVELOPE == parsed


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.binary(),
    st.decimals(allow_nan=True),
    st.datetimes(),
    st.datetimes(timezones=st.timezones()),
    st.uuids(),
    st.builds(NoRepr),
    st.builds(User),
    st.builds(HostileGetattr),
)
hostile = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.tuples(children, children),
        st.frozensets(st.integers() | st.text(max_size=5), max_size=5),
        st.dictionaries(st.text(max_size=10) | st.integers() | st.none(), children, max_size=5),
    ),
    max_leaves=30,
)


class TestHostilePayloads:
    @settings(max_examples=300, deadline=None)
    @given(
        st.dictionaries(
            st.text(max_size=20).filter(lambda k: k not in ENVELOPE), hostile, max_size=8
        )
    )
    def test_any_payload_is_one_valid_line(self, fields: dict[str, Any]) -> None:
        """Whatever the arguments, the encoder yields one valid JSON line within the limit."""
        encode(fields, max_line=2048)

    def test_unique_long_keys_are_not_kept(self) -> None:
        """A stream of unique long keys (a client's JSON keys) leaves no memory behind."""
        safe, encoder = make_encoder()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for n in range(200):
                encoder(safe(None, "info", {**ENVELOPE, "body": {f"{n:06d}" + "k" * 65536: 1}}))
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert kept < 2 * 1024 * 1024, f"{kept} bytes kept after 13 MB of keys"

    @settings(max_examples=100, deadline=None)
    @given(st.text(min_size=1, max_size=30), st.text(max_size=50))
    def test_sensitive_names_never_leak(self, prefix: str, secret: str) -> None:
        """A key containing a sensitive term never carries its value to the line."""
        parsed = encode({f"{prefix}password": secret})
        key = re.sub("[\ud800-\udfff]", "\ufffd", f"{prefix}password")
        assert REDACTED == parsed[key]


class TestRedactSetting:
    def test_configured_terms_match_like_defaults(
        self, make_bridged: Callable[..., BridgedApp]
    ) -> None:
        """`redact` terms from the configuration are whole words when short, like defaults."""
        bridged = make_bridged(signals=["user-login"], BRIDGE_REDACT=["IBAN", "X-Tenant-Key"])
        LOGIN_SIGNAL.send(user_iban="DE89", libano="lb", xTenantKey="tk", pin="1234")
        (event,) = bridged.events()
        assert (REDACTED, "lb", REDACTED, REDACTED) == (
            event["user_iban"],
            event["libano"],
            event["xTenantKey"],
            event["pin"],
        )


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payload=st.dictionaries(
        st.text(max_size=10).filter(lambda k: k not in ENVELOPE), hostile, max_size=5
    )
)
def test_hostile_signal_through_a_real_app(
    make_bridged: Callable[..., BridgedApp], payload: dict[str, Any]
) -> None:
    """A real bridge given hostile kwargs writes exactly one valid line and never raises."""
    bridged = make_bridged(signals=["user-login"], BRIDGE_MAX_LINE_BYTES=4096)
    LOGIN_SIGNAL.send(**payload)
    (event,) = bridged.events()
    assert "user-login" == event["event"]
    assert 0 == bridged.bridge.stats()["receiver_errors"]
    bridged.bridge.close()

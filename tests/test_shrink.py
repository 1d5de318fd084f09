"""Events over `max_line_bytes`: the largest values shrink first, small fields survive."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.processors import LineEncoder, MakeJsonSafe
from bridge.redaction import DEFAULT_REDACT_TERMS, SensitiveKeys
from tests.conftest import LOGIN_SIGNAL, BridgedApp
from tests.test_processors import ENVELOPE, MAX_LINE, hostile


def encode(fields: dict[str, Any], max_line: int = MAX_LINE) -> dict[str, Any]:
    """The line the bridge writes for these fields (walk, then encoder), checked and parsed."""
    safe = MakeJsonSafe(SensitiveKeys(DEFAULT_REDACT_TERMS), max(256, max_line // 4))
    line = LineEncoder(max_line, safe)(safe(None, "info", {**ENVELOPE, **fields}))
    assert line.endswith(b"\n")
    assert 1 == line.count(b"\n"), "exactly one line"
    assert len(line) <= max_line
    parsed = json.loads(line)
    assert isinstance(parsed, dict)
    return parsed


class TestShrink:
    def test_small_fields_survive_a_long_list(self) -> None:
        """The issue's payload: the list keeps a head and says how long it was."""
        parsed = encode({"items": ["z" * 100] * 20000, "probe": 3, "user_id": 7})
        assert (3, 7) == (parsed["probe"], parsed["user_id"])
        assert ["z" * 100] * 3 == parsed["items"][:3]
        assert "...[truncated: 20000 items]" == parsed["items"][-1]
        assert (True, True) == (
            parsed["bridge.truncated"],
            parsed["bridge.original_bytes"] > 100_000,
        )
        assert ENVELOPE.items() <= parsed.items()

    def test_long_dict_keeps_a_head_and_its_size(self) -> None:
        """A dict too large keeps what fits, and `bridge.truncated_items` its original size."""
        parsed = encode({"m": {f"k{i}": "v" * 50 for i in range(900)}, "probe": 3})
        assert 3 == parsed["probe"]
        assert 900 == parsed["m"]["bridge.truncated_items"]
        assert "v" * 50 == parsed["m"]["k0"]

    def test_largest_values_shrink_first(self) -> None:
        """Four long strings are cut to share the room; a shorter one stays whole."""
        longs = {name: "x" * 1000 for name in "abcd"}
        parsed = encode({**longs, "e": "y" * 700, "probe": 1})
        assert ("y" * 700, 1) == (parsed["e"], parsed["probe"])
        for name in "abcd":
            assert parsed[name].startswith("xxx") and parsed[name].endswith("...[truncated]")

    def test_nested_large_values_shrink_inside(self) -> None:
        """A dict holding one huge list keeps its small keys and a head of the list."""
        parsed = encode({"order": {"id": 42, "lines": [{"sku": "a" * 40}] * 5000}, "probe": 3})
        assert (42, 3) == (parsed["order"]["id"], parsed["probe"])
        assert "...[truncated: 5000 items]" == parsed["order"]["lines"][-1]

    def test_stack_keeps_its_end(self) -> None:
        """A stack trace cut to fit keeps its innermost frames, at the end."""
        stack = "".join(f'  File "app.py", line {n}\n' for n in range(400)) + "ValueError: x\n"
        parsed = encode({"exception.stacktrace": stack, "probe": 3}, max_line=2048)
        assert parsed["exception.stacktrace"].endswith("ValueError: x\n")
        assert parsed["exception.stacktrace"].startswith("[truncated]...")

    def test_huge_event_name_keeps_the_envelope(self) -> None:
        """A 100 kB log message (the event name) is cut; every envelope key survives."""
        parsed = encode({"event": "e" * 100_000, "probe": 3}, max_line=2048)
        assert set(ENVELOPE) <= set(parsed)
        assert parsed["event"].startswith("eee") and parsed["event"].endswith("...[truncated]")
        assert 3 == parsed["probe"]

    def test_int_too_large_for_str(self) -> None:
        """An int of over 4300 digits gives a line that says its size."""
        parsed = encode({"big": 10**5000, "nested": {"big": -(10**5000)}, "probe": 3})
        assert 3 == parsed["probe"]
        assert "<int of 16610 bits>" == parsed["big"]
        assert "<int of 16610 bits>" == parsed["nested"]["big"]

    def test_many_small_fields_fill_the_line(self) -> None:
        """Thousands of small fields: as many as fit are kept, the rest counted."""
        parsed = encode({f"k{i}": i for i in range(5000)})
        kept = [key for key in parsed if key.startswith("k")]
        assert 100 < len(kept) < 1000
        assert all(int(key[1:]) == parsed[key] for key in kept)
        assert 5000 <= parsed["bridge.truncated_items"]


small_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.text(st.characters(codec="ascii"), max_size=16),
)
big_values = st.one_of(
    hostile,
    st.text(min_size=2000, max_size=6000),
    st.builds(lambda n, s: [s] * n, st.integers(0, 3000), st.text(max_size=40)),
    st.builds(lambda n: {f"k{i}": "v" * (i % 50) for i in range(n)}, st.integers(0, 1500)),
    st.builds(lambda n: [[["deep"] * 50] * 20] * n, st.integers(0, 30)),
)


class TestAnyPayload:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        small=st.dictionaries(st.sampled_from([f"s{i}" for i in range(8)]), small_values),
        big=st.dictionaries(st.sampled_from(["b0", "b1", "b2"]), big_values),
    )
    def test_one_line_keeps_every_small_field(
        self, small: dict[str, Any], big: dict[str, Any]
    ) -> None:
        """Any payload gives one valid line within the limit that keeps each small field."""
        parsed = encode({**big, **small}, max_line=2048)
        assert small.items() <= parsed.items()
        assert ENVELOPE.items() <= parsed.items()


class TestThroughAnApp:
    def test_big_payload_keeps_probe(self, make_bridged: Callable[..., BridgedApp]) -> None:
        """The issue's reproduction, through a real app with the default max_line_bytes."""
        bridged = make_bridged(signals=["user-login"])
        LOGIN_SIGNAL.send(items=["z" * 100] * 20000, probe=3)
        (event,) = bridged.events()
        assert (3, "...[truncated: 20000 items]") == (event["probe"], event["items"][-1])
        assert len(bridged.path.read_bytes()) <= 65536
        assert 0 == bridged.bridge.stats()["receiver_errors"]

    def test_huge_int_is_no_receiver_error(self, make_bridged: Callable[..., BridgedApp]) -> None:
        """An int too large for str() is one line, not a receiver error."""
        bridged = make_bridged(signals=["user-login"])
        LOGIN_SIGNAL.send(big=10**5000, probe=3)
        (event,) = bridged.events()
        assert (3, "<int of 16610 bits>") == (event["probe"], event["big"])
        assert 0 == bridged.bridge.stats()["receiver_errors"]

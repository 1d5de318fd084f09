"""Reading event lines back for the formats: the capture time in nanoseconds, the object."""

from __future__ import annotations

import pytest

from bridge.formats.fields import BatchClock, epoch_ns, parse_event


class TestEpochNs:
    @pytest.mark.parametrize(
        ("timestamp", "expected"),
        [
            ("2026-11-25T08:30:00.123456Z", 1_795_595_400_123_456_000),
            ("2026-11-25T09:30:00.123456+01:00", 1_795_595_400_123_456_000),
            ("2026-11-25T08:30:00Z", 1_795_595_400_000_000_000),
            ("2026-11-25T08:30:00.5", 1_795_595_400_500_000_000),  # naive: taken as UTC
            ("1970-01-01T00:00:00.000001Z", 1_000),
        ],
    )
    def test_rfc3339_times_are_exact_nanoseconds(self, timestamp: str, expected: int) -> None:
        """The event's own time, to the microsecond, with no float rounding."""
        assert expected == epoch_ns(timestamp, -1)

    @pytest.mark.parametrize("timestamp", [None, 17, "", "yesterday", "2026-13-01T00:00:00Z"])
    def test_an_unreadable_time_gives_the_default(self, timestamp: object) -> None:
        """Missing or malformed: the caller's default (the send time, or none)."""
        assert -1 == epoch_ns(timestamp, -1)

    @pytest.mark.parametrize(
        "timestamp",
        [
            "1969-12-31T23:59:59.000000Z",
            "0001-01-01T00:00:00+00:00",
            "2262-04-11T23:47:16.854776Z",
            "9999-12-31T23:59:59.999999Z",
        ],
    )
    def test_a_time_no_platform_can_hold_gives_the_default(self, timestamp: str) -> None:
        """Before 1970 or past an int64 of nanoseconds (Loki's and OTLP's type): the default,
        never a negative or overflowing number that gets the whole request refused."""
        assert -1 == epoch_ns(timestamp, -1)

    def test_the_last_second_an_int64_holds_is_read(self) -> None:
        """Every time up to the last whole second before int64 overflow, fraction included."""
        assert 9_223_372_034_999_999_000 == epoch_ns("2262-04-11T23:47:14.999999Z", -1)


class TestParseEvent:
    def test_an_event_line_is_its_object(self) -> None:
        """A JSON object line comes back as the dict."""
        assert {"event": "x", "n": 1} == parse_event(b'{"event":"x","n":1}\n')

    @pytest.mark.parametrize("line", [b"not json\n", b"[1,2]\n", b'"text"\n'])
    def test_anything_else_goes_out_whole_as_its_message(self, line: bytes) -> None:
        """A line that is not an object never fails the batch: it becomes `message`."""
        assert {"message": line.decode().rstrip("\n")} == parse_event(line)


class TestBatchClock:
    @pytest.mark.parametrize(
        "timestamp",
        [
            "2026-11-25T08:30:00.123456Z",
            "2026-11-25T08:30:00.000000Z",
            "2026-11-25T09:30:00.123456+01:00",
            "2026-11-25T08:30:00.12345٦Z",  # a non-ASCII digit: unreadable either way
            "2026-13-25T08:30:00.123456Z",
            "1969-12-31T23:59:59.999999Z",
            "2262-04-11T23:47:16.999999Z",
            "9999-12-31T23:59:59.999999Z",
            None,
            1795595400,
        ],
    )
    def test_it_gives_what_epoch_ns_gives(self, timestamp: object) -> None:
        """The per-batch fast path answers exactly as `epoch_ns` does, fast shape or not."""
        clock = BatchClock()
        assert epoch_ns(timestamp, -7) == clock.ns(timestamp, -7) == clock.ns(timestamp, -7)

    def test_a_batchs_second_is_read_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Events of the same second: one parse of the second, then only the microseconds."""
        calls: list[object] = []

        def counted(timestamp: object, default: int) -> int:
            calls.append(timestamp)
            return epoch_ns(timestamp, default)

        monkeypatch.setattr("bridge.formats.fields.epoch_ns", counted)
        clock = BatchClock()
        times = [f"2026-11-25T08:30:00.{n:06d}Z" for n in range(50)]
        assert [1_795_595_400_000_000_000 + n * 1000 for n in range(50)] == [
            clock.ns(t, -1) for t in times
        ]
        assert ["2026-11-25T08:30:00.000000Z"] == calls

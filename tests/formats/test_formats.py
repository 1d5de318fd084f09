"""Wire formats: the exact body and content type of each, and the registry's errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import responses

from bridge.config import load_settings
from bridge.errors import ConfigError
from bridge.formats import IMPLEMENTED, NAMES, get_format, options_type
from bridge.outcome import DELIVERED
from bridge.sinks.http import HttpSink
from tests.delivery.helpers import event_line, fast_settings
from tests.formats.conftest import dead_ids

LINES = [b'{"event_id":"a","n":1}\n', b'{"event_id":"b","msg":"x\\ny"}\n']
# What formats with required options need to be built at all.
REQUIRED_OPTIONS: dict[str, dict[str, Any]] = {
    "sls": {"logstore": "events"},
    "sls_putlogs": {"logstore": "events", "access_key_id": "id", "access_key_secret": "secret"},
}


class TestRegistry:
    def test_every_configurable_name_is_implemented(self) -> None:
        """The config's format choices are exactly the implemented formats, and each loads."""
        assert set(NAMES) == set(IMPLEMENTED)
        expected = {"datadog", "elasticsearch", "json_array", "loki", "ndjson", "otlp"}
        assert expected | {"sls", "sls_putlogs", "splunk_hec"} == set(NAMES)
        for name in NAMES:
            sink = {"type": "http", "url": "http://127.0.0.1:9/in", "format": name}
            if name in REQUIRED_OPTIONS:
                sink["format_options"] = REQUIRED_OPTIONS[name]
            assert name == load_settings({"BRIDGE_SINKS": [sink]}, {}).sinks[0].format
        with pytest.raises(ConfigError) as caught:
            sink = {"type": "http", "url": "http://127.0.0.1:9/in", "format": "gelf"}
            load_settings({"BRIDGE_SINKS": [sink]}, {})
        assert "one of " + ", ".join(repr(n) for n in NAMES) == caught.value.expected

    @pytest.mark.parametrize("name", IMPLEMENTED)
    def test_implemented_formats_are_found_by_name(self, name: str) -> None:
        """get_format returns a format that calls itself by the same name."""
        options = options_type(name)(**REQUIRED_OPTIONS.get(name, {}))
        assert name == get_format(name, options).name

    def test_unknown_formats_fail_with_a_config_error(self) -> None:
        """A name nobody knows is a ConfigError naming the key, the value and what exists."""
        with pytest.raises(ConfigError) as caught:
            get_format("gelf")
        assert ("format", "gelf") == (caught.value.key, caught.value.value)
        assert f"an implemented format: {', '.join(IMPLEMENTED)}" == caught.value.expected


class TestNdjson:
    def test_body_is_the_lines_concatenated(self) -> None:
        """NDJSON: the lines as they are, newline-terminated, in order."""
        payload = get_format("ndjson").encode(LINES)
        assert b"".join(LINES) == payload.body
        assert "application/x-ndjson" == payload.content_type
        assert payload.compressible

    def test_all_or_nothing_replies(self) -> None:
        """NDJSON collectors report no per-item failures."""
        assert DELIVERED == get_format("ndjson").interpret(200, b"{}")


class TestJsonArray:
    def test_body_is_one_json_array_of_the_events(self) -> None:
        """json_array: `[` + lines without newlines joined by `,` + `]`, valid JSON."""
        payload = get_format("json_array").encode(LINES)
        expected = b'[{"event_id":"a","n":1},{"event_id":"b","msg":"x\\ny"}]'
        assert expected == payload.body
        assert [{"event_id": "a", "n": 1}, {"event_id": "b", "msg": "x\ny"}] == json.loads(
            payload.body
        )
        assert "application/json" == payload.content_type

    def test_a_single_event_is_a_one_element_array(self) -> None:
        """One line still makes an array."""
        payload = get_format("json_array").encode(LINES[:1])
        assert b'[{"event_id":"a","n":1}]' == payload.body


def nested(depth: int) -> Any:
    """A value `depth` lists deep: past what orjson writes, within what it reads."""
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return value


class TestAnEventNoFormatCanEncode:
    @pytest.mark.parametrize("name", IMPLEMENTED)
    def test_only_that_event_is_dead_lettered_the_rest_delivered(
        self, name: str, mock: responses.RequestsMock, sinks: list[HttpSink], tmp_path: Path
    ) -> None:
        """A line a format raises on (nested 400 deep, through `submit` or a replay): the
        batch is halved until it is alone; its neighbours are delivered, it is dead-lettered."""
        dead = tmp_path / "dead.jsonl"
        mock.add(responses.POST, re.compile(r"http://collector\.test/.*"), body=b'{"errors":false}')
        sink = HttpSink(
            fast_settings(
                "http://collector.test/in",
                format=name,
                format_options=REQUIRED_OPTIONS.get(name, {}),
                dead_letter_path=dead,
                batch_timeout=10.0,
                batch_max_events=3,
            )
        )
        sinks.append(sink)
        bad = json.dumps({"event_id": "deep", "d": nested(400)}).encode() + b"\n"
        lines = [event_line(), bad, event_line()]
        for line in lines:
            assert sink.submit(line)
        assert sink.flush(10.0)
        delivered, dead_letters = sink.stats()["delivered"], dead_ids(dead)
        assert ["deep"][: 3 - delivered] == dead_letters  # 3 delivered: the format took it
        assert 2 <= delivered

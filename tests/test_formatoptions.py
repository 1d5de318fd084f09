"""A format's options (`format_options` of an http sink): checked at start-up against the
format's `Options` dataclass, every mistake named by key, secrets never shown."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import bridge.formats
from bridge import formatoptions
from bridge.config import load_settings
from bridge.errors import ConfigError
from bridge.formats import OptionError
from bridge.formats.ndjson import NdjsonFormat


@dataclass(frozen=True, slots=True)
class SampleOptions:
    index: str = "logs"
    labels: tuple[str, ...] = ("level",)
    tags: dict[str, str] = field(default_factory=dict)
    compress: bool = True
    max_items: int = 100
    token: str | None = None

    def __post_init__(self) -> None:
        if not self.index.islower():
            raise OptionError("index", self.index, "a lower-case index name")


@pytest.fixture(autouse=True)
def sample_format(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A format called `sample` with every kind of option."""
    entry = bridge.formats._Entry(SampleOptions, lambda _: NdjsonFormat())
    monkeypatch.setitem(bridge.formats._REGISTRY, "sample", entry)
    monkeypatch.setattr(bridge.formats, "NAMES", (*bridge.formats.NAMES, "sample"))
    monkeypatch.setattr(
        "bridge.config._SINK_KEYS",
        {
            **bridge.config._SINK_KEYS,
            "http": (
                bridge.config._SINK_KEYS["http"][0],
                {
                    **bridge.config._SINK_KEYS["http"][1],
                    "format": bridge.configvalues.choice(*bridge.formats.NAMES, "sample"),
                },
            ),
        },
    )
    yield


def sink(options: Any, fmt: str = "sample") -> dict[str, Any]:
    return {
        "type": "http",
        "url": "http://127.0.0.1:9/in",
        "format": fmt,
        "format_options": options,
    }


def load(*sinks: dict[str, Any]) -> Any:
    return load_settings({"BRIDGE_SINKS": list(sinks)}, {})


class TestFormatOptions:
    def test_values_become_the_typed_options(self) -> None:
        """Each option is checked by its type and the dataclass is built from them."""
        raw = {"index": "app", "labels": ["level", "event"], "tags": {"env": "prod"}}
        options = load(sink({**raw, "compress": False, "max_items": 7})).sinks[0].format_options
        assert SampleOptions("app", ("level", "event"), {"env": "prod"}, False, 7) == options

    def test_no_table_means_the_defaults(self) -> None:
        """Without `format_options` the format's defaults apply."""
        raw = {"type": "http", "url": "http://127.0.0.1:9/in", "format": "sample"}
        assert SampleOptions() == load(raw).sinks[0].format_options

    def test_an_unknown_option_names_the_known_ones(self) -> None:
        """A key the format does not have: ConfigError with the sink's key and the choices."""
        with pytest.raises(ConfigError) as caught:
            load(sink({"indx": "app"}))
        assert "sinks[0].format_options.indx" == caught.value.key
        assert "compress, index, labels, max_items, tags, token" in caught.value.expected

    def test_every_wrong_value_is_reported_at_once(self) -> None:
        """Wrong types in several options: one error listing each, by key."""
        with pytest.raises(ConfigError) as caught:
            load(sink({"labels": "level", "compress": "yes", "max_items": 0}))
        keys = [p.key for p in caught.value.problems]
        assert [
            "sinks[0].format_options.labels",
            "sinks[0].format_options.compress",
            "sinks[0].format_options.max_items",
        ] == keys

    def test_the_formats_own_objection_names_the_option(self) -> None:
        """A value the type allows but the platform does not (OptionError): key and why."""
        with pytest.raises(ConfigError) as caught:
            load(sink({"index": "App"}))
        problem = caught.value.problems[0]
        expected = ("sinks[0].format_options.index", "App", "a lower-case index name")
        assert expected == (problem.key, problem.value, problem.expected)

    def test_environment_references_are_interpolated(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """`${NAME}` in an option is the environment variable, as everywhere in the config."""
        monkeypatch.setenv("SAMPLE_TOKEN", "s3cret")
        options = load(sink({"token": "${SAMPLE_TOKEN}"}))
        assert "s3cret" == options.sinks[0].format_options.token

    def test_a_secret_option_is_never_shown(self) -> None:
        """An error about a token-like option hides its value."""
        with pytest.raises(ConfigError) as caught:
            load(sink({"token": ["s3cret-value"]}))
        assert "s3cret-value" not in str(caught.value)
        assert "sinks[0].format_options.token" == caught.value.key

    def test_a_format_without_options_refuses_any(self) -> None:
        """ndjson has no options: any key is a mistake, and the message says so."""
        with pytest.raises(ConfigError) as caught:
            load(sink({"index": "x"}, fmt="ndjson"))
        assert "an option of format ndjson: none" == caught.value.expected

    def test_format_options_must_be_a_table(self) -> None:
        """A list where the table belongs: ConfigError naming `format_options`."""
        with pytest.raises(ConfigError) as caught:
            load(sink(["index", "app"]))
        assert "sinks[0].format_options" == caught.value.key


class TestBuildInCode:
    def test_a_mapping_is_checked_and_taken_literally(self) -> None:
        """Settings built in code: the mapping is checked, `${NAME}` stays text."""
        built = formatoptions.build("sample", {"token": "${NOT_AN_ENV}", "labels": ["a"]})
        assert SampleOptions(labels=("a",), token="${NOT_AN_ENV}") == built

    def test_an_instance_passes_and_none_gives_defaults(self) -> None:
        """An Options instance is used as it is; None means the defaults."""
        options = SampleOptions(index="x")
        assert options is formatoptions.build("sample", options)
        assert SampleOptions() == formatoptions.build("sample", None)

    def test_a_bad_mapping_in_code_is_a_config_error(self) -> None:
        """The same checks as the configuration's, with the option's key."""
        with pytest.raises(ConfigError) as caught:
            formatoptions.build("sample", {"max_items": -1})
        assert "format_options.max_items" == caught.value.key

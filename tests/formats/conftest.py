"""Fixtures every wire format's tests share: the `responses` mock and the sinks closed after."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import responses

from bridge.sinks.http import HttpSink


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    """Requests answered by `responses` (exact bytes and headers); unused replies are fine."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def sinks() -> Iterator[list[HttpSink]]:
    """Sinks a test appends here are closed at teardown."""
    made: list[HttpSink] = []
    yield made
    for sink in made:
        sink.close(0.5)


def dead_ids(path: Path) -> list[str]:
    """The `event_id`s in a dead-letter file, in order (none when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(json.loads(r)["line"])["event_id"] for r in path.read_text().splitlines()]

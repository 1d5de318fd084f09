"""Fixtures shared by the sink tests."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

import bridge.sinks.writer as writer_module


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A real pipe `(read_fd, write_fd)`; both ends closed at teardown if still open."""
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):
            os.close(fd)


@pytest.fixture
def reports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the sink reports on stderr, instead of stderr."""
    made: list[str] = []

    def record(cause: str, message: str) -> bool:
        made.append(message)
        return True

    monkeypatch.setattr(writer_module, "report", record)
    return made

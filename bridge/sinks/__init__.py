"""Sinks: where encoded event lines go (file, stdout, http); `extension.build_sink` picks one."""

from __future__ import annotations

from bridge.sinks.base import Sink
from bridge.stats import SinkStats

__all__ = ["Sink", "SinkStats"]

"""Sinks: where encoded event lines go (file, stdout, http). `build_sink` picks one by type."""

from __future__ import annotations

from bridge.sinks.base import Sink, SinkStats

__all__ = ["Sink", "SinkStats"]

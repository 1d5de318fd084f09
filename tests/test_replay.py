"""`flask bridge replay` against a real local collector, `--dry-run`, progress, and how the
dead-letter file is rewritten once events are delivered."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask

from bridge import SignalBridge
from bridge.cli import bridge_command
from bridge.replay import parse_records, read_dead_letters, rewrite_without
from tests.collector import Collector, Reply
from tests.conftest import build_app, read_events


def invoke(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(bridge_command, list(args))


def record(n: int, **extra: Any) -> dict[str, Any]:
    line = json.dumps({"event": "order.paid", "event_id": f"id-{n}"})
    return {"time": f"2026-12-0{n}T00:00:00Z", "reason": "rejected_4xx", "line": line, **extra}


def write_records(path: Path, *records: dict[str, Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def bridges() -> Iterator[list[SignalBridge]]:
    made: list[SignalBridge] = []
    yield made
    for each in made:
        each.close(timeout=1.0)


def http_app(url: str, dead: Path, bridges: list[SignalBridge]) -> tuple[Flask, SignalBridge]:
    sink = {"type": "http", "url": url, "dead_letter_path": str(dead), "batch_timeout": 0.05}
    app = build_app(BRIDGE_SINKS=[sink])
    bridge = SignalBridge(app)
    bridges.append(bridge)
    return app, bridge


class TestReplayAgainstACollector:
    def test_fails_while_down_then_delivers_and_empties_the_file(
        self, tmp_path: Path, bridges: list[SignalBridge]
    ) -> None:
        """Collector down: exit 1 and the file untouched; up again: every event delivered
        with its original event_id, and the delivered records are gone from the file."""
        dead = tmp_path / "dead.jsonl"
        with Collector() as collector:
            app, bridge = http_app(collector.url, dead, bridges)
            collector.plan(Reply(400, body=b"mapping error"))
            for n in range(3):
                bridge.emitter(app).emit("s", "order.paid", "info", {"n": n})
            assert bridge.flush(timeout=20.0)
            refused = [
                json.loads(json.loads(x)["line"])["event_id"] for x in dead.read_text().splitlines()
            ]
            assert ["http-0"] * 3 == [json.loads(x)["sink"] for x in dead.read_text().splitlines()]
            before = dead.read_bytes()

            collector.down()
            result = invoke(app, "replay", str(dead), "--timeout", "1")
            assert 1 == result.exit_code, result.output
            assert (
                "Error: replay incomplete: not all delivered within 1s"
                == (result.output.splitlines()[-1])
            )
            assert before == dead.read_bytes()
            bridge.close(timeout=0.5)  # what it still holds is dropped, not sent later

            app, _ = http_app(collector.url, dead, bridges)
            collector.up()
            result = invoke(app, "replay", str(dead))
            assert 0 == result.exit_code, result.output
            assert [
                "resent 3 of 3 events to http-0",
                f"removed 3 delivered records from {dead}",
            ] == result.output.splitlines()
            assert refused == collector.event_ids()
        assert b"" == dead.read_bytes()

    def test_refused_again_into_the_same_file_is_kept_once(
        self, tmp_path: Path, bridges: list[SignalBridge]
    ) -> None:
        """Events the collector refuses again are dead-lettered again into the same file;
        the file holds each of them once (the new record), and replay exits 1."""
        dead = write_records(tmp_path / "dead.jsonl", record(1), record(2))
        with Collector() as collector:
            app, _ = http_app(collector.url, dead, bridges)
            collector.always(Reply(422, body=b"bad field"))
            result = invoke(app, "replay", str(dead))
        assert 1 == result.exit_code, result.output
        assert "Error: replay incomplete: 2 dead-lettered again" == result.output.splitlines()[-1]
        kept = [json.loads(x) for x in dead.read_text().splitlines()]
        assert [("id-1", 422), ("id-2", 422)] == [
            (json.loads(r["line"])["event_id"], r["status"]) for r in kept
        ]


class TestDryRunAndProgress:
    def test_dry_run_lists_and_sends_nothing(self, tmp_path: Path) -> None:
        """--dry-run: count, first and last time, reasons and target sink; nothing sent."""
        dead = write_records(
            tmp_path / "dead.jsonl",
            record(3),
            record(1, reason="too_large"),
            record(2, sink="file-0"),
        )
        before = dead.read_bytes()
        out = tmp_path / "out.jsonl"
        app = build_app(BRIDGE_SINKS=[{"type": "file", "path": str(out)}])
        bridge = SignalBridge(app)
        try:
            result = invoke(app, "replay", str(dead), "--sink", "file-0", "--dry-run")
        finally:
            bridge.close(timeout=5.0)
        assert 0 == result.exit_code, result.output
        assert [
            f"{dead}: 3 dead-lettered events",
            "  first: 2026-12-01T00:00:00Z",
            "  last:  2026-12-03T00:00:00Z",
            "  reasons: rejected_4xx 2, too_large 1",
            "  to file-0: 3",
            "dry run: nothing sent, the file is unchanged",
        ] == result.output.splitlines()
        assert before == dead.read_bytes()
        assert [] == read_events(out)

    def test_progress_per_chunk_and_the_sink_named_in_the_record(self, tmp_path: Path) -> None:
        """Records go to the sink named in them; a replay of several chunks prints progress."""
        dead = write_records(
            tmp_path / "dead.jsonl", *(record(n, sink="file-1") for n in range(1, 6))
        )
        paths = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
        app = build_app(BRIDGE_SINKS=[{"type": "file", "path": str(p)} for p in paths])
        bridge = SignalBridge(app)
        try:
            result = invoke(app, "replay", str(dead), "--every", "2")
        finally:
            bridge.close(timeout=5.0)
        assert 0 == result.exit_code, result.output
        assert [
            "  file-1: 2/5 (40%)",
            "  file-1: 4/5 (80%)",
            "  file-1: 5/5 (100%)",
            "resent 5 of 5 events to file-1",
            f"removed 5 delivered records from {dead}",
        ] == result.output.splitlines()
        assert [] == read_events(paths[0])
        assert [f"id-{n}" for n in range(1, 6)] == [e["event_id"] for e in read_events(paths[1])]


class TestRewrite:
    def test_keeps_undelivered_unreadable_and_appended(self, tmp_path: Path) -> None:
        """Only delivered records leave; unreadable lines and lines appended after the read
        stay; the file stays 0600."""
        dead = write_records(tmp_path / "dead.jsonl", record(1), record(2))
        with dead.open("a") as handle:
            handle.write("not a record\n")
        records, size = read_dead_letters(dead)
        with dead.open("a") as handle:  # a worker dead-letters another event meanwhile
            handle.write(json.dumps(record(4)) + "\n")
        rewrite_without(dead, records[:1], size)
        kept, _ = parse_records(dead.read_bytes())
        assert [b'{"event": "order.paid", "event_id": "id-2"}\n', None, kept[2].line] == [
            r.line for r in kept
        ]
        assert b'"id-4"' in (kept[2].line or b"")
        assert 0o600 == dead.stat().st_mode & 0o777

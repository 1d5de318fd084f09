"""The benchmarks still run against the current code, on tiny counts (timings never checked)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import pytest

from benchmarks import __main__ as entry
from benchmarks import (
    bench_audit,
    bench_breakdown,
    bench_capture,
    bench_formats,
    bench_request,
    bench_sink,
    runner,
)
from benchmarks.common import markdown_table, target_line
from bridge import formats
from bridge.pending import MAX_EVENTS


def table_rows(markdown: str) -> list[str]:
    """The first cell of every body row of every table in `markdown`."""
    rows = []
    for line in markdown.splitlines():
        if line.startswith("| ") and not re.match(r"\| -+:? \|", line):
            rows.append(line.split(" | ")[0].removeprefix("| ").strip())
    return rows


def assert_rows(markdown: str, expected: Iterable[str]) -> None:
    missing = [row for row in expected if row not in table_rows(markdown)]
    assert [] == missing


@pytest.fixture(scope="module")
def request_section() -> str:
    """One quick run shared by the tests below: two workers per row taking turns (~10 s)."""
    return bench_request.run(quick=True, rounds=2, batch=2, replicas=2)


class TestBenchRequest:
    def test_quick_run_has_every_variant(self, request_section: str) -> None:
        """The request section has a row per variant and a verdict per target."""
        assert_rows(request_section, bench_request.REQUEST_ROWS)
        assert 14 == len(re.findall(r"^- (met|\*\*missed\*\*)", request_section, flags=re.M))

    def test_bridge_variants_write_their_events(self, request_section: str) -> None:
        """Each variant's events per request match the signals it captures, over its workers
        (counted in its file, on its redirected stdout, or by the collector)."""
        events = {
            line.split(" | ")[0].removeprefix("| "): line.split(" | ")[1]
            for line in request_section.splitlines()
            if line.startswith("| ")
        }
        expected = {
            bench_request.BARE: "0.0",
            bench_request.ONE: "1.0",
            bench_request.DEFAULT: "2.0",
            bench_request.DEFAULT_LOGIN: "3.0",
            bench_request.BUILTIN: "9.0",
            bench_request.STDOUT: "2.0",
            bench_request.HTTP_MEMORY: "2.0",
            bench_request.HTTP_SPOOL: "2.0",
            bench_request.FLOOR_DEFAULT: "2.0",
            bench_request.MINIMAL: "3.0",
            bench_request.FLOOR_BUILTIN: "9.0",
            bench_request.JSON_LOGGER: "3.0",
            bench_request.NAIVE: "9.0",
            bench_request.STRING: "0.0",
        }
        assert expected == {name: events[name] for name in expected}


class Counter:
    """A bench for the runner tests: counts its batches, fails where told to."""

    def __init__(self, fail_in: str) -> None:
        self.fail_in = fail_in
        self.batches = 0

    def batch(self, size: int) -> tuple[int, int]:
        if self.fail_in == "batch":
            raise ValueError("batch refused")
        self.batches += 1
        return os.getpid(), self.batches * size

    def close(self) -> None:
        if self.fail_in == "close":
            raise ValueError("close refused")


def counter(pids: Path, fail_in: str = "") -> Counter:
    """The workers' factory: notes the worker's pid in `pids` first, so a test can check it."""
    (pids / str(os.getpid())).touch()
    if fail_in == "start":
        raise ValueError("start refused")
    return Counter(fail_in)


def living(pids: Path) -> list[int]:
    """The processes noted in `pids` that still exist (zombies included)."""
    alive = []
    for pid in sorted(int(path.name) for path in pids.iterdir()):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    return alive


class TestWorkers:
    def test_each_worker_keeps_its_state_in_its_own_process(self, tmp_path: Path) -> None:
        """Batches go to the named worker, which keeps its bench between batches."""
        with runner.workers({"a": (counter, (tmp_path,)), "b": (counter, (tmp_path,))}) as pool:
            first_a, first_b = pool["a"].batch(10), pool["b"].batch(10)
            second_a = pool["a"].batch(10)
            assert 2 == len(living(tmp_path))
        assert (first_a[0], 20) == second_a
        assert [10, 10] == [first_a[1], first_b[1]]
        assert first_a[0] not in (first_b[0], os.getpid())
        assert [] == living(tmp_path)

    @pytest.mark.parametrize("fail_in", ["start", "batch", "close", "parent"])
    def test_failure_is_reported_and_stops_every_worker(self, tmp_path: Path, fail_in: str) -> None:
        """A failure (with the worker's traceback) reaches the caller; no worker outlives it."""
        specs = {"ok": (counter, (tmp_path,)), "bad": (counter, (tmp_path, fail_in))}
        with (
            pytest.raises((runner.WorkerError, ValueError)) as caught,
            runner.workers(specs) as pool,
        ):
            pool["ok"].batch(1)
            pool["bad"].batch(1)
            if fail_in == "parent":
                raise ValueError("parent refused")
        assert f"ValueError: {fail_in} refused" in f"{caught.type.__name__}: {caught.value}"
        assert 2 == len(list(tmp_path.iterdir()))
        assert [] == living(tmp_path)


class TestBenchCapture:
    def test_quick_run_has_every_receiver(self, tmp_path: Path) -> None:
        """The capture section has a row per receiver on each path (real request, context
        pushed by hand) and both verdicts per path."""
        text = bench_capture.run(quick=True, rounds=1, sends=5, work=tmp_path)
        assert_rows(text, bench_capture.CAPTURE_ROWS)
        assert 6 == len(bench_capture.CAPTURE_ROWS)
        assert 4 == len(re.findall(r"^- (met|\*\*missed\*\*)", text, flags=re.MULTILINE))

    def test_bridge_rows_write_every_event(self, tmp_path: Path) -> None:
        """Both bridge rows land every event of a batch longer than one round of captures."""
        sends = MAX_EVENTS + 3
        text = bench_capture.run(quick=True, rounds=1, sends=sends, work=tmp_path)
        assert_rows(text, (bench_capture.CAPTURE_BRIDGE, bench_capture.IMMEDIATE_BRIDGE))


class TestBenchSink:
    def test_quick_run_has_every_writer(self, tmp_path: Path) -> None:
        """The sink section has a row per writer (each checked to land every event) and both
        verdicts per bridge row."""
        text = bench_sink.run(quick=True, rounds=1, events=5, work=tmp_path)
        assert_rows(text, bench_sink.SINK_ROWS)
        verdicts = re.findall(r"^- (met|\*\*missed\*\*)", text, flags=re.MULTILINE)
        assert 2 * len(bench_sink.BRIDGE_ROWS) == len(verdicts)


class TestBenchBreakdown:
    def test_quick_run_has_every_piece(self, tmp_path: Path) -> None:
        """The breakdown times every piece of the capture path and of the write at the
        request's end, with the events a real request captured."""
        text = bench_breakdown.run(quick=True, calls=3, repeats=1, work=tmp_path)
        assert_rows(text, bench_breakdown.BREAKDOWN_ROWS)

    def test_captures_are_timed_in_chunks_below_a_round(self, tmp_path: Path) -> None:
        """More calls than one request's list holds are still only captured, never written
        inside the timed part (the Pending list is checked after every chunk)."""
        text = bench_breakdown.run(quick=True, calls=MAX_EVENTS * 2 + 1, repeats=1, work=tmp_path)
        assert_rows(text, bench_breakdown.CAPTURING)

    def test_profile_names_the_pipeline(self) -> None:
        """The cProfile report covers the emitter's capture and its write at the request's end."""
        report = bench_breakdown.profile_capture(sends=5, top=50)
        assert "emitter.py" in report
        assert "(write_captured)" in report


class TestBenchFormats:
    def test_every_implemented_format_has_a_row(self) -> None:
        """One row per format, each delivered in full into the local receiver."""
        text = bench_formats.run(quick=True, rounds=1, events=30)
        assert_rows(text, formats.IMPLEMENTED)


class TestBenchAudit:
    def test_quick_run_has_every_fsync_policy_and_counts_every_record(self) -> None:
        """One row per policy beside the plain sink; `measure` checks every line landed."""
        text = bench_audit.run(quick=True)
        assert_rows(text, bench_audit.ROWS)
        assert "sealing one login record" in text


class TestMain:
    def test_quick_run_writes_every_section(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`python -m benchmarks --quick --output F` writes the header and every section."""
        sections = [name for name in entry.SECTIONS if name != "bench_http"]
        monkeypatch.setattr(entry, "SECTIONS", tuple(sections))
        tiny = {
            "bench_request": lambda quick: bench_request.run(quick, rounds=1, batch=1),
            "bench_capture": lambda quick: bench_capture.run(quick, rounds=1, sends=2),
            "bench_sink": lambda quick: bench_sink.run(quick, rounds=1, events=2),
            "bench_breakdown": lambda quick: bench_breakdown.run(quick, calls=2, repeats=1),
            "bench_formats": lambda quick: bench_formats.run(quick, rounds=1, events=20),
            "bench_audit": lambda quick: bench_audit.run(quick=True),
        }
        monkeypatch.setattr(entry, "_runner", tiny.__getitem__)
        output = tmp_path / "RESULTS.md"
        assert 0 == entry.main(["--quick", "--output", str(output)])
        headings = re.findall(r"^## (.+)$", output.read_text(encoding="utf-8"), re.MULTILINE)
        expected = [
            "Request overhead (Flask test client)",
            "Cost of one captured event on the request thread",
            "Sink throughput and CPU per event (outside any request)",
            "Where one captured event's time goes",
            "Wire formats: end to end into a local receiver",
            "Audit trail: the cost of a login record",
        ]
        assert expected == headings


class TestCommon:
    def test_markdown_table_aligns_numbers_right(self) -> None:
        """Numeric columns are right-aligned, text columns left."""
        expected = "| a | b |\n| --- | ---: |\n| x | 1,234.5 |"
        assert expected == markdown_table(("a", "b"), [("x", "1,234.5")])

    @pytest.mark.parametrize(
        ("actual", "at_most", "expected"),
        [
            (4.0, True, "- met: overhead: 4.0% (target ≤ 5.0%)"),
            (7.5, True, "- **missed** by 2.5%: overhead: 7.5% (target ≤ 5.0%)"),
            (2.0, False, "- **missed** by 3.0%: overhead: 2.0% (target ≥ 5.0%)"),
        ],
    )
    def test_target_line(self, actual: float, at_most: bool, expected: str) -> None:
        """A target line says met, or missed and by how much."""
        assert expected == target_line("overhead", actual, 5.0, unit="%", at_most=at_most)

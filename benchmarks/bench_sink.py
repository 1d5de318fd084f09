"""Events per second and CPU per event outside any request: the bridge's sinks and its peers.

Throughput runs outside any request, as a job worker would: the bridge gets a custom signal
sent in a loop, then `flush()`; the others get the same fields through their own API (the
contenders are in `loop_writers`). The http rows post to the counting collector
(benchmarks.collector) in a process of its own. Both process CPU and the calling thread's CPU
are reported: the http sink sends from a thread of its own.
"""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory

from benchmarks.collector import CountingCollector
from benchmarks.common import interleave, markdown_table, median, scratch_dir, target_line
from benchmarks.loop_writers import (
    BARE,
    BRIDGE_ROWS,
    FIELDS,
    HTTP_MEMORY,
    HTTP_ROWS,
    HTTP_SPOOL,
    JSON_LOGGER,
    SINK_ROWS,
    Writer,
    bare_receiver_writer,
    batched_bridge_writer,
    file_bridge_writer,
    floor_writer,
    http_bridge_writer,
    json_logger_writer,
    stdout_bridge_writer,
    structlog_writer,
)

__all__ = ["BRIDGE_ROWS", "SINK_ROWS", "run"]


def measure_sinks(work: Path, *, rounds: int, events: int) -> list[Writer]:
    collector = CountingCollector()
    try:
        writers = [
            file_bridge_writer(work),
            batched_bridge_writer(work),
            stdout_bridge_writer(work),
            http_bridge_writer(HTTP_MEMORY, work, collector, spool=False),
            http_bridge_writer(HTTP_SPOOL, work, collector, spool=True),
            json_logger_writer(work),
            structlog_writer(work),
            floor_writer(work),
            bare_receiver_writer(work),
        ]
        interleave([w.contender(events, warmup=50) for w in writers], rounds, seed=2)
    finally:
        collector.close()
    return writers


def sink_section(writers: list[Writer], *, rounds: int, events: int) -> str:
    rate = {w.name: 1.0 / median(w.wall) for w in writers}
    cpu = {w.name: median(w.cpu) * 1e6 for w in writers}
    thread = {w.name: median(w.thread_cpu) * 1e6 for w in writers}
    # The http sink sends from a thread of its own (the collector's part of the work): its
    # target counts the calling thread only. The others write on the calling thread.
    counted = {w.name: w.thread_cpu if w.name in HTTP_ROWS else w.cpu for w in writers}
    by_name = {w.name: w for w in writers}

    def per_round(ours: list[float], theirs: list[float]) -> float:
        """The median of per-round ratios: both ran in the same round, so drift cancels."""
        return median(a / b for a, b in zip(ours, theirs, strict=True))

    # events/s ratio = their seconds per event over ours; CPU ratio = ours over the bare's
    speed = {w.name: per_round(by_name[JSON_LOGGER].wall, w.wall) for w in writers}
    cost = {w.name: per_round(counted[w.name], by_name[BARE].cpu) for w in writers}
    rows = [
        (
            w.name,
            f"{rate[w.name]:,.0f}",
            f"{median(w.wall) * 1e6:,.2f}",
            f"{cpu[w.name]:,.2f}",
            f"{thread[w.name]:,.2f}",
            f"{speed[w.name]:.2f}x",
            f"{cost[w.name]:.2f}x",
        )
        for w in writers
    ]
    table = markdown_table(
        (
            "writer",
            "events/s",
            "wall µs / event",
            "process CPU µs / event",
            "calling thread CPU µs / event",
            "events/s vs python-json-logger",
            "CPU vs the bare receiver (http: calling thread)",
        ),
        rows,
    )
    lines = []
    for name in BRIDGE_ROWS:
        kind = "calling-thread" if name in HTTP_ROWS else "process"
        lines.append(
            target_line(
                f"{name}: {kind} CPU per event vs the bare receiver's",
                cost[name],
                2.0,
                unit="x",
                at_most=True,
                digits=2,
            )
        )
        lines.append(
            target_line(
                f"{name}: events/s vs python-json-logger",
                speed[name],
                3.0,
                unit="x",
                at_most=False,
                digits=2,
            )
        )
    return "\n\n".join(
        [
            "## Sink throughput and CPU per event (outside any request)",
            f"A custom signal sent in a loop outside any request, as a job worker would: "
            f"{events} events per batch (fields: {', '.join(FIELDS)}), {rounds} interleaved "
            "rounds, each batch after 50 untimed events; medians of per-batch figures. The "
            "others get the same fields through their own API. A bridge's batch ends when "
            "`flush()` returned: written to its file, to fd 1 (redirected to a file for the "
            "round, restored after), or acknowledged by a counting collector on 127.0.0.1 in a "
            "process of its own (http sink defaults: NDJSON, gzip; memory queue or disk spool). "
            "Process CPU is `time.process_time()` (every thread of this process: it includes "
            "the http sink's sending thread); calling-thread CPU is `time.thread_time()` of "
            "the loop's thread. The two ratio columns are medians of per-round ratios (both "
            "ran in the same round, so a neighbour's load cancels out). Files and the spool "
            "are on a memory file system where there is one (/dev/shm). Every file's line "
            "count, and the collector's count, was checked against the events sent.",
            table,
            "Targets per bridge row: CPU per event at most 2x the bare receiver's "
            "(`orjson.dumps(kwargs)` + `os.write`), counting the whole process for the file "
            "and stdout sinks, and the calling thread only for the http sink (its sending "
            "thread does what the collector's network round trips demand); events/s at least "
            "3x python-json-logger + FileHandler.",
            "\n".join(lines),
        ]
    )


def run(
    quick: bool = False,
    *,
    rounds: int | None = None,
    events: int | None = None,
    work: Path | None = None,
) -> str:
    """The sink section as Markdown; `quick` (or explicit counts) for a smoke run."""
    rounds = rounds or (2 if quick else 15)
    events = events or (300 if quick else 4000)
    with TemporaryDirectory(prefix="bench-sink-", dir=scratch_dir()) as tmp:
        writers = measure_sinks(work or Path(tmp), rounds=rounds, events=events)
    return sink_section(writers, rounds=rounds, events=events) + "\n"

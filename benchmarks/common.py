"""Timing helpers shared by the benchmarks: interleaved rounds, medians, ratios, Markdown.

Every comparison runs in one process with its contenders interleaved: each round runs one
batch of every contender, in a shuffled order, and only the measured contender is connected
while its batch runs. A noisy neighbour or a CPU frequency change then hits every contender
alike, and medians throw out the batches it spoiled.
"""

from __future__ import annotations

import itertools
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

__all__ = [
    "Contender",
    "interleave",
    "machine_header",
    "markdown_table",
    "median",
    "scratch_dir",
    "target_line",
    "time_calls",
]

REPO = Path(__file__).resolve().parent.parent
PACKAGES = (
    "flask",
    "werkzeug",
    "jinja2",
    "blinker",
    "orjson",
    "structlog",
    "python-json-logger",
)


def _nothing() -> None:
    return None


@dataclass
class Contender:
    """One way of doing the job: `start` connects it, `batch` times it, `stop` disconnects it.

    `batch()` returns its samples (seconds, or whatever the caller compares); everything it
    returns is pooled over the rounds. `start` and `stop` run outside the timed part.
    """

    name: str
    batch: Callable[[], list[float]]
    start: Callable[[], None] = _nothing
    stop: Callable[[], None] = _nothing
    samples: list[float] = field(default_factory=list)


def interleave(contenders: Sequence[Contender], rounds: int, *, seed: int = 1) -> None:
    """Run `rounds` rounds of one batch per contender, shuffled; samples land on each one."""
    order = list(contenders)
    shuffle = random.Random(seed).shuffle
    for _ in range(rounds):
        shuffle(order)
        for contender in order:
            contender.start()
            try:
                contender.samples.extend(contender.batch())
            finally:
                contender.stop()


def scratch_dir() -> str | None:
    """Where the benchmarks' files go: a memory file system when there is one (/dev/shm), so
    that a neighbour's disk traffic (fsyncs of a test suite) never stalls a timed `write()`;
    None (the default temporary directory) otherwise."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def median(values: Iterable[float]) -> float:
    """The median, or NaN for no values (a contender that never ran)."""
    data = list(values)
    return statistics.median(data) if data else float("nan")


def time_calls(
    fns: Mapping[str, Callable[[], object]],
    *,
    calls: int,
    repeats: int,
    between: Callable[[], None] = _nothing,
) -> dict[str, float]:
    """CPU µs per call of each function: median over `repeats` interleaved loops of `calls`.

    Thread CPU time, not wall time: a neighbour that takes the CPU away does not count, so the
    small pieces stay comparable on a busy machine. Includes the ~0.05 µs of loop and call.
    `between` runs after every loop, untimed (to empty a file, say).
    """
    results: dict[str, list[float]] = {name: [] for name in fns}
    clock = time.thread_time_ns
    for _ in range(repeats):
        for name, fn in fns.items():
            started = clock()
            for _ in itertools.repeat(None, calls):
                fn()
            results[name].append((clock() - started) / calls / 1000.0)
            between()
    return {name: statistics.median(values) for name, values in results.items()}


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub Markdown table; numbers are right-aligned."""
    body = [[str(cell) for cell in row] for row in rows]
    align = [
        "---:" if body and all(_numeric(row[i]) for row in body) else "---"
        for i in range(len(headers))
    ]
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(row) + " |" for row in body),
    ]
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    if text == "-":  # no value in this row: the column stays numeric
        return True
    stripped = text.replace(",", "").replace("%", "").replace("x", "").replace("+", "").strip()
    try:
        float(stripped)
    except ValueError:
        return False
    return True


def target_line(
    what: str, actual: float, limit: float, *, unit: str, at_most: bool, digits: int = 1
) -> str:
    """`- met: ...` or `- **missed** by ...: ...` for one target, `digits` after the point."""
    met = actual <= limit if at_most else actual >= limit
    sign = "≤" if at_most else "≥"
    shown = f"{what}: {actual:,.{digits}f}{unit} (target {sign} {limit:,.{digits}f}{unit})"
    if met:
        return f"- met: {shown}"
    gap = actual - limit if at_most else limit - actual
    return f"- **missed** by {gap:,.{digits}f}{unit}: {shown}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "HEAD", "--name-only", "--", "bridge"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}, with uncommitted changes to {', '.join(dirty)}" if dirty else head


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def machine_header() -> str:
    """Markdown lines saying when, where and with what the numbers were measured."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    versions = ", ".join(f"{name} {_version(name)}" for name in PACKAGES)
    lines = [
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; commit {_git_revision()}",
        f"- machine: {_cpu_model()}, {cpus} CPUs usable, load average {load} at start",
        f"- system: {platform.platform()}",
        f"- Python {platform.python_version()} ({platform.python_implementation()}, "
        f"{sys.executable.replace(str(REPO), '.')})",
        f"- libraries: {versions}",
    ]
    overrides = sorted(key for key in os.environ if key.startswith("BRIDGE_"))
    if overrides:
        lines.append(f"- warning: environment overrides the benchmark's config: {overrides}")
    return "\n".join(lines)

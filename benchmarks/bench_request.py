"""What the bridge costs a Flask request, against a bare app, floors and other receivers.

Every row has its own copy of the same small app (flash, custom `user-login` signal, a
template with a list) in worker processes of its own (`benchmarks.runner`), connected once for
the whole run. Switching a bridge on and off between batches in one process left every later
request slower, bridged or bare; connecting every contender in one process taxes the bare app
(about 20 µs a request with four bridges on other apps). Identical processes still differ in
speed by a few %, so each row has a few workers taking turns. One process runs at a time, the
rows interleaved in shuffled rounds as in the other sections. The http rows post to one
counting collector (benchmarks.collector), in a process of its own, each worker on its own path.

The targets are ratios of overheads (a row's median minus the bare app's), so each row that
has a floor (plain receivers writing the same events) shows its overhead over the floor's.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from benchmarks.apps import PAGE
from benchmarks.collector import CountingCollector
from benchmarks.common import (
    Contender,
    interleave,
    markdown_table,
    median,
    scratch_dir,
    target_line,
)
from benchmarks.request_sites import (
    BARE,
    BUILTIN,
    DEFAULT,
    DEFAULT_LOGIN,
    FLOOR_BUILTIN,
    FLOOR_DEFAULT,
    FLOORS,
    HTTP_MEMORY,
    HTTP_SPOOL,
    JSON_LOGGER,
    MINIMAL,
    NAIVE,
    ONE,
    REQUEST_ROWS,
    STDOUT,
    STRING,
    open_site,
)
from benchmarks.runner import Factory, Worker, workers
from benchmarks.worker_site import Batch

__all__ = [
    "BARE",
    "BUILTIN",
    "DEFAULT",
    "DEFAULT_LOGIN",
    "FLOOR_BUILTIN",
    "FLOOR_DEFAULT",
    "HTTP_MEMORY",
    "HTTP_SPOOL",
    "JSON_LOGGER",
    "MINIMAL",
    "NAIVE",
    "ONE",
    "REQUEST_ROWS",
    "STDOUT",
    "STRING",
    "run",
]


@dataclass
class Tally:
    """What one row's workers reported over the rounds."""

    label: str
    samples: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    requests: int = 0
    written: int = 0

    def contender(self, replicas: list[Worker], batch: int, warmup: int) -> Contender:
        """One batch per round, from each of the row's workers in turn."""
        turns = itertools.cycle(replicas)

        def run_batch() -> list[float]:
            result: Batch = next(turns).batch(batch, warmup)
            self.cpu.extend(result.cpu)
            self.requests += result.requests
            self.written += result.events
            return result.wall

        return Contender(self.label, run_batch, samples=self.samples)


def measure_requests(
    work: Path, *, rounds: int, batch: int, warmup: int, start_warmup: int, replicas: int
) -> list[Tally]:
    """Start the collector and `replicas` workers per row, each in its own directory; run
    `rounds` shuffled rounds of one batch per row, its workers taking turns; stop them all."""
    collector = CountingCollector()
    try:
        specs: dict[str, tuple[Factory, tuple[Any, ...]]] = {}
        for label in REQUEST_ROWS:
            for replica in range(1, replicas + 1):
                home = work / f"worker-{len(specs)}"
                home.mkdir()
                (home / "page.html").write_text(PAGE)
                specs[f"{label} #{replica}"] = (open_site, (label, home, collector.base))
        tallies = [Tally(label) for label in REQUEST_ROWS]
        with workers(specs, fixed=False) as pool:
            # One worker at a time, as the batches will be: warming up together, they would
            # take turns on the CPU and a sink would find its writes slow (and go to its thread).
            # The warm-up's events are counted here and left out of every batch.
            for worker in pool.values():
                worker.batch(0, start_warmup)
            contenders = [
                tally.contender(
                    [pool[f"{tally.label} #{n}"] for n in range(1, replicas + 1)], batch, warmup
                )
                for tally in tallies
            ]
            interleave(contenders, rounds)
    finally:
        collector.close()
    return tallies


@dataclass
class Medians:
    """Per-row medians of one measure (wall or CPU µs per request), and ratios between rows."""

    of: dict[str, float]

    def overhead(self, label: str) -> float:
        return self.of[label] - self.of[BARE]

    def percent(self, label: str) -> float:
        return (self.of[label] / self.of[BARE] - 1) * 100

    def vs(self, label: str, base: str) -> float:
        """`label`'s overhead over `base`'s (infinite when `base` measured no overhead)."""
        below = self.overhead(base)
        return self.overhead(label) / below if below > 0 else math.inf

    def vs_floor(self, label: str) -> str:
        return f"{self.vs(label, FLOORS[label]):.2f}x" if label in FLOORS else "-"


def targets(measure: str, m: Medians) -> list[str]:
    """The issue's targets on one measure: overhead ratios and the all-ten bound."""

    def ratio(what: str, actual: float, limit: float) -> str:
        return target_line(f"{what}, {measure}", actual, limit, unit="x", at_most=True, digits=2)

    return [
        ratio("default set vs its floor", m.vs(DEFAULT, FLOOR_DEFAULT), 1.0),
        ratio("default + user-login vs its floor", m.vs(DEFAULT_LOGIN, MINIMAL), 1.0),
        target_line(
            f"all ten built-ins, {measure} overhead",
            m.percent(BUILTIN),
            15.0,
            unit="%",
            at_most=True,
        ),
        ratio("all ten built-ins vs the naive receiver", m.vs(BUILTIN, NAIVE), 1 / 3),
        ratio("stdout sink, default set vs its floor", m.vs(STDOUT, FLOOR_DEFAULT), 1.0),
        ratio(
            "http sink (memory), default set vs its floor", m.vs(HTTP_MEMORY, FLOOR_DEFAULT), 1.0
        ),
        ratio("http sink (spool), default set vs its floor", m.vs(HTTP_SPOOL, FLOOR_DEFAULT), 1.0),
    ]


def request_section(
    sites: list[Tally], *, rounds: int, batch: int, warmup: int, replicas: int
) -> str:
    wall = Medians({site.label: median(site.samples) for site in sites})
    cpu = Medians({site.label: median(site.cpu) for site in sites})
    rows = []
    for site in sites:
        label = site.label
        events = site.written / site.requests if site.requests else 0.0
        rows.append(
            (
                label,
                f"{events:.1f}",
                f"{wall.of[label]:,.1f}",
                f"{wall.overhead(label):+,.1f}",
                f"{wall.percent(label):+.1f}%",
                wall.vs_floor(label),
                f"{cpu.of[label]:,.1f}",
                f"{cpu.overhead(label):+,.1f}",
                f"{cpu.percent(label):+.1f}%",
                cpu.vs_floor(label),
            )
        )
    headers = (
        "variant",
        "events / request",
        "median µs",
        "overhead µs",
        "overhead %",
        "overhead vs its floor",
        "median CPU µs",
        "CPU overhead µs",
        "CPU overhead %",
        "CPU overhead vs its floor",
    )

    layout = (
        "each with an address-space layout of its own: one fixed layout per row, repeated "
        "every run, can favour or handicap a row by more than the differences measured here, "
        "and several layouts per row average that out"
    )

    def against_string(label: str) -> str:
        return f"{wall.overhead(label) / wall.of[STRING] * 100:+.1f}%"

    return "\n\n".join(
        [
            "## Request overhead (Flask test client)",
            "`POST /login`: flashes a message, sends the custom `user-login` signal, renders a "
            "small template (a file, compiled once and cached) with a list. Each variant is its "
            f"own app in {replicas} worker process{'es' if replicas > 1 else ''} of its own "
            "(identical processes differ in speed by a few %; the row's processes take turns; "
            f"{layout}), connected once and warmed up before timing starts: a bridge switched "
            "on and off between batches in one process leaves every later request slower, bare "
            "ones too. The workers warm up one at a time; then one runs at a time, "
            f"interleaved: {rounds} rounds of one batch of {batch} timed requests per variant, "
            f"in a shuffled order, each batch after {warmup} untimed ones (a process woken "
            "after the others ran starts with cold caches). Medians of per-request wall time "
            "and of per-request CPU time (thread time: what the request itself burns, immune "
            "to neighbours taking the CPU away; an http sink's sending thread is not the "
            "request's). Overhead = a row's median minus the bare app's. Files are on a memory "
            "file system where there is one (/dev/shm).",
            "Where the events go: the file rows write a file; the stdout row writes the "
            "worker's fd 1, redirected to a file; the http rows post (sink defaults: NDJSON, "
            "gzip) to a counting collector on 127.0.0.1 in a process of its own. After each "
            "batch, untimed, every row waits until its events have landed (`flush()`; for "
            "http, until the collector counted every event the sink accepted), and "
            "events / request counts what landed: a row that lost events shows a short count. "
            "The floors are one plain receiver per signal, each doing `orjson.dumps` of a "
            "small dict (the event name and the signal's fields, no more than the bridge's "
            "event holds) and one `os.write`: what any receiver pays. "
            '"Overhead vs its floor" is the row\'s overhead over the overhead of the floor '
            "writing the same events: the 2-receiver floor for the default-set rows (file, "
            "stdout, http), the 3-receiver floor for default + user-login and "
            "python-json-logger, the 10-receiver floor for all ten built-ins and the naive "
            "receiver.",
            markdown_table(headers, rows),
            "\n".join(
                [
                    *targets("wall", wall),
                    *targets("CPU", cpu),
                    f"- reference: the naive receiver on all ten adds {wall.percent(NAIVE):+.1f}% "
                    f"wall, {cpu.percent(NAIVE):+.1f}% CPU; python-json-logger on 3 events "
                    f"{wall.percent(JSON_LOGGER):+.1f}% wall.",
                    "- reference: the same µs overheads measured against the "
                    "render_template_string request instead: default "
                    f"{against_string(DEFAULT)}, all ten {against_string(BUILTIN)}, naive "
                    f"{against_string(NAIVE)}.",
                ]
            ),
        ]
    )


def run(
    quick: bool = False,
    *,
    rounds: int | None = None,
    batch: int | None = None,
    replicas: int | None = None,
    work: Path | None = None,
) -> str:
    """The section as Markdown; `quick` (or explicit counts) for a smoke run."""
    rounds = rounds or (3 if quick else 50)
    batch = batch or (10 if quick else 20)
    replicas = replicas or (1 if quick else 4)
    warmup = 3 if quick else 10
    with TemporaryDirectory(prefix="bench-request-", dir=scratch_dir()) as tmp:
        sites = measure_requests(
            (work or Path(tmp)).resolve(),  # the workers run from the repository's root
            rounds=rounds,
            batch=batch,
            warmup=warmup,
            start_warmup=5 if quick else 100,
            replicas=replicas,
        )
    counts = {"rounds": rounds, "batch": batch, "warmup": warmup, "replicas": replicas}
    return request_section(sites, **counts) + "\n"

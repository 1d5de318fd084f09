"""What the bridge costs a Flask request, against a bare app and plain receivers.

Every contender has its own copy of the same small app (flash, custom `user-login` signal, a
template with a list) in worker processes of its own (`benchmarks.runner`), connected once for
the whole run. Switching a bridge on and off between batches in one process left every later
request slower, bridged or bare; connecting every contender in one process taxes the bare app
(about 20 µs a request with four bridges on other apps). Identical processes still differ in
speed by a few %, so each row has a few workers taking turns. One process runs at a time, the
rows interleaved in shuffled rounds as in the other sections.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from benchmarks.apps import PAGE
from benchmarks.common import Contender, interleave, markdown_table, median, target_line
from benchmarks.request_sites import (
    BARE,
    BUILTIN,
    DEFAULT,
    DEFAULT_LOGIN,
    JSON_LOGGER,
    MINIMAL,
    NAIVE,
    ONE,
    REQUEST_ROWS,
    STRING,
    Batch,
    open_site,
)
from benchmarks.runner import Factory, Worker, workers

__all__ = [
    "BARE",
    "BUILTIN",
    "DEFAULT",
    "DEFAULT_LOGIN",
    "JSON_LOGGER",
    "MINIMAL",
    "NAIVE",
    "ONE",
    "REQUEST_ROWS",
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
    """Start `replicas` workers per row, each in its own directory; run `rounds` shuffled
    rounds of one batch per row, its workers taking turns; stop them."""
    specs: dict[str, tuple[Factory, tuple[Any, ...]]] = {}
    for label in REQUEST_ROWS:
        for replica in range(1, replicas + 1):
            home = work / f"worker-{len(specs)}"
            home.mkdir()
            (home / "page.html").write_text(PAGE)
            specs[f"{label} #{replica}"] = (open_site, (label, home, start_warmup))
    tallies = [Tally(label) for label in REQUEST_ROWS]
    with workers(specs) as pool:
        contenders = [
            tally.contender(
                [pool[f"{tally.label} #{n}"] for n in range(1, replicas + 1)], batch, warmup
            )
            for tally in tallies
        ]
        interleave(contenders, rounds)
    return tallies


def request_section(
    sites: list[Tally], *, rounds: int, batch: int, warmup: int, replicas: int
) -> str:
    wall = {site.label: median(site.samples) for site in sites}
    cpu = {site.label: median(site.cpu) for site in sites}
    rows = []
    for site in sites:
        events = site.written / site.requests if site.requests else 0.0
        rows.append(
            (
                site.label,
                f"{events:.1f}",
                f"{wall[site.label]:,.1f}",
                f"{wall[site.label] - wall[BARE]:+,.1f}",
                f"{(wall[site.label] / wall[BARE] - 1) * 100:+.1f}%",
                f"{cpu[site.label]:,.1f}",
                f"{cpu[site.label] - cpu[BARE]:+,.1f}",
                f"{(cpu[site.label] / cpu[BARE] - 1) * 100:+.1f}%",
            )
        )
    headers = (
        "variant",
        "events / request",
        "median µs",
        "overhead µs",
        "overhead %",
        "median CPU µs",
        "CPU overhead µs",
        "CPU overhead %",
    )
    wall_pct = {label: (value / wall[BARE] - 1) * 100 for label, value in wall.items()}
    cpu_pct = {label: (value / cpu[BARE] - 1) * 100 for label, value in cpu.items()}

    def against_string(label: str) -> str:
        return f"{(wall[label] - wall[BARE]) / wall[STRING] * 100:+.1f}%"

    return "\n\n".join(
        [
            "## Request overhead (Flask test client)",
            "`POST /login`: flashes a message, sends the custom `user-login` signal, renders a "
            "small template (a file, compiled once and cached) with a list. Each variant is its "
            f"own app in {replicas} worker process{'es' if replicas > 1 else ''} of its own "
            "(identical processes differ in "
            "speed by a few %; the row's processes take turns), connected once and warmed up "
            "before timing starts: a bridge switched on and off between batches in one process "
            "leaves every later request slower, bare ones too. One process runs at a time, "
            f"interleaved: {rounds} rounds of one batch of {batch} timed requests per variant, in "
            f"a shuffled order, each batch after {warmup} untimed ones (a process "
            "woken after the others ran starts with cold caches). Medians of "
            "per-request wall time and of per-request CPU time (thread time: what the request "
            "itself burns, immune to neighbours taking the CPU away). An event costs more here "
            "than in the tight loops of the next sections: a request runs the capture path "
            "once or a few times with cold caches. The floor row is what any receiver pays.",
            markdown_table(headers, rows),
            "\n".join(
                [
                    target_line(
                        "default set, wall", wall_pct[DEFAULT], 5.0, unit="%", at_most=True
                    ),
                    target_line("default set, CPU", cpu_pct[DEFAULT], 5.0, unit="%", at_most=True),
                    target_line(
                        "all ten built-ins, wall",
                        wall_pct[BUILTIN],
                        15.0,
                        unit="%",
                        at_most=True,
                    ),
                    target_line(
                        "all ten built-ins, CPU", cpu_pct[BUILTIN], 15.0, unit="%", at_most=True
                    ),
                    f"- reference: the floor on the default set adds {wall_pct[MINIMAL]:+.1f}% "
                    f"wall, {cpu_pct[MINIMAL]:+.1f}% CPU.",
                    f"- reference: the naive receiver on all ten adds {wall_pct[NAIVE]:+.1f}% "
                    f"wall, {cpu_pct[NAIVE]:+.1f}% CPU (the issue expected about +26%).",
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
    rounds = rounds or (3 if quick else 75)
    batch = batch or (10 if quick else 20)
    replicas = replicas or (1 if quick else 3)
    warmup = 3 if quick else 10
    with TemporaryDirectory(prefix="bench-request-") as tmp:
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

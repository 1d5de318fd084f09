"""What the `flask bridge` commands print: configuration problems, the sinks table, verdicts.

Kept apart from `bridge.cli` (which loads the app and runs the commands) so that the wording
of results lives in one place. Everything here only formats and echoes; nothing probes or
sends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from bridge.errors import NO_VALUE, ConfigError
from bridge.workerstats import WorkerSnapshot

__all__ = [
    "count_sinks",
    "counter",
    "delivery_verdict",
    "explain",
    "print_table",
    "print_workers",
    "sink_line",
]


def explain(exc: ConfigError) -> None:
    """Every problem, as key, value and expectation, with where the key can be set."""
    count = len(exc.problems)
    title = "bridge configuration is invalid" + (f" ({count} problems):" if count > 1 else ":")
    click.secho(title, fg="red", err=True)
    for number, problem in enumerate(exc.problems):
        if number:
            click.echo("", err=True)
        click.echo(f"  key:      {problem.key}", err=True)
        if problem.value is not NO_VALUE:
            click.echo(f"  value:    {problem.value!r}", err=True)
        click.echo(f"  expected: {problem.expected}", err=True)
        top = problem.key.split(".", 1)[0].split("[", 1)[0].split(" ", 1)[0]
        if not top.startswith("BRIDGE_"):  # BRIDGE_CONFIG, BRIDGE_SINKS (environment): named
            name = f"BRIDGE_{top.upper()}"
            click.echo(
                f"  (set in the TOML file named by BRIDGE_CONFIG, app.config['{name}'] or the "
                f"environment variable {name}; later ones win)",
                err=True,
            )


def count_sinks(count: int) -> str:
    return f"{count} sink" if count == 1 else f"{count} sinks"


def print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell; the verdict column coloured, the last one free."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    for number, row in enumerate((header, *rows)):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        if number:
            cells[3] = click.style(cells[3], fg="green" if row[3] == "ok" else "red")
        click.echo("  " + "  ".join([*cells, row[-1]]))


def sink_line(name: str, counters: dict[str, Any]) -> str:
    keys = ("enqueued", "delivered", "dropped", "spooled", "dead_lettered", "queue_depth")
    text = " ".join(f"{key}={counters.get(key)}" for key in keys if key in counters)
    if counters.get("last_error"):
        text += f" last_error={counters['last_error']!r}"
    return f"  {name}: {text}"


def counter(counters: dict[str, Any], key: str) -> int:
    value = counters.get(key, 0)
    return int(value) if isinstance(value, int) else 0


def delivery_verdict(before: dict[str, Any], after: dict[str, Any], timeout: float) -> str:
    """ "ok", or why this sink did not deliver the test event (from its counters' change)."""
    if counter(after, "delivered") > counter(before, "delivered"):
        return "ok"
    if counter(after, "dead_lettered") > counter(before, "dead_lettered"):
        return "FAIL, refused by the collector (dead-lettered)"
    if counter(after, "dropped") > counter(before, "dropped"):
        return "FAIL, dropped"
    return f"FAIL, not delivered within {timeout:g}s"


WORKER_COUNTERS = ("enqueued", "delivered", "retried", "dropped", "spooled", "dead_lettered")


def print_workers(snapshots: Sequence[WorkerSnapshot], totals: dict[str, Any], now: float) -> None:
    """One row per worker and sink (pid, alive or dead, age of its snapshot, counters, queue
    depth, receiver errors), then one total row per sink."""
    header = ("worker", "state", "updated", "sink", *WORKER_COUNTERS, "queue_depth", "errors")
    rows: list[tuple[str, ...]] = []

    def row(
        who: str, state: str, age: str, name: str, counters: dict[str, Any], errors: int
    ) -> None:
        numbers = (str(counter(counters, key)) for key in (*WORKER_COUNTERS, "queue_depth"))
        rows.append((who, state, age, name, *numbers, str(errors)))

    for snapshot in snapshots:
        errors = counter(snapshot.stats, "receiver_errors")
        state = "alive" if snapshot.alive else "dead"
        age = f"{max(0.0, now - snapshot.updated):.1f}s ago"
        for name, counters in snapshot.stats.get("sinks", {}).items():
            row(f"pid {snapshot.pid}", state, age, name, counters, errors)
    for name, counters in totals["sinks"].items():
        row("total", "", "", name, counters, counter(totals, "receiver_errors"))
    widths = [max(len(cells[i]) for cells in (header, *rows)) for i in range(len(header))]
    for cells in (header, *rows):
        text = "  ".join(
            cell.rjust(w) if i > 3 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )
        dead = cells[1] == "dead"
        click.secho("  " + text.rstrip(), fg="yellow" if dead else None, bold=cells[0] == "total")

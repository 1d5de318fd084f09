"""`flask bridge ...`: check the configuration, send a test event, show counters, read files,
verify an audit trail.

Registered through the `flask.commands` entry point, so Flask's CLI finds the group without
loading the app; each command loads the app itself. That is what lets `check` explain a
`ConfigError` that made the app fail in `init_app`, instead of a traceback.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import closing
from pathlib import Path

import click
from flask import Flask
from flask.cli import ScriptInfo

from bridge.audit.chain import AuditKey
from bridge.audit.verifycli import explicit_keys, run_verify, verify_options
from bridge.clireport import (
    count_sinks,
    counter,
    delivery_verdict,
    explain,
    print_table,
    print_workers,
    sink_line,
)
from bridge.config import FileSinkSettings, load_settings
from bridge.errors import BridgeError, ConfigError
from bridge.extension import SignalBridge
from bridge.probes import probe_sink, sink_kind_and_target
from bridge.replay import (
    DeadRecord,
    assign_sinks,
    dry_run_report,
    read_dead_letters,
    replay_records,
    rewrite_without,
)
from bridge.signals import resolve_signals
from bridge.tail import (
    LEVEL_COLORS,
    EventFilter,
    EventLine,
    format_invalid,
    format_lines,
    json_for_terminal,
    tail_lines,
)
from bridge.workerstats import read_snapshots, stats_dir, total

__all__ = ["bridge_command"]

EXIT_CONFIG = 1  # the configuration is wrong, or the app failed to load
EXIT_PROBE = 3  # the configuration is valid but a sink cannot be reached
_sleep = time.sleep  # follow mode's poll; tests replace it to drive the file without waiting


@click.group("bridge")
def bridge_command() -> None:
    """flask-signal-bridge: check the configuration, send a test event, read event files."""


def _load_app() -> Flask:
    return click.get_current_context().ensure_object(ScriptInfo).load_app()


def _bridged_app() -> tuple[Flask, SignalBridge]:
    """The app, inside an app context, and its SignalBridge; a clear error when either fails."""
    ctx = click.get_current_context()
    try:
        app = _load_app()
    except BridgeError as exc:
        raise click.ClickException(f"{exc}\nRun `flask bridge check` for details.") from None
    ctx.with_resource(app.app_context())
    bridge = app.extensions.get("bridge")
    if not isinstance(bridge, SignalBridge):
        raise click.ClickException(
            "this app has no SignalBridge: call SignalBridge(app) or bridge.init_app(app)"
        )
    return app, bridge


# --- check ----------------------------------------------------------------------------------


@bridge_command.command("check")
@click.option("--timeout", default=3.0, show_default=True, help="Seconds per network probe.")
@click.pass_context
def check_command(ctx: click.Context, timeout: float) -> None:
    """Validate the configuration, list the signals, probe each sink (a table: sink, type,
    target, verdict, detail) and end with one verdict line.

    Exit status: 0 all good, 1 the configuration is wrong (or the app failed to load),
    3 valid but a sink cannot be written to (a directory, a collector that is unreachable or
    refuses the credentials).
    """
    try:
        app = _load_app()
    except ConfigError as exc:
        click.secho("the app failed to start: init_app raised a ConfigError", fg="red", err=True)
        explain(exc)
        ctx.exit(EXIT_CONFIG)
    except click.ClickException:
        raise
    except Exception as exc:
        click.secho(f"the app failed to load: {type(exc).__name__}: {exc}", fg="red", err=True)
        ctx.exit(EXIT_CONFIG)
    try:
        settings = load_settings(app.config, os.environ, default_service=app.import_name)
        builtins, customs = resolve_signals(settings.signals, settings.rename, settings.auth)
    except ConfigError as exc:
        explain(exc)
        ctx.exit(EXIT_CONFIG)
    if not isinstance(app.extensions.get("bridge"), SignalBridge):
        click.secho(
            "warning: this app has no SignalBridge (configuration checked anyway)", fg="yellow"
        )
    click.echo(f"service: {settings.service}")
    click.echo("signals:")
    for builtin in builtins:  # events as resolve_signals named them, as init_app does
        click.echo(f"  {builtin.name} -> {builtin.event} (built-in)")
    for custom in customs:
        kind = "custom" if custom.auth is None else f"auth: {custom.auth.outcome}"
        click.echo(f"  {custom.spec} -> {custom.event} ({kind})")
    click.echo(f"loggers: {', '.join(settings.loggers) or '(none)'}")
    if settings.ignored_environment:
        names = ", ".join(settings.ignored_environment)
        click.echo(f"ignored environment variables (they name no bridge key): {names}")
    click.echo("sinks:")
    rows = []
    for sink in settings.sinks:
        ok, message = probe_sink(sink, timeout)
        rows.append((sink.name, *sink_kind_and_target(sink), "ok" if ok else "FAIL", message))
    print_table(("sink", "type", "target", "verdict", "detail"), rows)
    failed = sum(1 for row in rows if row[3] != "ok")
    if failed:
        click.secho(
            f"verdict: FAIL, {failed} of {count_sinks(len(rows))} cannot be written to", fg="red"
        )
        ctx.exit(EXIT_PROBE)
    click.secho(f"verdict: ok, configuration valid and {count_sinks(len(rows))} ready", fg="green")


# --- emit-test and stats ----------------------------------------------------------------------


@bridge_command.command("emit-test")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for delivery.")
def emit_test_command(timeout: float) -> None:
    """Send one `bridge.test` event through every sink, flush, and show each sink's verdict
    (ok once the sink delivered it: file written, collector acknowledged) and counters.
    Exits 1 when a sink did not deliver it within --timeout."""
    app, bridge = _bridged_app()
    emitter = bridge.emitter(app)
    before = {sink.name: sink.stats() for sink in emitter.sinks}
    emitter.emit(
        "bridge-test", "bridge.test", "info", {"message": "test event from flask bridge emit-test"}
    )
    bridge.flush(timeout, app=app)
    click.echo("bridge.test sent; sinks:")
    failed = dropped = 0
    for sink in emitter.sinks:
        after = sink.stats()
        verdict = delivery_verdict(before[sink.name], after, timeout)
        if verdict != "ok" and sink.flush(0.2):  # a sink that got none of the shared deadline
            after = sink.stats()
            verdict = delivery_verdict(before[sink.name], after, timeout)
        failed += verdict != "ok"
        dropped += counter(after, "dropped") - counter(before[sink.name], "dropped")
        name, counters = sink_line(sink.name, after).split(": ", 1)
        colour = "green" if verdict == "ok" else "red"
        click.echo(f"{name}: " + click.style(verdict, fg=colour) + f", {counters}")
    if failed:
        reason = f"{dropped} dropped" if dropped else f"not delivered within {timeout:g}s"
        raise click.ClickException(
            f"the test event did not reach every sink: {reason} "
            f"({failed} of {count_sinks(len(emitter.sinks))} failed)"
        )
    click.secho("delivered", fg="green")


@bridge_command.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print every worker and the total as JSON.")
def stats_command(as_json: bool) -> None:
    """Show the counters of every worker of the running deployment: one row per worker and
    sink, then the total per sink.

    Each process that served a request publishes its counters at most once a second to the
    stats directory (BRIDGE_STATS_DIR, else a directory per user and service under the
    system temp dir); this command reads them all, marks the workers that are gone (a clean
    exit removes its file) and adds them up. Run it with the same configuration as the
    server."""
    app, bridge = _bridged_app()
    emitter = bridge.emitter(app)
    directory = stats_dir(emitter.service, getattr(emitter.settings, "stats_dir", None))
    snapshots = read_snapshots(directory)
    totals = total(snapshots)
    if as_json:
        workers = [
            {"pid": s.pid, "alive": s.alive, "updated": s.updated, "stats": s.stats}
            for s in snapshots
        ]
        report = {"service": emitter.service, "directory": str(directory), "workers": workers}
        click.echo(json.dumps({**report, "total": totals}, indent=2, sort_keys=True))
        return
    if not snapshots:
        click.echo(
            f"no worker of {emitter.service} has published counters in {directory} yet "
            "(a worker publishes once it served a request; the server and this command must "
            "agree on BRIDGE_STATS_DIR)"
        )
        return
    alive = sum(s.alive for s in snapshots)
    click.echo(
        f"service {emitter.service}: {alive} of {len(snapshots)} workers alive ({directory})"
    )
    print_workers(snapshots, totals, now=time.time())


# --- tail -----------------------------------------------------------------------------------


def _colour() -> bool | None:
    """False when NO_COLOR is set (https://no-color.org); else None: click colours only a
    terminal, never a pipe or a file."""
    return False if os.environ.get("NO_COLOR") else None


def _show(line: EventLine, *, as_json: bool, verbose: bool) -> None:
    colour = _colour()
    if line.event is None:
        click.secho(format_invalid(line), fg="magenta", err=as_json, color=colour)
    elif as_json:
        click.echo(json_for_terminal(line.raw))
    else:
        (text, *trace), level = format_lines(line.event, verbose=verbose)
        click.secho(text, fg=LEVEL_COLORS.get(level), color=colour)
        for part in trace:  # the stack trace, under its event, in the terminal's own colour
            click.echo(part)


@bridge_command.command("tail")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-f", "--follow", "follow_mode", is_flag=True, help="Keep reading as it grows.")
@click.option("--event", "events", multiple=True, help="Event name or glob (repeatable).")
@click.option("--level", type=click.Choice(["debug", "info", "warning", "error"]), help="At least.")
@click.option("--grep", help="Only lines containing this text (case-insensitive).")
@click.option("--user", help="Only events of this user (user.id, else user_id).")
@click.option("--request-id", help="Only events of this request (request_id).")
@click.option("--json", "as_json", is_flag=True, help="Print matching lines as JSON.")
@click.option("-n", "--lines", "last", type=click.IntRange(min=0), help="Start with the last N.")
@click.option("--max-events", type=click.IntRange(min=1), help="Stop after N events shown.")
@click.option("-v", "--verbose", is_flag=True, help="Show every key, including the envelope's.")
def tail_command(
    file: Path,
    follow_mode: bool,
    events: tuple[str, ...],
    level: str | None,
    grep: str | None,
    user: str | None,
    request_id: str | None,
    as_json: bool,
    last: int | None,
    max_events: int | None,
    verbose: bool,
) -> None:
    """Pretty-print a JSON-lines event file: one line per event (time, level, event, request
    id, user, then key=value), a stack trace as indented lines under its event, coloured by
    level on a terminal (never with NO_COLOR set). Invalid lines are shown as such (on stderr
    with --json). With --follow, keeps reading like `tail -F`, across logrotate renames and
    truncation, until Ctrl-C or --max-events. Control characters, escape sequences and bidi
    overrides from the file are shown as escapes (\\x1b, \\u202e), never sent to the
    terminal."""
    if not follow_mode and not file.exists():
        raise click.BadParameter(f"{file} does not exist", param_hint="FILE")
    keep = EventFilter(events, level, grep, user=user, request_id=request_id)
    lines = tail_lines(file, keep, follow_mode=follow_mode, last=last, sleep=_sleep)
    try:
        with closing(lines):
            for shown, line in enumerate(lines, start=1):
                _show(line, as_json=as_json, verbose=verbose)
                if max_events is not None and shown >= max_events:
                    return
    except KeyboardInterrupt:  # Ctrl-C is how `--follow` ends: no "Aborted!", tail's status
        click.get_current_context().exit(130)


# --- replay ---------------------------------------------------------------------------------


@bridge_command.command("replay")
@click.argument("dead_letter_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--sink", "sink_name", help="Sink to resend to (default: the one that refused).")
@click.option("--dry-run", is_flag=True, help="List what would be resent; send nothing.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait per chunk.")
@click.option(
    "--every",
    default=500,
    show_default=True,
    type=click.IntRange(min=1),
    help="Events per chunk; progress is printed after each one.",
)
def replay_command(
    dead_letter_file: Path, sink_name: str | None, dry_run: bool, timeout: float, every: int
) -> None:
    """Resend the events of a dead-letter file, unchanged (same event_id, so collectors can
    deduplicate), to the sink that refused them (or --sink), in chunks of --every events.

    Delivered records are removed from the file (rewritten in place, 0600); the others stay,
    with anything appended meanwhile. A chunk not acknowledged within --timeout stops the
    replay. Exits 1 unless every record was resent and delivered."""
    app, bridge = _bridged_app()
    emitter = bridge.emitter(app)
    records, read_size = read_dead_letters(dead_letter_file)
    readable = [r for r in records if r.line is not None]
    for record in records:
        if record.line is None:
            click.secho(
                f"!! line {record.number}: not a dead-letter record, skipped",
                fg="magenta",
                err=True,
            )
    names = [sink.name for sink in emitter.sinks]
    if sink_name is not None and sink_name not in names:
        raise click.BadParameter(
            f"no sink named {sink_name!r}; sinks: {', '.join(names)}", param_hint="--sink"
        )
    try:
        targets = assign_sinks(readable, emitter.settings.sinks, dead_letter_file, sink_name)
    except LookupError:
        raise click.UsageError(
            f"no http sink is configured; name a sink with --sink ({', '.join(names)})"
        ) from None
    if dry_run:
        for text in dry_run_report(dead_letter_file, targets):
            click.echo(text)
        return
    sinks = {sink.name: sink for sink in emitter.sinks}
    delivered: list[DeadRecord] = []
    problems: list[str] = []
    again = 0
    for name, group in targets.items():

        def progress(
            done: int, total: int, name: str = name, long: bool = len(group) > every
        ) -> None:
            if long:  # one line per chunk, for replays of more than one
                click.echo(f"  {name}: {done}/{total} ({done * 100 // total}%)")

        result = replay_records(group, sinks[name], timeout=timeout, chunk=every, progress=progress)
        delivered += result.delivered
        again += result.dead_lettered_again
        click.echo(f"resent {result.sent} of {len(group)} events to {name}")
        if result.dead_lettered_again:
            click.echo(f"{result.dead_lettered_again} were refused again and dead-lettered")
            problems.append(f"{result.dead_lettered_again} dead-lettered again")
        if result.refused:
            problems.append(f"{result.refused} refused by the sink")
        if result.timed_out:
            problems.append(f"not all delivered within {timeout:g}s")
    if delivered or again:  # again: the same events may now be in this file twice
        rewrite_without(dead_letter_file, delivered, read_size)
    if delivered:
        click.echo(f"removed {len(delivered)} delivered records from {dead_letter_file}")
    skipped = len(records) - len(readable)
    if skipped:
        problems.insert(0, f"{skipped} records skipped")
    if problems:
        raise click.ClickException("replay incomplete: " + ", ".join(problems))


# --- verify ---------------------------------------------------------------------------------


def _app_audit_keys(*, required: bool) -> list[AuditKey]:
    """The `audit_key` of every audit file sink of the app. Without keys of its own the
    command needs the app; with them, an app that fails to load only adds no key."""
    try:
        app = _load_app()
        settings = load_settings(app.config, os.environ, default_service=app.import_name)
    except Exception as exc:
        if required:
            raise click.UsageError(
                f"no audit key: the app failed to load ({exc}); give --key-env NAME or "
                "--key-file FILE"
            ) from None
        return []
    sinks = [s for s in settings.sinks if isinstance(s, FileSinkSettings) and s.audit]
    return [AuditKey.of(sink.audit_key) for sink in sinks]


@bridge_command.command("verify")
@verify_options
def verify_command(
    paths: tuple[Path, ...],
    key_envs: tuple[str, ...],
    key_file: Path | None,
    partial: bool,
    as_json: bool,
) -> None:
    """Verify audit files (oldest first; rotated backups such as events.jsonl.1 or
    events.jsonl-20261207.gz are put before their file): every record signed by a known key,
    every chain whole, nothing edited, deleted, inserted, reordered or spliced.

    Keys: the audit_key of every audit file sink of the app, plus --key-env NAME (an
    environment variable; repeat it for old keys) and --key-file (one key per line); never a
    key on the command line. Exit status: 0 verified (a summary is printed), 1 not (the first
    problem as PATH:LINE: what, then a few more), 2 a usage error (no key, a missing file)."""
    keys = explicit_keys(key_envs, key_file)
    keys += _app_audit_keys(required=not keys)
    run_verify(paths, keys, partial=partial, as_json=as_json)

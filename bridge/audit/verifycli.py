"""The verifier's command line: its options, where keys come from, what it prints, its exit.

Shared by `flask bridge verify` (`bridge.cli`, which adds the app's own audit keys) and
`python -m bridge.audit verify` (`bridge.audit.__main__`, for an auditor's machine without the
app), so both read keys, print and exit the same way. A key is never a command-line value
(any user sees those in `ps`): it comes from an environment variable (`--key-env NAME`) or a
file (`--key-file`, one key per line; a regular file of at most 64 KiB, so a FIFO or a device
given by mistake or malice cannot hang the command or fill its memory).

Exit status: 0 the trail verifies, 1 it does not (the first problem as `PATH:LINE: what`),
2 a usage error (no key, a missing file).
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from bridge.audit.chain import AuditKey
from bridge.audit.verify import VerifyReport, verify

__all__ = ["EXIT_FAILED", "SHOWN", "explicit_keys", "report_lines", "run_verify", "verify_options"]

EXIT_FAILED = 1
SHOWN = 10  # problems printed; --json gives every one kept
MAX_KEY_FILE_BYTES = 64 * 1024  # hundreds of keys; more is not a key file
F = TypeVar("F", bound=Callable[..., Any])


def verify_options(command: F) -> F:
    """PATH... and the options both verify commands take."""
    options = [
        click.argument(
            "paths",
            metavar="PATH...",
            nargs=-1,
            required=True,
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
        ),
        click.option(
            "--key-env",
            "key_envs",
            multiple=True,
            metavar="NAME",
            help="An environment variable holding a key (repeatable: old keys after rotation).",
        ),
        click.option(
            "--key-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="A file of keys, one per line.",
        ),
        click.option(
            "--partial",
            is_flag=True,
            help="Accept chains that start after record 1 or end open (a live file, some "
            "rotated files, a killed worker).",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print the report as JSON."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def explicit_keys(key_envs: Sequence[str], key_file: Path | None) -> list[AuditKey]:
    """The keys named on the command line; a usage error for an unset variable or an empty
    file (a key that is not there is a mistake, not a key fewer)."""
    keys = []
    for name in key_envs:
        value = os.environ.get(name)
        if not value:
            raise click.BadParameter(
                f"the environment variable {name} is not set", param_hint="--key-env"
            )
        keys.append(AuditKey.of(value))
    if key_file is not None:
        lines = _key_file_bytes(key_file).splitlines()  # the key is the whole line, as written
        found = [AuditKey.of(line) for line in lines if line.strip()]
        if not found:
            raise click.BadParameter(f"{key_file} holds no key", param_hint="--key-file")
        keys += found
    return keys


def _key_file_bytes(path: Path) -> bytes:
    """The key file's bytes: a regular file of at most `MAX_KEY_FILE_BYTES` (a FIFO would
    block the command, a device never end), opened without blocking to look at it first."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {path}: {exc.strerror}", param_hint="--key-file"
        ) from None
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise click.BadParameter(f"{path} is not a regular file", param_hint="--key-file")
        data = file.read(MAX_KEY_FILE_BYTES + 1)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise click.BadParameter(
            f"{path} is over {MAX_KEY_FILE_BYTES} bytes: not a key file", param_hint="--key-file"
        )
    return data


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def report_lines(report: VerifyReport, *, shown: int = SHOWN) -> list[str]:
    """The report as text: the summary, or `PATH:LINE: what` for the first problems."""
    summary = report.summary
    if not report.ok:
        lines = [str(problem) for problem in report.problems[:shown]]
        if report.problem_count > len(lines):
            lines.append(f"... {report.problem_count} problems in all")
        return lines
    lines = [
        f"verified: {_count(summary.chains, 'chain')}, {_count(summary.records, 'record')} in"
        f" {_count(summary.files, 'file')}",
        f"time: {summary.first_time} to {summary.last_time}",
        f"checkpoints: {summary.checkpoints}; records noted lost (audit.lost): {summary.lost}",
    ]
    if summary.open_chains:
        lines.append(
            f"open chains (no shutdown checkpoint, accepted by --partial): {summary.open_chains}"
        )
    return lines


def report_json(report: VerifyReport) -> str:
    return json.dumps(
        {
            "ok": report.ok,
            "problem_count": report.problem_count,
            "problems": [dataclasses.asdict(problem) for problem in report.problems],
            "summary": dataclasses.asdict(report.summary),
        },
        indent=2,
    )


def run_verify(
    paths: Sequence[Path], keys: Sequence[AuditKey], *, partial: bool, as_json: bool
) -> None:
    """Verify, print, and exit 1 when the trail does not verify."""
    if not keys:
        raise click.UsageError(
            "no audit key: give --key-env NAME or --key-file FILE (or, with `flask bridge "
            "verify`, an app with an audit file sink)"
        )
    try:
        report = verify(paths, keys, partial=partial)
    except OSError as exc:  # unreadable (a missing file is refused before this)
        raise click.UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
    if as_json:
        click.echo(report_json(report))
    else:
        for line in report_lines(report):
            click.echo(line)
    if not report.ok:
        click.get_current_context().exit(EXIT_FAILED)

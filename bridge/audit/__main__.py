"""`python -m bridge.audit verify PATH... --key-env AUDIT_KEY`: the verifier without the app.

For an auditor's machine, where the app and its configuration are not installed: the same
checks, output and exit codes as `flask bridge verify` (`bridge.audit.verifycli`), with the
keys named only by `--key-env` and `--key-file`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from bridge.audit.verifycli import explicit_keys, run_verify, verify_options


@click.group()
def main() -> None:
    """flask-signal-bridge audit trail tools."""


@main.command("verify")
@verify_options
def verify_command(
    paths: Sequence[Path],
    key_envs: Sequence[str],
    key_file: Path | None,
    partial: bool,
    as_json: bool,
) -> None:
    """Verify audit files (oldest first; rotated backups are put in order): every record
    signed by a given key, every chain whole. Exit 0 verified, 1 not (the first problem as
    PATH:LINE: what), 2 a usage error."""
    run_verify(paths, explicit_keys(key_envs, key_file), partial=partial, as_json=as_json)


if __name__ == "__main__":
    main(prog_name="python -m bridge.audit")

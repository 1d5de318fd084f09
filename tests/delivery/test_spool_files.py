"""The spool's files against a hostile filesystem: any umask, symlinks planted in the spool
directory (`bridge.delivery.spool.owners`, `bridge.delivery.spool`)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.delivery.spool import Spool
from bridge.stats import SinkStats

DEAD_OWNER = "12345-deadbeef"  # an owner name no live process has


def new_spool(directory: Path) -> Spool:
    return Spool(
        directory,
        max_bytes=1 << 20,
        fsync="never",
        event_ttl=3600.0,
        stats=SinkStats(),
        rescan_interval=0.0,
    )


def drain(spool: Spool) -> list[bytes]:
    out: list[bytes] = []
    while (got := spool.read(100, 1 << 20)).lines:
        out += got.lines
        spool.ack(got.records)
    return out


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[Path]:
    """A real segment with pending records, in a directory of its own (what a planted symlink
    would point the spool at: reading it replays its events, acking rewrites its header)."""
    elsewhere = tmp_path / "elsewhere"
    spool = new_spool(elsewhere)
    for i in range(3):
        assert spool.append(json.dumps({"event_id": f"v{i}"}).encode() + b"\n")
    spool.close()  # unacknowledged: the segment stays, its owner is dead
    (segment,) = elsewhere.glob("*.seg")
    yield segment


class TestSpoolDirectory:
    def test_created_owner_only_whatever_the_umask(self, tmp_path: Path) -> None:
        """Under umask 0 the spool directory and its missing parents are 0700, files 0600."""
        directory = tmp_path / "a" / "b" / "spool"
        old = os.umask(0)
        try:
            spool = new_spool(directory)
            assert spool.append(b'{"event_id": "e1"}\n')
        finally:
            os.umask(old)
        try:
            dirs = [tmp_path / "a", tmp_path / "a" / "b", directory]
            assert [0o700] * 3 == [stat.S_IMODE(d.stat().st_mode) for d in dirs]
            assert {0o600} == {stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}
        finally:
            spool.close()


class TestPlantedSymlinks:
    def test_a_segment_symlink_is_never_adopted(
        self, tmp_path: Path, victim: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A symlink named like a dead owner's segment, planted after start-up: its target is
        neither replayed nor written; the spool reports it and leaves it alone."""
        before = victim.read_bytes()
        spool = new_spool(tmp_path / "spool")
        try:
            planted = tmp_path / "spool" / f"{DEAD_OWNER}.0000000001.seg"
            planted.symlink_to(victim)
            assert [] == drain(spool)
        finally:
            spool.close()
        assert before == victim.read_bytes()
        assert planted.is_symlink()
        assert (
            f"{planted} is not a regular file: left alone, not adopted" in capsys.readouterr().err
        )

    def test_a_dangling_lock_symlink_never_creates_its_target(self, tmp_path: Path) -> None:
        """A dead owner's lock file replaced by a dangling symlink: its target is not created."""
        directory = tmp_path / "spool"
        directory.mkdir(mode=0o700)
        target = tmp_path / "created-through-the-link"
        (directory / f"{DEAD_OWNER}.lock").symlink_to(target)
        (directory / f"{DEAD_OWNER}.0000000001.seg").write_bytes(b"")
        spool = new_spool(directory)
        try:
            drain(spool)
        finally:
            spool.close()
        assert not target.exists()

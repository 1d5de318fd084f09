"""Each process's counters published as a small JSON file, read back and summed for the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.workerstats import (
    Publisher,
    WorkerSnapshot,
    publish,
    read_snapshots,
    stats_dir,
    total,
)
from tests.conftest import BridgedApp
from tests.forks import run_in_child

Make = Callable[..., BridgedApp]


@pytest.fixture
def published(make_bridged: Make, tmp_path: Path) -> Iterator[tuple[BridgedApp, Publisher]]:
    bridged = make_bridged()
    publisher = publish(bridged.app, bridged.bridge.emitter(bridged.app), tmp_path / "stats")
    yield bridged, publisher
    publisher.stop()


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return int(done.stdout)


class TestStatsDir:
    def test_configured_directory_per_service(self, tmp_path: Path) -> None:
        """A configured directory gets one subdirectory per service, its name made safe."""
        assert tmp_path / "shop_eu" == stats_dir("shop/eu", tmp_path)

    def test_environment_variable(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """BRIDGE_STATS_DIR is used when nothing is configured."""
        monkeypatch.setenv("BRIDGE_STATS_DIR", str(tmp_path))
        assert tmp_path / "shop" == stats_dir("shop")

    def test_default_is_per_user_under_temp(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without configuration, a directory of this user's under the system temp dir."""
        monkeypatch.delenv("BRIDGE_STATS_DIR", raising=False)
        assert f"flask-bridge-{os.getuid()}" == stats_dir("shop").parent.name


class TestPublisher:
    def test_snapshot_written_and_read_back(self, published: tuple[BridgedApp, Publisher]) -> None:
        """A tick writes this process's stats(); reading gives them back, alive."""
        bridged, publisher = published
        bridged.client.get("/")
        assert bridged.bridge.flush(timeout=10.0)
        publisher.tick()
        [snapshot] = read_snapshots(publisher.directory)
        assert (os.getpid(), True) == (snapshot.pid, snapshot.alive)
        assert bridged.bridge.stats() == snapshot.stats
        assert [] == list(publisher.directory.glob("*.tmp"))

    def test_unchanged_counters_not_rewritten(
        self, published: tuple[BridgedApp, Publisher]
    ) -> None:
        """A tick with the same counters leaves the file alone."""
        _, publisher = published
        publisher.tick()
        publisher.path.write_text('{"pid": 1, "updated": 0, "stats": {}}')
        publisher.tick()
        assert '{"pid": 1, "updated": 0, "stats": {}}' == publisher.path.read_text()

    def test_thread_starts_at_first_request_and_stop_removes_file(
        self, published: tuple[BridgedApp, Publisher]
    ) -> None:
        """No thread before a request; the first request starts it; stop() removes the file."""
        bridged, publisher = published
        assert not publisher.running
        bridged.client.get("/")
        assert publisher.running
        publisher.tick()
        assert publisher.path.exists()
        publisher.stop()
        assert not publisher.path.exists()

    def test_second_publish_is_the_same(self, published: tuple[BridgedApp, Publisher]) -> None:
        """Publishing an emitter twice gives the same publisher."""
        bridged, publisher = published
        assert publisher is publish(bridged.app, bridged.bridge.emitter(bridged.app))

    def test_forked_child_writes_its_own_file(
        self, published: tuple[BridgedApp, Publisher]
    ) -> None:
        """A forked worker publishes to a file named by its pid, with its own (zero) counts."""
        bridged, publisher = published
        bridged.client.get("/")
        assert bridged.bridge.flush(timeout=10.0)

        def in_child() -> list[object]:
            publisher.tick()
            return [publisher.path.name, os.getpid()]

        name, pid = run_in_child(in_child, deadline=30.0)
        assert f"{pid}-" == name[: len(str(pid)) + 1]
        record = json.loads((publisher.directory / name).read_text())
        assert 0 == record["stats"]["sinks"]["file-0"]["delivered"]


class TestRead:
    def test_dead_worker_marked(self, tmp_path: Path) -> None:
        """A file whose process is gone is read and marked dead."""
        pid = dead_pid()
        (tmp_path / f"{pid}-1.json").write_text(
            json.dumps({"pid": pid, "updated": 1.0, "stats": {"sinks": {}}})
        )
        [snapshot] = read_snapshots(tmp_path)
        assert (pid, False) == (snapshot.pid, snapshot.alive)

    def test_unreadable_files_skipped(self, tmp_path: Path) -> None:
        """A torn or foreign file is skipped; a missing directory has no snapshots."""
        (tmp_path / "1-1.json").write_text("{torn")
        (tmp_path / "2-1.json").write_text('{"pid": "x"}')
        assert [] == read_snapshots(tmp_path)
        assert [] == read_snapshots(tmp_path / "missing")

    def test_out_of_range_pid_skipped(self, tmp_path: Path) -> None:
        """A file whose pid is no process id (huge, infinite, zero, negative) is skipped."""
        for number, pid in enumerate(["1e400", str(10**30), "0", "-1"]):
            (tmp_path / f"{number}-1.json").write_text(
                f'{{"pid": {pid}, "updated": 1.0, "stats": {{}}}}'
            )
        assert [] == read_snapshots(tmp_path)

    def test_fifo_and_symlink_not_read(self, tmp_path: Path) -> None:
        """A FIFO or a symlink planted as a snapshot is skipped, without blocking on it."""
        target = tmp_path / "elsewhere"
        target.write_text(json.dumps({"pid": os.getpid(), "updated": 1.0, "stats": {}}))
        directory = tmp_path / "stats"
        directory.mkdir()
        os.mkfifo(directory / "1-1.json")
        (directory / "2-1.json").symlink_to(target)
        result: list[list[WorkerSnapshot]] = []
        reader = threading.Thread(target=lambda: result.append(read_snapshots(directory)))
        reader.daemon = True
        reader.start()
        reader.join(10)
        if reader.is_alive():  # unblock the reader so the thread ends
            with open(os.open(directory / "1-1.json", os.O_WRONLY | os.O_NONBLOCK), "w"):
                pass
            reader.join(10)
        assert [[]] == result


def snapshot(pid: int, **counters: object) -> WorkerSnapshot:
    stats = {"sinks": {"file-0": counters}, "receiver_errors": pid}
    return WorkerSnapshot(pid, True, 0.0, stats, Path(f"{pid}.json"))

    def test_foreign_shapes_skipped(self, tmp_path: Path) -> None:
        """A JSON file of the wrong shape inside `stats` is skipped, and the total still adds."""
        shapes: list[dict[str, Any]] = [
            {"sinks": []},
            {"receiver_errors": "x"},
            {"sinks": {"a": {"dropped_by_reason": {"x": "y"}}}},
            {"sinks": {"a": 3}},
        ]
        for number, stats in enumerate(shapes):
            record = {"pid": os.getpid(), "updated": 1.0, "stats": stats}
            (tmp_path / f"{number}-1.json").write_text(json.dumps(record))
        assert {"sinks": {}, "receiver_errors": 0} == total(read_snapshots(tmp_path))


class TestTotal:
    def test_counters_added_per_sink_and_reason(self) -> None:
        """Counters and drops by reason are summed; the most recent last_error wins."""
        first = snapshot(
            1, delivered=3, dropped_by_reason={"full": 1}, last_error_time=5.0, last_error="old"
        )
        second = snapshot(
            2,
            delivered=4,
            dropped_by_reason={"full": 2, "closed": 1},
            last_error_time=9.0,
            last_error="new",
        )
        expected = {
            "sinks": {
                "file-0": {
                    "delivered": 7,
                    "dropped_by_reason": {"full": 3, "closed": 1},
                    "last_error_time": 9.0,
                    "last_error": "new",
                }
            },
            "receiver_errors": 3,
        }
        assert expected == total([first, second])


class TestCollected:
    def test_thread_ends_when_emitter_is_gone(self, tmp_path: Path) -> None:
        """A publisher whose emitter was garbage collected stops and removes its file."""

        class Tiny:
            service = "tiny"

            def stats(self) -> dict[str, object]:
                return {"sinks": {}, "receiver_errors": 0}

        emitter = Tiny()
        publisher = Publisher(emitter, tmp_path, interval=0.01)
        publisher.tick()
        assert publisher.path.exists()
        publisher.ensure_running()
        [thread] = [t for t in threading.enumerate() if t.name == "bridge-stats-tiny"]
        del emitter
        thread.join(30.0)
        assert not thread.is_alive()
        assert not publisher.path.exists()


class TestDefaultDirectory:
    def test_a_directory_another_user_could_write_is_refused(self, tmp_path: Path) -> None:
        """The shared default root must be this user's and private: group-writable, or a
        symlink planted at its name, is refused before anything is written or read there."""
        from bridge.workerstats import check_private

        root = tmp_path / "flask-bridge"
        root.mkdir(mode=0o700)
        check_private(root)  # this user's, private: fine
        root.chmod(0o770)
        with pytest.raises(OSError, match="not a private directory"):
            check_private(root)
        link = tmp_path / "planted"
        link.symlink_to(root)
        root.chmod(0o700)
        with pytest.raises(OSError, match="not a private directory"):
            check_private(link)

"""Flask's own test suite, run with a bridge attached to every app it creates.

The suite comes from the sdist of the installed Flask (it ships tests/), downloaded once with
pip into a cache directory. It runs twice in subprocesses: as published (the baseline) and with
`SignalBridge(app)` added to every `Flask(...)` by the `bridge_everywhere` plugin. Every test
must end the same way in both runs; in particular `test_app_freed_on_zero_refcount`, which
fails when the bridge holds the app in a reference cycle. A download failure fails the test:
CI reaches the package index.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import read_events

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
PLUGIN_DIR = HERE / "flask_suite"
FREED_TEST = "tests/test_basic.py::test_app_freed_on_zero_refcount"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flask-signal-bridge"


def flask_sdist() -> Path:
    """The extracted sdist of the installed Flask version, downloaded on first use."""
    version = importlib.metadata.version("flask")
    root = cache_dir() / f"flask-{version}"
    if (root / "tests" / "conftest.py").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as scratch:
        download = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        done = subprocess.run(
            [*download, f"flask=={version}", "-d", scratch],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert 0 == done.returncode, f"pip could not download Flask's sdist:\n{done.stderr}"
        (sdist,) = Path(scratch).glob("flask-*.tar.gz")
        with tarfile.open(sdist) as archive:
            archive.extractall(scratch, filter="data")
        try:
            os.replace(Path(scratch) / f"flask-{version}", root)
        except OSError:  # another run extracted it first
            assert (root / "tests" / "conftest.py").is_file()
    return root


def run_suite(root: Path, work: Path, *, attach: bool) -> tuple[dict[str, Any], str]:
    """Run Flask's tests/ in a subprocess; the plugin's report and pytest's output."""
    work.mkdir()
    report = work / "report.json"
    env = {key: value for key, value in os.environ.items() if not key.startswith("BRIDGE_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(PLUGIN_DIR), str(HERE.parent)]),
        SIGNAL_BRIDGE_SUITE_REPORT=str(report),
    )
    if attach:
        env.update(
            SIGNAL_BRIDGE_SUITE_ATTACH="1",
            BRIDGE_SINKS=json.dumps([{"type": "file", "path": str(work / "events.jsonl")}]),
            BRIDGE_SIGNALS="builtin,flask-suite-signal",
            BRIDGE_LOGGERS="flask_suite.bridge",
        )
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*command, "-p", "bridge_everywhere", "--basetemp", str(work / "tmp"), "tests"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout[-4000:] + done.stderr[-4000:]
    assert report.is_file(), f"the suite did not finish:\n{output}"
    return json.loads(report.read_text()), output


class TestFlaskSuite:
    def test_passes_unchanged_with_a_bridge_on_every_app(self, tmp_path: Path) -> None:
        """Every Flask test ends as without the bridge; every app is bridged, then freed."""
        root = flask_sdist()
        baseline, _ = run_suite(root, tmp_path / "baseline", attach=False)
        bridged, output = run_suite(root, tmp_path / "bridged", attach=True)

        changed = {
            test: (outcome, bridged["outcomes"].get(test))
            for test, outcome in baseline["outcomes"].items()
            if bridged["outcomes"].get(test) != outcome
        }
        assert {} == changed, f"outcomes changed by the bridge (before, with):\n{output}"
        assert baseline["outcomes"].keys() == bridged["outcomes"].keys()
        assert "passed" == bridged["outcomes"][FREED_TEST]
        assert len(bridged["outcomes"]) > 400
        assert bridged["created"] == bridged["bridged"] == bridged["freed"] > 400
        assert 0 == bridged["open_emitters"]
        events = read_events(tmp_path / "bridged" / "events.jsonl")
        assert {"request.finished", "request.exception", "template.rendered"} <= {
            e["event"] for e in events
        }

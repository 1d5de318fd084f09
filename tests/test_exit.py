"""The interpreter exits in time, whatever the bridge's threads are doing.

A worker asked to stop (gunicorn's graceful timeout, Kubernetes' grace period) must be gone
within `shutdown_timeout` plus about a second, even when every collector trickles its replies
and several apps, or a dropped app's release thread, are still sending.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.collector import Collector, Reply
from tests.exit_child import SHUTDOWN_TIMEOUT

# A send cut by close() gets a second to wind down; the rest is the interpreter's own exit.
EXIT_MARGIN = 2.0


@pytest.fixture
def trickling() -> Iterator[Collector]:
    with Collector() as collector:
        collector.always(Reply(200, trickle=0.2, record=False))
        yield collector


class TestInterpreterExit:
    @pytest.mark.parametrize("apps", [1, 4])
    def test_exit_within_one_shutdown_timeout(self, trickling: Collector, apps: int) -> None:
        """Apps whose collector trickles, and a dropped app's release: the process is gone
        within one shutdown_timeout plus a margin, not one per app; nothing is written torn."""
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.exit_child", trickling.url, str(apps)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert trickling.wait_for(lambda c: len(c.requests()) >= apps + 1)
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.flush()
            told = time.monotonic()
            out, err = child.communicate(timeout=60)
            took = time.monotonic() - told
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
        assert 0 == child.returncode, err.decode()
        assert took < SHUTDOWN_TIMEOUT + EXIT_MARGIN, f"exit took {took:.1f} s\n{err.decode()}"
        lines = out.splitlines()
        assert apps + 1 == len([json.loads(line) for line in lines])

"""The Emitter: one app's pipeline from an event dict to encoded lines handed to every sink."""

from __future__ import annotations

import json
import os
import threading
import warnings
from typing import Any

from bridge.config import load_settings
from bridge.emitter import Emitter
from tests.test_logging import ListSink

CHILD_DEADLINE = 5.0  # seconds the child gives its work before it reports a hang


def fork_and_run(work: Any) -> int:
    """Fork; in the child run `work()` on a thread and exit 0 when it returned within
    CHILD_DEADLINE, 3 when it hung, 4 when it raised. The parent gets the exit code."""
    with warnings.catch_warnings():  # 3.12+ warns that forking a threaded process is risky
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 3
        try:
            outcome: list[int] = []

            def run() -> None:
                try:
                    work()
                    outcome.append(0)
                except BaseException:
                    outcome.append(4)

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            thread.join(CHILD_DEADLINE)
            code = outcome[0] if outcome else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)  # bounded: the child exits by its own deadline
    return os.waitstatus_to_exitcode(status)


class TestFork:
    def test_child_of_a_fork_during_a_locked_count_still_counts(self) -> None:
        """A child forked while another thread holds the error-count lock counts and emits."""
        sink = ListSink()
        emitter = Emitter(load_settings({}, {}), [sink])
        holding, release = threading.Event(), threading.Event()

        def hold_the_lock() -> None:
            with emitter._errors_lock:
                holding.set()
                release.wait(30.0)

        holder = threading.Thread(target=hold_the_lock)
        holder.start()
        try:
            assert holding.wait(10.0)

            def count_and_emit() -> None:
                emitter.count_error(RuntimeError("in the child"))
                emitter.emit("s", "after-fork", "info")
                assert 1 == emitter.receiver_errors
                assert ["after-fork"] == [json.loads(line)["event"] for line in sink.lines]

            assert 0 == fork_and_run(count_and_emit)
        finally:
            release.set()
            holder.join(10.0)
        assert not holder.is_alive()
        assert 0 == emitter.receiver_errors, "the parent's count is its own"

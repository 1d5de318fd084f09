"""Contenders in long-lived worker processes, asked one at a time to run a batch.

Why not one process: switching a contender on and off between batches (a bridge's `init_app`
and `close`) leaves the process slower for every later request, bridged or bare, and keeping
every contender connected at once taxes the bare one (blinker still dispatches custom signals
and checks senders on built-in ones). So each contender gets its own process: it is built and
connected once, warms up, then waits on a pipe. The parent asks one worker at a time for a
batch, so they never compete for the CPU; the others sleep in `recv()`.

Identical processes differ in speed by a few % with address-space layout randomization (code
and data land at other offsets, so caches and branch predictors see other conflicts): workers
start under `setarch -R` where it works (`fixed_layout()` says whether it applies), with the
same layout every run, which makes a row's median repeat between runs. That one layout can
favour or handicap a row for good, though (seen: one bridge ahead of another with the same
layout trick, and behind it with four random layouts each), so the request section starts its
workers with `fixed=False` and several per row instead.

A worker is a fresh interpreter (`python -m benchmarks.runner`), not a multiprocessing child:
nothing of the caller's main module is re-imported, no helper process is left running, and
every worker gets the same hash seed, so dict and set layouts do not differ between them.
Every worker is stopped when `workers()` exits, on error too (no orphans); a worker whose
parent dies reads end-of-file on its pipe and exits on its own.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

__all__ = ["Bench", "Factory", "Worker", "WorkerError", "fixed_layout", "workers"]

ROOT = Path(__file__).resolve().parent.parent  # holds the `benchmarks` package
HASH_SEED = "0"
READY_TIMEOUT = 120.0
BATCH_TIMEOUT = 300.0
STOP_TIMEOUT = 30.0


@functools.cache
def fixed_layout() -> tuple[str, ...]:
    """The command prefix that starts a worker without address-space randomization
    (`setarch -R`), or () where there is no such command or it is not allowed."""
    setarch = shutil.which("setarch")
    if setarch is None:
        return ()
    try:
        subprocess.run([setarch, "-R", "true"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ()
    return (setarch, "-R")


class Bench(Protocol):
    """What a worker holds: built once, asked for batches, closed at the end."""

    def batch(self, *args: Any) -> Any: ...

    def close(self) -> None: ...


# A module-level function: it crosses the pipe pickled by name, and the worker imports it.
Factory = Callable[..., Bench]


class WorkerError(RuntimeError):
    """A worker failed, died or did not answer in time; the message carries its traceback."""


def serve(commands: Connection, replies: Connection) -> None:
    """The worker's side: build the bench, then answer `batch` until `stop` or end-of-file."""
    try:
        factory, args = commands.recv()
        bench = factory(*args)
    except BaseException:
        replies.send(("error", traceback.format_exc()))
        return
    replies.send(("ready", None))
    try:
        while True:
            try:
                command, payload = commands.recv()
            except EOFError:  # the parent is gone: nobody to answer
                return
            if command == "stop":
                return
            try:
                reply: tuple[str, Any] = ("ok", bench.batch(*payload))
            except Exception:
                reply = ("error", traceback.format_exc())
            replies.send(reply)
    finally:
        try:
            bench.close()
            outcome: tuple[str, Any] = ("stopped", None)
        except Exception:
            outcome = ("error", traceback.format_exc())
        with suppress(OSError):  # the parent may be gone
            replies.send(outcome)


class Worker:
    """The parent's handle on one worker process."""

    def __init__(
        self, name: str, factory: Factory, args: tuple[Any, ...], *, fixed: bool = True
    ) -> None:
        self.name = name
        command_read, command_write = os.pipe()
        reply_read, reply_write = os.pipe()
        self._commands = Connection(command_write, readable=False)
        self._replies = Connection(reply_read, writable=False)
        try:
            self._process = subprocess.Popen(
                [
                    *(fixed_layout() if fixed else ()),
                    sys.executable,
                    "-m",
                    "benchmarks.runner",
                    str(command_read),
                    str(reply_write),
                ],
                cwd=ROOT,
                env={**os.environ, "PYTHONHASHSEED": HASH_SEED},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(command_read, reply_write),
            )
        except BaseException:
            self._commands.close()
            self._replies.close()
            raise
        finally:  # only the worker holds its ends, so its death reads as end-of-file here
            os.close(command_read)
            os.close(reply_write)
        with suppress(OSError):  # a worker that died at once is reported by wait_ready()
            self._commands.send((factory, args))

    def _receive(self, timeout: float, doing: str) -> Any:
        if not self._replies.poll(timeout):
            raise WorkerError(f"{self.name}: no answer within {timeout:.0f} s ({doing})")
        try:
            kind, payload = self._replies.recv()
        except EOFError:
            with suppress(subprocess.TimeoutExpired):
                self._process.wait(5.0)
            code = self._process.returncode
            raise WorkerError(f"{self.name}: died while {doing} (exit code {code})") from None
        if kind == "error":
            raise WorkerError(f"{self.name}: failed while {doing}:\n{payload}")
        return payload

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Return once the worker has built and warmed up its bench."""
        self._receive(timeout, "starting")

    def batch(self, *args: Any, timeout: float = BATCH_TIMEOUT) -> Any:
        """Run one batch in the worker and return what its `batch(*args)` returned."""
        with suppress(OSError):  # it died: _receive() reads end-of-file and says so
            self._commands.send(("batch", args))
        return self._receive(timeout, "running a batch")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Close the bench and end the process; kill it if it does not stop in time."""
        failure = None
        try:
            with suppress(OSError):  # already gone: its exit code tells how it ended
                self._commands.send(("stop", None))
            while self._replies.poll(timeout):  # skips a batch reply still in flight
                kind, payload = self._replies.recv()
                if kind == "error":
                    failure = f"{self.name}: failed while stopping:\n{payload}"
                if kind in ("stopped", "error"):
                    break
        except (EOFError, OSError):
            pass
        finally:
            self._commands.close()
            self._replies.close()
            try:
                code = self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                failure = failure or f"{self.name}: did not stop within {timeout:.0f} s"
                self._process.kill()
                code = self._process.wait()
        if failure is None and code != 0:
            failure = f"{self.name}: exited with code {code}"
        if failure is not None:
            raise WorkerError(failure)


@contextmanager
def workers(
    specs: Mapping[str, tuple[Factory, tuple[Any, ...]]], *, fixed: bool = True
) -> Iterator[dict[str, Worker]]:
    """Start one worker per `name: (factory, args)`, wait until all are ready, stop all after.

    `fixed=False` keeps address-space randomization: each worker gets a layout of its own,
    so that a row of several workers averages over layouts instead of repeating one.

    Workers start together (building and warming up is not timed); once this yields, the
    caller asks them for batches one at a time.
    """
    started: dict[str, Worker] = {}
    finished = False
    try:
        for name, (factory, args) in specs.items():
            started[name] = Worker(name, factory, args, fixed=fixed)
        for worker in started.values():
            worker.wait_ready()
        yield started
        finished = True
    finally:
        failures = []
        for worker in started.values():
            try:
                worker.stop()
            except WorkerError as exc:
                failures.append(str(exc))
        if failures and finished:  # otherwise the error already on its way says more
            raise WorkerError("\n".join(failures))


if __name__ == "__main__":
    serve(
        Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False)
    )

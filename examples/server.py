"""A real gunicorn on 127.0.0.1 for the demo and the tests: start, wait until it answers, stop.

The examples are meant to run the way they run in production, under a pre-fork server with
several workers, and the bridge's promises (one whole line per write, rotation followed by
every worker, a flush at SIGTERM) only mean something there. Each server gets its own process
group, so that even a wedged one is killed whole, and a port nobody else holds: a free port is
picked by binding port 0, and another is tried if someone took it in between.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import requests

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["ROOT", "GunicornServer", "ServerError", "free_port"]


class ServerError(RuntimeError):
    """Gunicorn did not start, answer or stop in time; the message ends with its stderr."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _control_socket_args() -> list[str]:
    """Gunicorn 24+ opens a control socket in the home directory by default; two servers at
    once would fight over it, so it is turned off where the option exists."""
    from gunicorn.config import KNOWN_SETTINGS

    names = {setting.name for setting in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


class GunicornServer:
    """`with GunicornServer("examples.login_log.app:app", cwd=...) as server:` then
    `server.url`; leaving the block stops it (SIGTERM, then SIGKILL past the deadline).

    With `config_file` (a gunicorn.conf.py), the file sets the workers (`workers` must still
    say how many, for the start to wait for them all) and timeouts, and its
    `wsgi_app` is served when `app` is None; the port is always the server's own."""

    def __init__(
        self,
        app: str | None,
        *,
        cwd: Path,
        config_file: Path | None = None,
        workers: int = 2,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        ready_path: str = "/",
    ) -> None:
        self.app = app
        self.cwd = cwd
        self.config_file = config_file
        self.workers = workers
        self.extra_args = tuple(extra_args)
        self.env = dict(os.environ if env is None else env)
        self.ready_path = ready_path
        self.stdout_path = cwd / "gunicorn.stdout"
        self.stderr_path = cwd / "gunicorn.stderr"
        self.port = 0
        self.ready_probes = 0  # answered requests sent while waiting (X-Request-ID ready-...)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, port: int) -> list[str]:
        if self.config_file is not None:  # its workers, timeouts and (without app) wsgi_app
            settings = ["--config", str(self.config_file)]
        else:
            settings = ["--workers", str(self.workers), "--worker-class", "sync"]
            settings += ["--graceful-timeout", "10"]
        return [
            sys.executable,
            "-m",
            "gunicorn",
            *settings,
            "--bind",  # the command line wins over a config file's `bind`
            f"127.0.0.1:{port}",
            "--pythonpath",
            str(ROOT),
            *_control_socket_args(),
            *self.extra_args,
            *([self.app] if self.app is not None else []),
        ]

    def start(self, timeout: float = 60.0, attempts: int = 3) -> None:
        """Start on a free port and return once a worker answered; ServerError otherwise."""
        deadline = time.monotonic() + timeout
        for _ in range(attempts):
            self.port = free_port()
            self._spawn(self.port)
            if self._wait_ready(deadline):
                return
            self.kill()
            if "Address already in use" not in self.stderr_text():  # not a port race
                break
        raise ServerError(f"gunicorn did not answer on {self.url}\n{self.stderr_tail()}")

    def _spawn(self, port: int) -> None:
        env = {**self.env, "PYTHONUNBUFFERED": "1"}
        # Appending: lines of every worker land whole, and a retried start keeps the first log.
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self._process = subprocess.Popen(
                self.command(port),
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group: see kill()
            )

    def _wait_ready(self, deadline: float) -> bool:
        process = self._process
        assert process is not None
        with requests.Session() as http:
            attempt = 0
            while time.monotonic() < deadline:
                attempt += 1
                try:
                    http.get(
                        self.url + self.ready_path,
                        headers={"X-Request-ID": f"ready-{self.port}-{attempt}"},
                        timeout=(1.0, max(1.0, deadline - time.monotonic())),
                    )
                    self.ready_probes += 1
                    # Ours, not whoever grabbed the port between free_port() and the bind.
                    if f"Listening at: {self.url} (" in self.stderr_text():
                        return self._wait_booted(deadline)
                except requests.RequestException:  # refused: not listening yet
                    pass
                try:  # doubles as the pause between probes
                    process.wait(timeout=0.1)
                    return False  # exited: bad app, or the port was taken
                except subprocess.TimeoutExpired:
                    continue
        return False

    def _wait_booted(self, deadline: float) -> bool:
        """Until every worker of this start has booted. gunicorn forks them one by one, with
        a random pause between; a worker forked while the master handles SIGTERM still has
        the master's signal handler until it sets up its own, so that SIGTERM is lost and
        the stop waits out `graceful_timeout` (gunicorn's race, not the app's): a stop is
        sent only once they all run."""
        process = self._process
        assert process is not None
        marker = f"Listening at: {self.url} ("
        while time.monotonic() < deadline:
            log = self.stderr_text()
            if log[log.rfind(marker) :].count("Booting worker with pid") >= self.workers:
                return True
            try:
                process.wait(timeout=0.05)
                return False  # exited while booting its workers
            except subprocess.TimeoutExpired:
                continue
        return False

    def stop(self, timeout: float = 30.0) -> int:
        """Graceful stop: SIGTERM to the master (workers finish, flush, exit), wait for it.

        Returns gunicorn's exit status; raises ServerError (after killing it) on timeout."""
        process = self._process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            tail = self.stderr_tail()
            raise ServerError(f"gunicorn did not stop within {timeout} s\n{tail}") from None
        self._reap_group()
        self._process = None
        return status

    def kill(self) -> None:
        """SIGKILL the server's whole process group (master and workers); never raises."""
        process = self._process
        if process is None:
            return
        self._reap_group()
        if process.poll() is None:
            process.kill()
        process.wait()
        self._process = None

    def _reap_group(self) -> None:
        """Workers outliving their master (they should not) are killed with the group."""
        process = self._process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    def __enter__(self) -> GunicornServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.kill()  # the block failed: no need to be gentle, its exception matters more
        else:
            self.stop()

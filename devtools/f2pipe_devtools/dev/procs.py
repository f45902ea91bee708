"""The local stack's processes: prefixed output, health waits, restarts after a crash."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, TextIO

from f2pipe_devtools.dev import http

# Logs hold device names, tokens in error messages, and the like: this user's only.
LOG_DIR_MODE = 0o700
LOG_MODE = 0o600

# Restarting a service that keeps dying only fills the log: give up after this many exits
# within RESTART_WINDOW seconds.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
COLOURS = (31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96)


class Console:
    """Lines from every process on one stream, each prefixed with its process's name."""

    def __init__(self, out: TextIO | None = None, width: int = 10) -> None:
        self.out = out or sys.stdout
        self.width = width
        self.colour = self.out.isatty() and "NO_COLOR" not in os.environ
        self._lock = threading.Lock()
        self._colours: dict[str, int] = {}

    def line(self, name: str, text: str) -> None:
        prefix = f"{name:<{self.width}}|"
        if self.colour:
            code = self._colours.setdefault(name, COLOURS[len(self._colours) % len(COLOURS)])
            prefix = f"\033[{code}m{prefix}\033[0m"
        with self._lock:
            self.out.write(f"{prefix} {text.rstrip()}\n")
            self.out.flush()


class ProcessError(RuntimeError):
    pass


class Follower:
    """Copies the lines appended to a server's log file to the console."""

    def __init__(self, name: str, path: Path, console: Console) -> None:
        self.name, self.path, self.console = name, path, console
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"follow-{name}", daemon=True)

    def start(self) -> Follower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        while not self.path.exists() and not self._stop.wait(0.2):
            pass
        with contextlib.suppress(OSError), self.path.open(errors="replace") as log:
            log.seek(0, os.SEEK_END)
            while True:
                line = log.readline()
                if line:
                    self.console.line(self.name, line)
                elif self._stop.wait(0.2):
                    return


class Service:
    """One of our services as a child process in its own session (Ctrl-C reaches only us)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        console: Console,
        *,
        health_url: str | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path, self.console, self.health_url = log_path, console, health_url
        self.ca_file = ca_file  # what an https health_url is verified against
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.gave_up = False
        self._exits: deque[float] = deque(maxlen=MAX_RESTARTS)
        self._tail: deque[str] = deque(maxlen=40)
        self._pump: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Service:
        private_dir(self.log_path.parent)
        log = open_private_log(self.log_path)
        self.stopping = False
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            log.close()
            raise
        assert self.proc.stdout is not None
        self._pump = threading.Thread(
            target=self._copy, args=(self.proc.stdout, log), name=f"out-{self.name}", daemon=True
        )
        self._pump.start()
        return self

    def _copy(self, stream: IO[bytes], log: IO[bytes]) -> None:
        with log:
            for raw in stream:
                log.write(raw)
                log.flush()
                text = raw.decode(errors="replace")
                self._tail.append(text)
                self.console.line(self.name, text)

    def tail(self) -> str:
        return "".join(self._tail)

    def healthy(self) -> bool:
        if self.health_url is None:
            return self.running
        return http.ok(self.health_url, ca_file=self.ca_file)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                code = self.proc.returncode if self.proc else None
                raise ProcessError(f"{self.name} exited with {code} on start:\n{self.tail()}")
            if self.healthy():
                return
            time.sleep(0.25)
        raise ProcessError(f"{self.name} not healthy after {timeout:.0f} s:\n{self.tail()}")

    def restart_if_dead(self) -> bool:
        """Start it again if it died on its own; False once it keeps dying."""
        if self.stopping or self.gave_up or self.proc is None or self.running:
            return True
        code = self.proc.returncode
        now = time.monotonic()
        self._exits.append(now)
        if len(self._exits) == MAX_RESTARTS and now - self._exits[0] < RESTART_WINDOW:
            self.gave_up = True
            self.console.line("dev", f"{self.name} keeps exiting (last: {code}); not restarting")
            return False
        self.console.line("dev", f"{self.name} exited with {code}; restarting it")
        self.start()
        return True

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status."""
        self.stopping = True
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.console.line("dev", f"{self.name} ignored SIGTERM for {timeout:.0f} s: killed")
                proc.kill()
                proc.wait(5)
        if self._pump is not None:
            self._pump.join(5)
        return proc.returncode


def private_dir(path: Path) -> None:
    """Create `path` (and its parents) if need be; itself 0700, also when it existed."""
    path.mkdir(mode=LOG_DIR_MODE, parents=True, exist_ok=True)
    path.chmod(LOG_DIR_MODE)


def open_private_log(path: Path) -> IO[bytes]:
    """`path` opened to append, 0600: created so, or narrowed when an older run left it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, LOG_MODE)
    try:
        os.fchmod(fd, LOG_MODE)
        return os.fdopen(fd, "ab")
    except BaseException:
        os.close(fd)
        raise

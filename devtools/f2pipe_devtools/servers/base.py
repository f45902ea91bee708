"""What every local server has in common: a binary to find, a port, a log, start and stop."""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Self

# Debian/Ubuntu package names, so an error can say exactly what to install.
APT_PACKAGES = {
    "postgres": "postgresql",
    "redis-server": "redis-server",
    "mosquitto": "mosquitto",
}


class ServerError(RuntimeError):
    """A server did not start or stop as expected."""


class MissingBinaryError(ServerError):
    """A server binary is not installed."""

    def __init__(self, binary: str, hint: str) -> None:
        super().__init__(f"{binary} not found: {hint}")
        self.binary = binary
        self.hint = hint


def apt_hint(binary: str) -> str:
    package = APT_PACKAGES.get(binary, binary)
    return f"install it with `sudo apt-get install -y {package}` (or run `make setup` as root)"


def find_binary(name: str, extra_dirs: Sequence[Path] = ()) -> Path:
    for directory in extra_dirs:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise MissingBinaryError(name, apt_hint(name))
    return Path(found)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now, below the kernel's ephemeral range.

    Binding to port 0 hands out a port from the ephemeral range, which every outgoing
    connection also draws from: between this call and the server's bind, a client
    connection elsewhere (tests open thousands) can take it ("Address already in use").
    Below that range only listeners bind, so only a server that chose the same port could.
    """
    low, _ = ephemeral_range()
    for _ in range(200):
        port = _rng.randrange(FIRST_PORT, low)
        if port in _handed_out or not bindable(host, port):
            continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # all taken: any port
        sock.bind((host, 0))
        chosen: int = sock.getsockname()[1]
        return chosen


FIRST_PORT = 10_000  # above the registered services people run locally (5432, 6379, 9092)
_rng = random.SystemRandom()
_handed_out: set[int] = set()  # this process never hands out a port twice


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return max(int(low), FIRST_PORT + 1000), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class ServerProcess:
    """One child server process whose output goes to a log file in its directory."""

    name = "server"
    host = "127.0.0.1"

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port(self.host)
        self.log_path = self.directory / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # Subclasses say how to run the server and how to tell it is ready.
    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        return port_open(self.host, self.port)

    def prepare(self) -> None:
        """One-time set-up before the first start (data directories, configuration)."""

    def popen_kwargs(self) -> dict[str, object]:
        return {}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """How it ended (negative: the signal), None while it runs or before it started."""
        return self._proc.poll() if self._proc is not None else None

    def start(self, timeout: float = 30.0) -> Self:
        if self.running:
            return self
        self.prepare()
        # Readable by us only: a server's log can name users, databases and clients.
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # also a log left by an older run
        self._log = os.fdopen(fd, "ab")
        self._proc = subprocess.Popen(  # type: ignore[call-overload]
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal must not reach it before we stop it
            **self.popen_kwargs(),
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with {self._proc.returncode} on start:\n{self.log_tail()}"
                )
            if self.is_ready():
                return
            time.sleep(0.05)
        self.stop()
        raise ServerError(
            f"{self.name} not ready on port {self.port} after {timeout}s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL, for outage tests: the server gets no chance to clean up."""
        self.stop(sig=signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_or_create_secret(path: Path, nbytes: int = 24) -> str:
    """The secret in ``path``; a new random one (hex, mode 0600 from the first byte) if absent."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(nbytes))
    return path.read_text().strip()


def write_private(path: Path, text: str) -> None:
    """Write ``path`` with mode 0600, also when it exists with a wider mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)

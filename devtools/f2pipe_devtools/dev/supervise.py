"""A server of the local stack kept running: when it dies, it is started again, with backoff.

Same port, same data directory, same configuration (the ServerProcess is reused), so clients
reconnect to what they knew. Before a restart, whatever is left of the dead server's process
group is killed: PostgreSQL backends that outlived their postmaster (they keep its shared
memory, and a new postmaster refuses to start beside them), Mosquitto under a killed
run-broker.sh. PostgreSQL then finds its postmaster.pid stale (the PID is gone) and recovers
from its WAL as after any crash.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime

from f2pipe_devtools.dev import probes
from f2pipe_devtools.dev.procs import Console
from f2pipe_devtools.servers import ServerError, ServerProcess, port_open

# Seconds before each restart attempt in a row; a server up for STABLE seconds starts over.
BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
STABLE = 60.0
START_TIMEOUT = 60.0


def describe_exit(code: int | None) -> str:
    if code is None:
        return "gone"
    return f"signal {-code}" if code < 0 else f"exit {code}"


class SupervisedServer:
    """One server and its restarts. `tick()` often; it never blocks but to start the server."""

    def __init__(
        self,
        server: ServerProcess,
        console: Console,
        *,
        restarting: Callable[[], AbstractContextManager[None]] | None = None,
    ) -> None:
        """`restarting`: wraps every restart (the Kafka broker's pauses the services and
        re-creates the topics before they resume)."""
        self.server = server
        self.console = console
        self.restarting = restarting
        self.restarts = 0
        self.deaths: list[str] = []  # when each death was noticed, HH:MM:SS
        self.last_exit: str | None = None
        self.pid = server.pid
        self._attempt = 0  # restart attempts since it last stayed up
        self._up_since = time.monotonic()
        self._next_try: float | None = None  # set while it is dead
        self._foreign: int | None = None  # the stranger holding its port, announced once

    @property
    def name(self) -> str:
        return self.server.name

    @property
    def down(self) -> bool:
        return self._next_try is not None

    def tick(self) -> bool:
        """Notice a death, restart when its time has come; True when the PID changed."""
        if self._next_try is None:
            if self.server.running:
                return False
            self._died()
            return False
        if time.monotonic() < self._next_try:
            return False
        return self._restart()

    def stop_for(self, seconds: float) -> None:
        """A planned outage (`f2pipe bench e2e`, drills): stop the server cleanly now and
        start it again after `seconds`, as if it had died then."""
        self.console.line("dev", f"{self.name} stopped for {seconds:g} s (on request)")
        self.server.stop()
        self.last_exit = "stopped on request"
        self._next_try = time.monotonic() + seconds

    def _died(self) -> None:
        now = time.monotonic()
        if now - self._up_since >= STABLE:
            self._attempt = 0
        self.last_exit = describe_exit(self.server.returncode)
        self.deaths.append(datetime.now().strftime("%H:%M:%S"))
        delay = self._delay()
        self.console.line("dev", f"{self.name} died ({self.last_exit}); restarting in {delay:g} s")
        self._next_try = now + delay

    def _delay(self) -> float:
        delay = BACKOFF[min(self._attempt, len(BACKOFF) - 1)]
        self._attempt += 1
        return delay

    def _restart(self) -> bool:
        self._kill_leftovers()
        self.server.stop()  # closes the dead one's log handle; the process is gone
        if port_open(self.server.host, self.server.port):
            self._port_taken()
            return False
        self._foreign = None
        try:
            with self.restarting() if self.restarting else contextlib.nullcontext():
                self.server.start(timeout=START_TIMEOUT)
        except (ServerError, OSError) as exc:
            delay = self._delay()
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.console.line("dev", f"{self.name} did not start again ({first}); "
                                     f"retrying in {delay:g} s")  # fmt: skip
            self.server.stop()
            self._next_try = time.monotonic() + delay
            return False
        self.restarts += 1
        self.pid = self.server.pid
        self._up_since = time.monotonic()
        self._next_try = None
        self.console.line("dev", f"{self.name} restarted on port {self.server.port} "
                                 f"(pid {self.pid}, restart {self.restarts})")  # fmt: skip
        return True

    def _port_taken(self) -> None:
        """Another process listens on the port (started by hand?): ours cannot bind it."""
        holder = probes.port_holder(self.server.port)
        pid = holder[0] if holder else -1
        delay = self._delay()
        if pid != self._foreign:
            self._foreign = pid
            self.console.line("dev", f"{self.name}: port {self.server.port} is held by "
                                     f"{probes.describe_holder(self.server.port)}, not started "
                                     f"by f2pipe dev; restarting ours once it is free "
                                     f"(checking every {delay:g} s at most)")  # fmt: skip
        self._next_try = time.monotonic() + delay

    def _kill_leftovers(self) -> None:
        """SIGKILL what remains of the dead server's process group (it led its own session)."""
        if self.pid is None:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.1)

    def state(self) -> dict[str, object]:
        """What the state file records: `dev down` and `dev status` read it."""
        pid = self.server.pid if self.server.running else None
        return {
            "pid": pid,
            "started": probes.start_time(pid) if pid else None,
            "port": self.server.port,
            "restarts": self.restarts,
            "deaths": list(self.deaths),
            "last_exit": self.last_exit,
            "down": self.down,
        }

"""`f2pipe bridge --workers N`: N bridge processes in one `$share` group, restarted when one dies.

One bridge is bound by paho's network loop, one Python thread (docs/benchmarks.md): past that
the answer is more processes, each its own MQTT identity, since the broker makes the
certificate's CN the client id and two bridges with one certificate would take over each
other's session instead of sharing the load. Worker 1 is the bridge as configured (its
certificate, client id and METRICS_PORT); worker n >= 2 uses the same files with `-n` before
the extension (`issued/bridge.crt` -> `issued/bridge-2.crt`, as certgen's `svc-bridge-2` is
issued), client id `<BRIDGE_CLIENT_ID>-n` and METRICS_PORT + n - 1.

A worker that exits is started again after a pause (1 s, doubling up to 30 s while it keeps
dying young); meanwhile its persistent session holds its share of the group's messages, so
nothing is lost. A worker that exits with 2 (its settings refused) stops them all: starting it
again would not help. SIGTERM/SIGINT stops every worker gracefully (SIGKILL after 30 s); a
supervisor killed outright takes its workers with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Protocol

from f2pipe_bridge.settings import Settings

log = logging.getLogger("f2pipe.bridge.workers")

MAX_WORKERS = 16
FIRST_PAUSE = 1.0  # seconds before a dead worker is started again
MAX_PAUSE = 30.0
HEALTHY_AFTER = 60.0  # a worker that ran this long starts its next pause at FIRST_PAUSE
STOP_TIMEOUT = 30.0
USAGE_ERROR = 2  # what main() returns for settings it refuses


class WorkerProcess(Protocol):
    """What the supervisor needs of a started worker (subprocess.Popen has it)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


Spawn = Callable[[Mapping[str, str]], WorkerProcess]


def numbered(path: str, number: int) -> str:
    """Worker `number`'s file: the configured one for the first, `-n` before the extension
    for the others (`issued/bridge.crt` -> `issued/bridge-2.crt`)."""
    if number == 1:
        return path
    p = PurePath(path)
    return str(p.with_name(f"{p.stem}-{number}{p.suffix}"))


def worker_settings(settings: Settings, workers: int) -> list[dict[str, str]]:
    """Each worker's own settings, on top of this process's environment.

    Raises ValueError, naming what to fix, when the workers could not share the load: no
    BRIDGE_SHARED_GROUP (each would get every message), or a certificate or key missing.
    """
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"--workers must be 1..{MAX_WORKERS}, not {workers}")
    bridge = settings.bridge
    if workers > 1 and not bridge.bridge_shared_group:
        raise ValueError(
            "--workers needs BRIDGE_SHARED_GROUP: without a shared subscription every worker "
            "would receive every message"
        )
    plans = [worker_plan(settings, n) for n in range(1, workers + 1)]
    missing = [
        path for plan in plans for key in ("BRIDGE_CERT_FILE", "BRIDGE_KEY_FILE")
        if not Path(path := plan[key]).is_file()
    ]  # fmt: skip
    if missing:
        raise ValueError(
            "each worker needs its own certificate and key (CN svc-bridge-<n>, docs/bridge.md); "
            f"missing: {', '.join(missing)}"
        )
    return plans


def worker_plan(settings: Settings, n: int) -> dict[str, str]:
    """Worker `n`'s identity and port, as settings on top of the environment."""
    bridge, port = settings.bridge, settings.metrics_port
    return {
        "BRIDGE_CERT_FILE": numbered(bridge.bridge_cert_file, n),
        "BRIDGE_KEY_FILE": numbered(bridge.bridge_key_file, n),
        "BRIDGE_CLIENT_ID": bridge.bridge_client_id if n == 1 else f"{bridge.bridge_client_id}-{n}",
        "METRICS_PORT": str(port + n - 1 if port else 0),  # 0: each its own free port
    }


BRIDGE_ARGV = (sys.executable, "-m", "f2pipe", "bridge")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """In the worker before it runs: SIGTERM when the supervisor dies, even by SIGKILL, so no
    worker outlives it unsupervised (holding its MQTT identity)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn_worker(overrides: Mapping[str, str], argv: Sequence[str] = BRIDGE_ARGV) -> WorkerProcess:
    """`f2pipe bridge` in a new process: this one's environment with the worker's settings."""
    env = {**os.environ, **overrides}
    # preexec_fn is unsafe only with threads in the parent: the supervisor runs none.
    return subprocess.Popen(list(argv), env=env, preexec_fn=_die_with_parent)  # noqa: PLW1509


@dataclass
class Worker:
    number: int
    overrides: Mapping[str, str]
    proc: WorkerProcess | None = None
    started_at: float = 0.0
    pause: float = FIRST_PAUSE
    restart_at: float | None = None  # set while it waits to be started again


class Supervisor:
    """Starts the workers, starts a dead one again, stops them all on `stop()`."""

    def __init__(
        self,
        plans: list[dict[str, str]],
        spawn: Spawn = spawn_worker,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workers = [Worker(n, plan) for n, plan in enumerate(plans, start=1)]
        self._spawn = spawn
        self._clock = clock
        self._stopping = threading.Event()
        self.exit_code = 0

    def stop(self) -> None:
        self._stopping.set()

    def run(self, tick: float = 0.2) -> int:
        self.start()
        return self.supervise(tick)

    def start(self) -> None:
        for worker in self.workers:
            self._start(worker)

    def supervise(self, tick: float = 0.2) -> int:
        """Until `stop()`: a check every `tick` seconds; then every worker stopped."""
        while not self._stopping.wait(tick):
            self.check()
        self._stop_all()
        return self.exit_code

    def check(self) -> None:
        """One round: notice dead workers, start the ones whose pause is over."""
        now = self._clock()
        for worker in self.workers:
            if worker.restart_at is not None:
                if now >= worker.restart_at:
                    self._start(worker)
                continue
            assert worker.proc is not None
            code = worker.proc.poll()
            if code is None:
                continue
            if code == USAGE_ERROR:
                log.error("bridge worker refused its settings: stopping all", extra=_w(worker))
                self.exit_code = USAGE_ERROR
                self.stop()
                return
            if now - worker.started_at >= HEALTHY_AFTER:
                worker.pause = FIRST_PAUSE
            worker.restart_at = now + worker.pause
            log.warning("bridge worker exited; starting it again",
                        extra={**_w(worker), "exit_code": code, "in_s": worker.pause})  # fmt: skip
            worker.pause = min(worker.pause * 2, MAX_PAUSE)

    def _start(self, worker: Worker) -> None:
        worker.proc = self._spawn(worker.overrides)
        worker.started_at = self._clock()
        worker.restart_at = None
        port = worker.overrides["METRICS_PORT"]
        log.info("bridge worker started", extra={**_w(worker), "metrics_port": port})

    def _stop_all(self) -> None:
        running = [w.proc for w in self.workers if w.restart_at is None and w.proc is not None]
        for proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = self._clock() + STOP_TIMEOUT
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - self._clock()))
            except subprocess.TimeoutExpired:
                log.error("bridge worker did not stop in time: killed", extra={"pid": proc.pid})
                proc.kill()
                proc.wait()


def _w(worker: Worker) -> dict[str, object]:
    """The log fields naming a worker."""
    pid = worker.proc.pid if worker.proc is not None else None
    return {"worker": worker.number, "pid": pid}

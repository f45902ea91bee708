"""The simulator service: a fleet of F2 Smart Controllers, or with ``--load`` a load generator.

``run`` enrols the fleet (keys stay in the state directory, certificates are reused), then one
asyncio loop runs every controller's MQTT connection and behaviour until SIGTERM (normal mode)
or until the load run is done. On the way out it waits a little for outstanding
acknowledgements, disconnects every controller and closes the ledger with a summary.
Everything it talks to comes from `main.build`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import resource
import time
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime
from typing import Any

from f2pipe_shared.timestamps import format_device_timestamp
from f2pipe_simulator.fleet import RunningFleet
from f2pipe_simulator.ledger import Ledger
from f2pipe_simulator.load import DRAIN_SECONDS, LoadRun
from f2pipe_simulator.metrics import SimulatorMetrics
from f2pipe_simulator.normal import run_normal
from f2pipe_simulator.options import Options
from f2pipe_simulator.ports import Broker, Clock, EnrolmentEndpoint
from f2pipe_simulator.registry import ControllerSpec
from f2pipe_simulator.settings import SimulatorSettings
from f2pipe_simulator.startup import enrol_fleet

log = logging.getLogger("f2pipe.simulator")


@dataclass(eq=False)
class SimulatorService:
    """``enrolment`` None: plain MQTT, no certificates; ``load`` None: normal mode."""

    specs: list[ControllerSpec]
    codes: Mapping[str, str]
    _: KW_ONLY
    options: Options
    settings: SimulatorSettings
    enrolment: EnrolmentEndpoint | None
    broker: Broker
    clock: Clock
    metrics: SimulatorMetrics
    ledger: Ledger | None = None
    load: LoadRun | None = None

    def __post_init__(self) -> None:
        self.phase = "starting"
        self.fleet: RunningFleet | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = False
        self._heartbeat = time.monotonic()
        self._started = time.monotonic()

    # --- control -----------------------------------------------------------------------------

    def stop(self) -> None:
        """From the signal handler: ask the loop to stop (a second signal exits at once)."""
        self._stop_requested = True
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def health(self) -> tuple[bool, dict[str, Any]]:
        fleet = self.fleet
        alive = time.monotonic() - self._heartbeat < 10
        details = {
            "phase": self.phase,
            "controllers": len(self.specs),
            "running": 0 if fleet is None else len(fleet.connections),
            "connected": 0 if fleet is None else fleet.connected,
            "messages": 0 if fleet is None else sum(fleet.acked.values()),
        }
        return self.phase == "running" and alive, details

    # --- the run -----------------------------------------------------------------------------

    async def run(self) -> int:
        """Enrol, connect, run the mode until it is done or stopped, shut down; the status."""
        self._loop = asyncio.get_running_loop()
        stop = self._stop = asyncio.Event()
        if self._stop_requested:
            stop.set()
        ready = await self._enrol(stop)
        if ready is None:  # SIGTERM while enrolling: keys and certificates so far stay
            log.info("stopped during enrolment")
            return 0
        if self.options.enrol_only:
            return 0 if len(ready) == len(self.specs) else 1
        if not ready:
            log.error("no controller could be enrolled")
            return 1
        fleet = self._open(ready)
        tasks = [asyncio.create_task(c.run(), name=c.cn) for c in fleet.connections]
        ticker = asyncio.create_task(self._housekeeping(fleet))
        self.phase = "running"
        status = 0
        try:
            if self.load is not None:
                status = await self.load.run(fleet, stop)
            else:
                status = await run_normal(fleet, stop)
        finally:
            unacked = await self._shut_down(fleet, tasks, ticker, stopped=stop.is_set())
        if unacked:  # a load run promised every message; normal mode did not
            status = status or (1 if self.load is not None else 0)
        return status

    async def _enrol(self, stop: asyncio.Event) -> list[ControllerSpec] | None:
        """The controllers ready to connect; None if stopped first."""
        if self.enrolment is not None:
            self.phase = "enrolling"
        enrolment = asyncio.create_task(enrol_fleet(self.specs, self.codes, self.enrolment))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({enrolment, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if enrolment.done():
            return enrolment.result()
        enrolment.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await enrolment
        return None

    def _open(self, ready: list[ControllerSpec]) -> RunningFleet:
        """The ledger's header, then a connection and a controller for each of ``ready``."""
        options, settings = self.options, self.settings
        self.phase = "connecting"
        if self.ledger is not None:
            start_time = options.start_time
            self.ledger.header(
                ready,
                mode="load" if self.load is not None else "normal",
                seed=options.seed,
                publish_interval=settings.publish_interval,
                started_at=format_device_timestamp(datetime.now(UTC)),
                start_time=None if start_time is None else format_device_timestamp(start_time),
                event_share=None if self.load is None else self.load.event_share,
            )
        fleet = self.fleet = RunningFleet(metrics=self.metrics, ledger=self.ledger)
        fleet.open(
            ready,
            broker=self.broker,
            clock=self.clock,
            seed=options.seed,
            start_time=options.start_time,
            publish_interval=settings.publish_interval,
            event_interval=settings.simulator_event_interval,
        )
        return fleet

    async def _shut_down(
        self,
        fleet: RunningFleet,
        tasks: list[asyncio.Task[None]],
        ticker: asyncio.Task[None],
        *,
        stopped: bool,
    ) -> int:
        """Stop publishing, wait a little for outstanding acknowledgements, disconnect, sum
        up; the messages never acknowledged."""
        self.phase = "stopping"
        fleet.stop_publishing()
        grace = self.settings.simulator_drain_seconds
        if self.load is not None and not stopped:  # the run is done: wait for the last acks
            grace = DRAIN_SECONDS
        unacked = await fleet.drain(grace, self.clock)
        await fleet.disconnect()
        ticker.cancel()
        await asyncio.gather(*tasks, ticker, return_exceptions=True)
        self._finish(fleet, unacked)
        return unacked

    async def _housekeeping(self, fleet: RunningFleet) -> None:
        """Once a second: the health heartbeat, keepalives, the ledger's flush; every ten
        seconds a word about controllers that cannot connect."""
        for second in itertools.count(1):
            self._heartbeat = time.monotonic()
            fleet.housekeeping(report=second % 10 == 0)
            await self.clock.sleep(1.0)

    def _finish(self, fleet: RunningFleet, unacked: int) -> None:
        total = sum(fleet.acked.values())
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        summary = {
            "controllers": len(fleet.connections),
            "acknowledged": total,
            "unacknowledged": unacked,
            "refused": fleet.refused,
            "dropped": fleet.dropped,
            "seconds": round(time.monotonic() - self._started, 3),
            "peak_rss_mb": round(peak_rss_mb, 1),
        }
        log.info("simulator stopped", extra={**summary, "published": dict(fleet.acked)})
        if self.ledger is not None:
            self.ledger.summary(**summary, **(self.load.stats if self.load is not None else {}))
            self.ledger.close()

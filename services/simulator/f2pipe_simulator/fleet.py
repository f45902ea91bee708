"""The running fleet: one controller and one MQTT connection per enrolled controller, and the
books of every message between them.

A controller publishes through its ``MessageOutlet``, which hands the message to its
connection and numbers it (``seq``, the order messages went to MQTT). What comes back passes
here too: an acknowledgement is counted and written to the ledger; a command goes to its
controller, whose answers go out the same way, and what it did is counted and recorded.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import Counter
from datetime import datetime

from f2pipe_shared.timestamps import to_epoch_us
from f2pipe_simulator.controller import Controller, Stamper
from f2pipe_simulator.ledger import Ledger
from f2pipe_simulator.messages import Message
from f2pipe_simulator.metrics import SimulatorMetrics
from f2pipe_simulator.ports import Broker, Clock, DeviceConnection
from f2pipe_simulator.registry import ControllerSpec

log = logging.getLogger("f2pipe.simulator")


class _Outlet:
    """A controller's outlet: its connection, through the fleet's books; a message that
    finds the connection's queue full is dropped and counted (normal mode)."""

    __slots__ = ("connection", "fleet")

    def __init__(self, fleet: RunningFleet, connection: DeviceConnection) -> None:
        self.fleet = fleet
        self.connection = connection

    def publish(self, message: Message) -> bool:
        return self.fleet.send(self.connection, message, drop_when_full=True)


class RunningFleet:
    """The controllers this run simulates, each wired to its connection (after enrolment)."""

    def __init__(self, *, metrics: SimulatorMetrics, ledger: Ledger | None = None) -> None:
        self.metrics = metrics
        self.ledger = ledger
        self.connections: list[DeviceConnection] = []
        self.controllers: dict[str, Controller] = {}  # by CN
        self.acked: Counter[str] = Counter()  # acknowledged messages by kind
        self.refused = 0
        self.dropped = 0
        self._seq = itertools.count(1)

    def open(
        self,
        specs: list[ControllerSpec],
        *,
        broker: Broker,
        clock: Clock,
        seed: int,
        start_time: datetime | None,
        publish_interval: float,
        event_interval: float,
    ) -> None:
        """A connection and a controller for each spec (on the running loop; none connects
        before its connection's ``run``). With ``start_time`` device timestamps come from a
        virtual clock: a topic's n-th message is stamped start + n x publish interval."""
        start_us = None if start_time is None else to_epoch_us(start_time)
        step_us = round(publish_interval * 1_000_000)
        t0 = clock.epoch_us() / 1e6 if start_time is None else start_time.timestamp()
        for spec in specs:
            connection = broker.connection(spec.cn, on_command=self.command, on_ack=self.ack)
            self.connections.append(connection)
            self.controllers[spec.cn] = Controller(
                spec,
                outlet=_Outlet(self, connection),
                timers=clock,
                stamper=Stamper(clock.epoch_us, start_us=start_us, step_us=step_us),
                rng=random.Random(f"{seed}/{spec.mac}"),
                publish_interval=publish_interval,
                event_interval=event_interval,
                t0=t0,
            )
        self.metrics.controllers.set(len(self.connections))

    # --- what the fleet publishes ------------------------------------------------------------

    def send(self, connection: DeviceConnection, message: Message, *, drop_when_full: bool) -> bool:
        """Publish through ``connection``; False (and counted as dropped, if ``drop_when_full``)
        if its queue is full."""
        if connection.publish(message):
            message.seq = next(self._seq)  # the order messages were handed to MQTT
            return True
        if drop_when_full:
            self.dropped += 1
            self.metrics.dropped.labels(message.kind.value).inc()
        return False

    def publishers(self) -> list[tuple[Controller, DeviceConnection]]:
        """Controllers that have something to publish, with their connections, in MAC order."""
        return [
            (controller, connection)
            for connection in self.connections
            if (controller := self.controllers[connection.cn]).publishes
        ]

    # --- what comes back ---------------------------------------------------------------------

    def ack(self, message: Message, ok: bool) -> None:
        """The broker acknowledged ``message`` (``ok``) or refused it."""
        if not ok:
            self.refused += 1
            self.metrics.refused.labels(message.kind.value).inc()
            log.warning("broker refused a message", extra={"topic": message.topic})
            return
        self.acked[message.kind.value] += 1
        self.metrics.published.labels(message.kind.value).inc()
        self.metrics.readings.inc(len(message.readings))
        if self.ledger is not None:
            self.ledger.published(message)

    def command(self, cn: str, topic: str, payload: bytes) -> None:
        """A command for controller ``cn``: it acts, and answers through its outlet."""
        controller = self.controllers[cn]
        try:
            outcome = controller.handle_command(topic, payload)
        except Exception:  # a bug must not take paho's read loop (and the connection) down
            log.exception("command failed", extra={"cn": cn, "topic": topic})
            self.metrics.commands.labels("unknown", "error").inc()
            return
        self.metrics.commands.labels(outcome.kind, outcome.result).inc()
        if outcome.result == "signalled":
            self.metrics.reader_signals.labels(outcome.detail).inc()
        if self.ledger is not None:
            self.ledger.command(controller.mac, topic, payload, outcome)
        log.info(
            "command",
            extra={"cn": cn, "topic": topic, "result": outcome.result, "detail": outcome.detail},
        )

    # --- the connections ---------------------------------------------------------------------

    @property
    def connected(self) -> int:
        return sum(1 for c in self.connections if c.connected)

    @property
    def outstanding(self) -> int:
        return sum(c.outstanding for c in self.connections)

    async def wait_connected(self, stop: asyncio.Event, limit: float | None) -> None:
        """Until every controller has connected once, ``stop`` is set, or ``limit`` seconds
        have passed (then a warning: the run goes on with those connected)."""
        started = time.monotonic()

        async def everyone() -> None:
            await asyncio.gather(*(c.ever_connected.wait() for c in self.connections))

        waiting = asyncio.create_task(everyone())
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait(
            {waiting, stopped}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
        )
        stopped.cancel()
        if waiting in done:
            log.info(
                "every controller connected",
                extra={
                    "controllers": len(self.connections),
                    "seconds": round(time.monotonic() - started, 2),
                },
            )
            return
        waiting.cancel()
        if not stop.is_set():
            connected = sum(1 for c in self.connections if c.ever_connected.is_set())
            log.warning(
                "not every controller connected in time; load run starting anyway",
                extra={"connected": connected, "controllers": len(self.connections)},
            )

    def housekeeping(self, *, report: bool) -> None:
        """Once a second: keepalives, the ledger's flush; with ``report``, one line about
        controllers that cannot connect (not one per attempt)."""
        for connection in self.connections:
            connection.misc()
        if self.ledger is not None:
            self.ledger.flush()
        if not report:
            return
        failing = Counter(
            c.last_error for c in self.connections if not c.connected and c.last_error
        )
        if failing:
            log.warning(
                "controllers not connected",
                extra={
                    "connected": self.connected,
                    "controllers": len(self.connections),
                    "last_errors": dict(failing),
                },
            )

    async def drain(self, grace: float, clock: Clock) -> int:
        """Wait up to ``grace`` seconds for outstanding acknowledgements; return those left."""
        deadline = clock.time() + grace
        while clock.time() < deadline:
            if not self.outstanding:
                return 0
            await clock.sleep(0.05)
        return self.outstanding

    def stop_publishing(self) -> None:
        """Every controller stops its own timing (sensors, events, pending reverts)."""
        for controller in self.controllers.values():
            controller.stop()

    async def disconnect(self) -> None:
        """DISCONNECT every connection (or drop it, if that does not go out)."""
        await asyncio.gather(*(c.disconnect() for c in self.connections))

"""Load mode (``--load``): one deterministic stream over the whole fleet instead of the
devices' own timing.

Message k comes from controller k mod n (the fleet in MAC order): with probability
``event_share`` a state change or scan, otherwise the next of its sensors' frames. ``rate``
paces the stream (messages per second over the fleet; None: as fast as the broker
acknowledges); ``count`` and ``duration`` end it. A controller whose queue is full makes the
stream wait for acknowledgements (backpressure): load mode never drops a message.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from f2pipe_simulator.fleet import RunningFleet
from f2pipe_simulator.ports import Clock

log = logging.getLogger("f2pipe.simulator")

BATCH = 500  # messages generated between two turns of the event loop
DRAIN_SECONDS = 120.0  # after a run that ended by itself: wait this long for the last acks
BACKPRESSURE_POLL = 0.002  # seconds between two tries of a full queue


@dataclass(eq=False, kw_only=True)
class LoadRun:
    clock: Clock
    rate: float | None = None
    count: int | None = None
    duration: float | None = None
    event_share: float = 0.1
    connect_timeout: float = 120.0
    seed: int | None = None  # for the log: the fleet's controllers were seeded with it
    stats: dict[str, Any] = field(default_factory=dict, init=False)  # the ledger's summary

    async def run(self, fleet: RunningFleet, stop: asyncio.Event) -> int:
        """Once every controller is connected (or after the connect timeout), publish the
        stream until it is done or ``stop`` is set; 1 if no controller has anything to say."""
        await fleet.wait_connected(stop, self.connect_timeout)
        publishers = fleet.publishers()
        if not publishers:
            log.error("load mode: no controller has anything to publish")
            return 1
        clock = self.clock
        rate, count, duration = self.rate, self.count, self.duration
        start = clock.time()
        sent = 0
        log.info(
            "load run started",
            extra={"rate": rate, "count": count, "duration": duration, "seed": self.seed},
        )
        while not stop.is_set():
            elapsed = clock.time() - start
            if (count is not None and sent >= count) or (
                duration is not None and elapsed >= duration
            ):
                break
            budget = BATCH
            if rate is not None:
                budget = min(budget, int(elapsed * rate) + 1 - sent)
                if budget <= 0:
                    await clock.sleep(min(0.01, (sent + 1) / rate - elapsed))
                    continue
            if count is not None:
                budget = min(budget, count - sent)
            for _ in range(budget):
                controller, connection = publishers[sent % len(publishers)]
                message = controller.load_message(self.event_share)
                assert message is not None
                while not fleet.send(connection, message, drop_when_full=False):
                    # This controller's queue is full: wait for acknowledgements.
                    if stop.is_set():
                        break
                    await clock.sleep(BACKPRESSURE_POLL)
                else:
                    sent += 1
            await asyncio.sleep(0)
        seconds = clock.time() - start
        self.stats = {
            "load_sent": sent,
            "load_seconds": round(seconds, 3),
            "load_rate": round(sent / seconds, 1) if seconds > 0 else None,
        }
        log.info("load run generated", extra=self.stats)
        return 0

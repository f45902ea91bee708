"""Normal mode: every controller keeps its own time, as real ones do (sensor frames every
publish interval, doors, buttons, readers and motion at random), until stopped."""

from __future__ import annotations

import asyncio

from f2pipe_simulator.fleet import RunningFleet


async def run_normal(fleet: RunningFleet, stop: asyncio.Event) -> int:
    for controller in fleet.controllers.values():
        controller.start()
    await fleet.wait_connected(stop, None)
    await stop.wait()
    return 0

"""The production `Clock`: the running asyncio event loop's time and timers, and the system's
wall clock for device timestamps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class LoopClock:
    """Asks for the running loop on each call, so it can be built before the loop runs."""

    __slots__ = ()

    def time(self) -> float:
        return asyncio.get_running_loop().time()

    def call_at(self, when: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_at(when, callback)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def epoch_us(self) -> int:
        return time.time_ns() // 1000

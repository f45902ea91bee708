"""Raw records whose output is on its way to Kafka, acked in offset order once delivered.

Deliveries overlap (the next record is decoded while the previous one's output travels),
but acks go out strictly in offset order per partition: a record is acked only when it
and every record before it in its partition are delivered. Faust's commit bookkeeping
must then never reason about holes, which it gets wrong (see faust_consumer.py): with
in-order acks the committed offset can only pass records whose output is in Kafka.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from f2pipe_processor import metrics

Ack = Callable[[], Awaitable[object]]


class InFlight:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tasks: set[asyncio.Task[object]] = set()
        self._queues: dict[int, deque[tuple[asyncio.Task[object], Ack]]] = {}
        self._acking: set[asyncio.Future[object]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, partition: int, delivery: Awaitable[object], ack: Ack) -> None:
        """Track ``delivery`` of a record of ``partition``; ``ack`` it when its turn comes."""
        task = asyncio.ensure_future(delivery)
        self._tasks.add(task)
        self._queues.setdefault(partition, deque()).append((task, ack))
        metrics.INFLIGHT.set(len(self._tasks))
        task.add_done_callback(lambda done: self._done(partition, done))

    def _done(self, partition: int, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        metrics.INFLIGHT.set(len(self._tasks))
        queue = self._queues[partition]
        while queue and queue[0][0].done():
            head, ack = queue[0]
            if head.cancelled() or head.exception() is not None:
                # Shutdown cancelled it: neither it nor anything after it may be acked.
                queue.clear()
                return
            queue.popleft()
            # Tasks start in creation order and Stream.ack does not await before acking,
            # so these acks land in offset order.
            acking = asyncio.ensure_future(ack())
            self._acking.add(acking)
            acking.add_done_callback(self._acking.discard)

    async def wait_below_limit(self) -> None:
        while len(self._tasks) >= self.limit:
            await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)

    async def drain(self, seconds: float) -> None:
        """Wait (at most ``seconds``) for what is in flight, so it gets acked."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=seconds)
        await asyncio.sleep(0)  # let the scheduled acks run

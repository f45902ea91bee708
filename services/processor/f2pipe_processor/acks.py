"""What may be acknowledged: raw records in offset order once delivered, and never a hole.

Deliveries overlap (the next record is decoded while the previous one's output travels),
but acks go out strictly in offset order per partition (`InFlight`): a record is acked only
when it and every record before it in its partition are delivered. The stream's commit
bookkeeping must then never reason about holes, which Faust gets wrong (`faust_adapter.py`):
with in-order acks the committed offset can only pass records whose output is in Kafka.

A hole the consumer reports in a topic that cannot have one (`Holes`) is never acked either:
it is logged, counted and reported by /healthz, and a restart processes it again.

No Faust here: an ack is any ``async () -> object``; the adapter makes one per event.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from f2pipe_processor.metrics import ProcessorMetrics

log = logging.getLogger(__name__)

Ack = Callable[[], Awaitable[object]]


class InFlight:
    def __init__(self, limit: int, metrics: ProcessorMetrics) -> None:
        self.limit = limit
        self._metrics = metrics
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
        self._metrics.inflight.set(len(self._tasks))
        task.add_done_callback(lambda done: self._done(partition, done))

    def _done(self, partition: int, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        self._metrics.inflight.set(len(self._tasks))
        queue = self._queues[partition]
        while queue and queue[0][0].done():
            head, ack = queue[0]
            if head.cancelled() or head.exception() is not None:
                # Shutdown cancelled it: neither it nor anything after it may be acked.
                queue.clear()
                return
            queue.popleft()
            # Acks are started in offset order; each must take effect before its first
            # await (the adapter's ack does), so they also land in offset order.
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


class Holes:
    """Records the consumer skipped in ``contiguous_topics`` (neither compacted nor
    transactional: offsets without gaps), which must therefore never be acked."""

    def __init__(self, contiguous_topics: frozenset[str], metrics: ProcessorMetrics) -> None:
        self.contiguous_topics = contiguous_topics
        self._metrics = metrics
        self.seen = 0
        self.partitions: set[int] = set()  # partitions with a hole (connectivity.py waits)

    def guards(self, topic: str) -> bool:
        return topic in self.contiguous_topics

    def skipped(self, topic: str, partition: int, first: int, next_seen: int) -> None:
        """Offsets [first, next_seen) of a guarded topic were skipped: never ack them."""
        self.seen += 1
        self.partitions.add(partition)
        self._metrics.skipped_by_faust.inc(max(0, next_seen - first))
        log.error(
            "Faust skipped records of a contiguous topic; they stay uncommitted and are "
            "processed again after a restart",
            extra={"topic": topic, "partition": partition, "first": first,
                   "next_seen": next_seen},
        )  # fmt: skip

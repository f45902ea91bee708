"""What may be acknowledged: raw records in offset order once delivered, and never a hole.

Deliveries overlap (the next record is decoded while the previous one's output travels),
but acks go out strictly in offset order per partition (`InFlight`): a record is acked only
when it and every record before it in its partition are delivered. The stream's commit
bookkeeping must then never reason about holes, which Faust gets wrong (`faust_adapter.py`):
with in-order acks the committed offset can only pass records whose output is in Kafka.

A hole the consumer reports in a topic that cannot have one (`Holes`) is never acked either:
it is logged, counted and reported by /healthz, and a restart processes it again.

A commit the broker refuses (`Commits`) is logged and counted, not fatal: what it would have
committed is committed with the next one, or processed again by the partition's next owner
(duplicates, which the sink ignores). Refused again and again for a minute, /healthz says so (503).

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


# Refused that many times in a row over that long, none accepted: /healthz turns 503. Both:
# one refusal before an idle minute is no trend, and ten in a rebalance's second are routine.
COMMITS_REFUSED_UNHEALTHY = 10
COMMITS_REFUSED_UNHEALTHY_S = 60.0


class Commits:
    """The outcome of each offset commit: refused ones counted by error; refused again and
    again for a minute without one accepted (more than a rebalance takes), /healthz says so."""

    def __init__(self, metrics: ProcessorMetrics, clock: Callable[[], float]) -> None:
        self._metrics = metrics
        self._clock = clock
        self.failed_in_a_row = 0
        self.failing_since: float | None = None
        self.last_error = ""

    def succeeded(self) -> None:
        self.failed_in_a_row = 0
        self.failing_since = None

    def failed(self, error: BaseException) -> None:
        name = type(error).__name__
        self.failed_in_a_row += 1
        self.last_error = name
        if self.failing_since is None:
            self.failing_since = self._clock()
        self._metrics.commit_failures.labels(error=name).inc()
        # The error's text names partitions and offsets, never input: safe to log. Refused
        # because the group rebalanced (CommitFailedError) is routine, anything else is not.
        log.log(
            logging.INFO if name == "CommitFailedError" else logging.WARNING,
            "offset commit refused; committed with the next one, or processed again by the "
            "partition's next owner",
            extra={"error": name, "detail": str(error)[:300], "in_a_row": self.failed_in_a_row},
        )

    @property
    def failing(self) -> bool:
        since = self.failing_since
        if since is None or self.failed_in_a_row < COMMITS_REFUSED_UNHEALTHY:
            return False
        return self._clock() - since >= COMMITS_REFUSED_UNHEALTHY_S

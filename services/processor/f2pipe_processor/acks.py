"""What may be acknowledged: raw records in offset order once delivered, and never a hole.

Deliveries overlap (the next record is decoded while the previous one's output travels),
but acks go out strictly in offset order per partition (`InFlight`): a record is acked only
when it and every record before it in its partition are delivered. The stream's commit
bookkeeping must then never reason about holes, which Faust gets wrong (`faust_adapter.py`):
with in-order acks the committed offset can only pass records whose output is in Kafka.

A hole the consumer reports in a topic that cannot have one (`Holes`) is never acked
unprocessed: the partition is read again from the hole; offsets that hold nothing on that
second read (transaction markers, records expired by retention) are committed past; a hole
that does not resolve is left for a restart, reported by /healthz.

A commit the broker refuses (`Commits`) is logged and counted, not fatal: what it would have
committed is committed with the next one, or processed again by the partition's next owner
(duplicates, which the sink ignores). Refused again and again for a minute, /healthz says so (503).

No Faust here: an ack is any ``async () -> object``; the adapter makes one per event.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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


class Verdict(enum.Enum):
    """What the consumer does about a hole it reports (``Holes.skipped``)."""

    REREAD = "reread"  # seek the partition back to the hole's first offset
    NO_RECORDS = "no_records"  # mark the offsets processed: there is nothing to read there
    LEAVE = "leave"  # leave it unacked: commits stop before it until a restart


# A partition whose holes were re-read that many times in a row, none resolving, is left to
# a restart (the alert): a re-read that keeps finding new holes is not converging.
REREADS_IN_A_ROW = 3
# A re-read that has not resolved in that long (a rebalance or a stop interrupted it) is left
# to a restart too.
REREAD_DEADLINE_S = 120.0


@dataclass
class Hole:
    first: int  # the first offset missing
    next_seen: int  # the offset the consumer read next: [first, next_seen) is missing
    since: float  # when it was reported (the clock's time)


class Holes:
    """Offsets the consumer skipped in ``contiguous_topics`` (neither compacted nor written
    transactionally by f2pipe: offsets without gaps), which must never be acked unprocessed.

    A hole is read again once: the consumer seeks its partition back to the hole's first
    offset (``Verdict.REREAD``) and the partition is in ``partitions`` until it resolves:

    - its first record is handed to processing (``record``): the consumer had skipped it
      (Faust's restart bug, faust_adapter.py); it is processed now, and the records after
      it again (duplicates, which the sink ignores). Healed;
    - the consumer reports the same hole again: there is nothing at those offsets for it to
      read (a transactional writer's commit markers, or records deleted by retention
      before this group read them), so they are marked processed (``Verdict.NO_RECORDS``),
      counted and logged; commits go on past them;
    - neither within ``REREAD_DEADLINE_S``, or ``REREADS_IN_A_ROW`` holes in a row on one
      partition: left unacked (``Verdict.LEAVE``), reported by /healthz and the alert; a
      restart (or the next rebalance, which seeks every partition to its committed offset)
      processes it again. A re-read that comes late (the stream held its fetch, waiting for
      PostgreSQL) still heals it; reported again, it stays left, never taken as empty.
    """

    def __init__(
        self, contiguous_topics: frozenset[str], metrics: ProcessorMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.contiguous_topics = contiguous_topics
        self._metrics = metrics
        self._clock = clock
        self.rereading: dict[int, Hole] = {}  # by partition
        self.left: dict[int, Hole] = {}  # by partition: waiting for a restart
        self._in_a_row: dict[int, int] = {}

    @property
    def partitions(self) -> set[int]:
        """Partitions with a hole not resolved (connectivity.py makes no offline decision)."""
        self._expire()
        return self.rereading.keys() | self.left.keys()

    @property
    def stuck(self) -> int:
        """Holes left for a restart (/healthz)."""
        self._expire()
        return len(self.left)

    def guards(self, topic: str) -> bool:
        return topic in self.contiguous_topics

    def skipped(self, topic: str, partition: int, first: int, next_seen: int) -> Verdict:
        """Offsets [first, next_seen) of a guarded topic were skipped: what to do about it."""
        extra = {"topic": topic, "partition": partition, "first": first, "next_seen": next_seen}
        pending = self.rereading.get(partition)
        if pending is not None and pending.first == first:
            # Read again from `first` and again nothing before `next_seen`: nothing there.
            del self.rereading[partition]
            self._in_a_row[partition] = 0
            self._metrics.offsets_without_records.inc(max(0, next_seen - first))
            self._metrics.holes.labels(outcome="no_records").inc()
            log.warning(
                "raw offsets hold no records for this consumer (a transactional writer's "
                "markers, or records deleted by retention before they were processed); "
                "committing past them",
                extra=extra,
            )
            return Verdict.NO_RECORDS
        self._metrics.skipped_by_faust.inc(max(0, next_seen - first))
        in_a_row = self._in_a_row.get(partition, 0) + 1
        self._in_a_row[partition] = in_a_row
        if partition in self.left or in_a_row > REREADS_IN_A_ROW:
            self.rereading.pop(partition, None)
            self.left.setdefault(partition, Hole(first, next_seen, self._clock()))
            self._metrics.holes.labels(outcome="left").inc()
            log.error(
                "the consumer skipped raw records again and again; they stay uncommitted "
                "and are processed again after a restart",
                extra=extra,
            )
            return Verdict.LEAVE
        self.rereading[partition] = Hole(first, next_seen, self._clock())
        log.warning("the consumer skipped raw records; reading them again", extra=extra)
        return Verdict.REREAD

    def record(self, partition: int, offset: int) -> None:
        """A record of ``partition`` handed to processing: the first of a hole heals it (one
        left for a restart too: its re-read came late, a stream waiting for PostgreSQL)."""
        pending = self.rereading.get(partition) or self.left.get(partition)
        if pending is not None and offset == pending.first:
            self.rereading.pop(partition, None)
            self.left.pop(partition, None)
            self._in_a_row[partition] = 0
            self._metrics.holes.labels(outcome="healed").inc()
            log.info(
                "skipped raw records read again",
                extra={"partition": partition, "first": pending.first,
                       "next_seen": pending.next_seen},
            )  # fmt: skip

    def assigned(self) -> None:
        """A new assignment: Faust seeks every partition to its committed offset, which is
        before any hole (a hole is never committed past), so every hole is read again."""
        self.rereading.clear()
        self.left.clear()
        self._in_a_row.clear()

    def _expire(self) -> None:
        if not self.rereading:
            return
        now = self._clock()
        for partition, hole in list(self.rereading.items()):
            if now - hole.since >= REREAD_DEADLINE_S:
                del self.rereading[partition]
                self.left[partition] = hole
                self._metrics.holes.labels(outcome="left").inc()
                log.error(
                    "skipped raw records were not read again in time; they stay uncommitted "
                    "and are processed again after a restart",
                    extra={"partition": partition, "first": hole.first,
                           "next_seen": hole.next_seen},
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

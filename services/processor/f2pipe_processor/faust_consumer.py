"""Faust's aiokafka consumer with the restart bug closed (faust-streaming 0.15.3).

What goes wrong without this, reproduced by test_processor_worker.py (kill -9, restart):
when a worker gets its partitions, Faust's recovery resumes the stream partitions *before*
it seeks them to the committed offsets (``Recovery.on_recovery_completed``), and aiokafka's
``seek_to_committed`` awaits one offset fetch per partition. Records fetched in that window
are dropped by Faust (flow control is still off), aiokafka's position has moved past them,
so the next record arrives with a hole before it, and Faust's gap handling
(``Consumer._add_gap``, meant for compacted topics and transaction markers) marks the hole
as processed. The next commit then skips those records for good: lost readings.

Two defences, both narrow:
- the stream partitions stay paused from the seek until flow control is back on, so no
  record can be fetched and dropped in between (``perform_seek`` / ``resume_flow``);
- a hole in a topic that cannot have one (the raw topic: neither compacted nor
  transactional) is never acked. It is logged, counted and reported by /healthz; its records
  are processed again after a restart, and no commit passes them meanwhile.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP

from f2pipe_processor import metrics

log = logging.getLogger(__name__)


class SafeSeekConsumer(aiokafka_driver.Consumer):
    # Topics whose offsets are contiguous: a hole means Faust dropped records.
    contiguous_topics: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: set[TP] = set()
        self.holes_seen = 0

    async def perform_seek(self) -> None:
        # Faust resumed these partitions just before calling us: hold them until the flow
        # is on again, or what they fetch during the seek is dropped.
        active = {tp for tp in self._get_active_partitions() if not self._is_changelog_tp(tp)}
        self._held |= active
        self.pause_partitions(active)
        await super().perform_seek()

    def resume_flow(self) -> None:
        super().resume_flow()
        if self._held:
            held, self._held = self._held, set()
            self.resume_partitions(held & self.assignment())

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        if tp.topic not in self.contiguous_topics:
            await super()._add_gap(tp, offset_from, offset_to)
            return
        # Never ack what was not processed: commits stop before the hole, and a restart
        # processes it again (duplicates, which the sink ignores, instead of losses).
        self.holes_seen += 1
        metrics.SKIPPED_BY_FAUST.inc(max(0, offset_to - offset_from))
        log.error(
            "Faust skipped records of a contiguous topic; they stay uncommitted and are "
            "processed again after a restart",
            extra={"topic": tp.topic, "partition": tp.partition, "first": offset_from,
                   "next_seen": offset_to},
        )  # fmt: skip


class SafeSeekTransport(aiokafka_driver.Transport):
    Consumer = SafeSeekConsumer


def transport_for(contiguous_topics: frozenset[str]) -> type[SafeSeekTransport]:
    """A transport class whose consumer guards ``contiguous_topics``."""
    consumer = type(
        "GuardedConsumer", (SafeSeekConsumer,), {"contiguous_topics": contiguous_topics}
    )
    return type("GuardedTransport", (SafeSeekTransport,), {"Consumer": consumer})

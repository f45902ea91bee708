"""The processor's flow, one raw record at a time. No Faust: faust_adapter.py drives it.

    raw-iot-data record (one batch of MQTT messages)           handle()
      -> BatchProcessor.process: parse -> batched lookup (memory, Redis, PostgreSQL) -> decode
      -> output records: one processed-iot-data record + one dead letter per bad message
      -> latest-value table: one update per device touched
      -> delivered by librdkafka; the raw record is acked once Kafka acknowledged its output
         and every earlier record's of its partition (acks.py); only acked offsets commit
    every PROCESSOR_LATEST_FLUSH_SECONDS                        flush_latest()
      -> the devices changed since the last flush go to the table's changelog
    registry_changed notifications                              watch_registry()
      -> the caches forget what changed (invalidation.py)
    every PROCESSOR_REDIS_PROBE_SECONDS                         watch_redis()
      -> a PING tells redis_up and /healthz whether Redis answers (resolver.py)
    every connectivity_interval (a quarter of the timeout)      check_connectivity()
      -> offline events of controllers silent for CONNECTIVITY_TIMEOUT, the connectivity
         state's changelog (connectivity.py)

A record is acked only once its output is delivered, so a crash, kill or PostgreSQL outage
leaves its offset uncommitted and the record is processed again. Up to
PROCESSOR_MAX_INFLIGHT records may await that acknowledgement at once, so a Kafka round trip
does not stall decoding. Faust's worker owns the event loop and SIGTERM (``drain`` is what it
waits for on shutdown and rebalance).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import InitVar, dataclass
from typing import Any

from f2pipe_processor.acks import Ack, Commits, Holes, InFlight
from f2pipe_processor.connectivity import Connectivity, PartitionProgress
from f2pipe_processor.core import BatchProcessor
from f2pipe_processor.metrics import ProcessorMetrics
from f2pipe_processor.output import OutRecord, output_records
from f2pipe_processor.ports import (
    CacheHealth,
    ChangeFeed,
    Clock,
    LatestStore,
    OutputProducer,
    RegistryStatus,
)
from f2pipe_processor.resolver import Resolver
from f2pipe_shared.records import ProcessedBatch, encode_processed_batch
from f2pipe_shared.settings import KafkaSettings

DRAIN_SECONDS = 10.0  # how long shutdown and rebalance wait for outputs in flight


@dataclass(eq=False, kw_only=True)
class ProcessorService:
    kafka: InitVar[KafkaSettings]
    core: BatchProcessor
    output: OutputProducer
    latest: LatestStore
    inflight: InFlight
    holes: Holes
    commits: Commits
    listener: ChangeFeed
    resolver: Resolver
    registry: RegistryStatus
    cache: CacheHealth
    metrics: ProcessorMetrics
    connectivity: Connectivity
    progress: PartitionProgress
    redis_probe_seconds: float = 2.0
    clock: Clock = time.time

    def __post_init__(self, kafka: KafkaSettings) -> None:
        self.raw_topic = kafka.kafka_raw_topic
        self.processed_topic = kafka.kafka_processed_topic
        self.dlq_topic = kafka.kafka_deadletter_topic
        self.processed_partitions = kafka.kafka_processed_partitions
        self.started_at = self.clock()

    async def handle(self, partition: int, offset: int, value: bytes | None, ack: Ack) -> None:
        """One raw record: process, output, latest values, deliver; ``ack`` when its turn comes."""
        self.holes.record(partition, offset)
        result = await self.core.process(partition, offset, value)
        started = time.perf_counter()
        holed = partition in self.holes.partitions
        seen = self.connectivity.observe(partition, offset, result.heard, holed=holed)
        if seen.events or seen.seen:
            result.processed.events.extend(seen.events)
            result.processed = result.processed._replace(seen=seen.seen)
        records = output_records(result, self.processed_topic, self.dlq_topic, self.raw_topic,
                                 self.processed_partitions)  # fmt: skip
        records += seen.changelog  # a transition's state is in Kafka before the record is acked
        self.latest.write(partition, result.latest)
        self.inflight.add(partition, self.output.deliver(records), ack=ack)
        self.metrics.stage_seconds.labels("produce").inc(time.perf_counter() - started)
        await self.inflight.wait_below_limit()

    async def flush_latest(self) -> None:
        """The latest-value changes since the last flush, to the changelog (not acked)."""
        records = self.latest.flush()
        if records:
            await self.output.deliver(records)

    @property
    def connectivity_interval(self) -> float:
        """How often ``check_connectivity`` runs: a quarter of the timeout, 0.5-5 s."""
        return min(5.0, max(0.5, self.connectivity.timeout_seconds / 4))

    async def check_connectivity(self) -> None:
        """Offline events of the controllers silent for the timeout, and the state's
        changelog (not acked: no raw record waits for these)."""
        now_us = int(self.clock() * 1e6)
        checked = self.connectivity.check(now_us, self.progress, self.holes.partitions)
        records = [
            OutRecord(
                self.processed_topic,
                str(partition).encode(),
                encode_processed_batch(ProcessedBatch(partition, -1, [], events)),
            )
            for partition, events in sorted(checked.offline.items())
        ]
        records += checked.changelog
        if records:
            await self.output.deliver(records)

    async def watch_registry(self) -> None:
        """Apply registry changes to the caches until cancelled."""
        await self.listener.run()

    async def watch_redis(self) -> None:
        """PING Redis every ``redis_probe_seconds`` until cancelled: lookups answered from
        memory never reach Redis, so only a probe tells whether it is there."""
        while True:
            await self.cache.probe()
            await asyncio.sleep(self.redis_probe_seconds)

    async def drain(self) -> None:
        """Wait (bounded) for the outputs in flight, so their records get acked; then the
        latest values not flushed yet, so whoever owns a partition next recovers them."""
        await self.inflight.drain(DRAIN_SECONDS)
        # Bounded too (deliver retries while Kafka is away); what it leaves unflushed comes
        # back as after a kill -9, with the device's next message.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush_latest(), DRAIN_SECONDS)

    def health(self) -> tuple[bool, dict[str, Any]]:
        registry_ok = self.registry.down_since is None
        holes = self.holes.stuck
        cache = self.cache
        details: dict[str, Any] = {
            "registry": "up" if registry_ok else f"down: {self.registry.last_error}",
            "listener": "listening" if self.listener.connected else "disconnected",
            "redis": "up" if cache.up else f"down: {cache.last_error}",
            "output_failures": self.output.failures,
            "inflight_records": len(self.inflight),
            "cached_entries": self.resolver.cached,
            "uptime_s": round(self.clock() - self.started_at),
        }
        if not cache.up:
            # Redis down degrades, it does not stop processing: still healthy (200).
            details["degraded"] = "Redis down: every lookup asks PostgreSQL (slower, correct)"
        if self.holes.rereading:
            details["rereading"] = sorted(self.holes.rereading)  # healthy meanwhile
        if holes:
            # Skipped records that reading again did not bring: a restart processes them.
            details["skipped_by_faust"] = f"{holes} hole(s): restart this worker"
        failing = self.commits.failing
        if failing:
            # The broker refuses every commit: a restart would re-process all since the last.
            details["commits"] = (f"{self.commits.failed_in_a_row} refused in a row "
                                  f"({self.commits.last_error})")  # fmt: skip
        healthy = registry_ok and self.listener.connected and not holes and not failing
        return healthy and self.output.failures == 0, details

"""The processor's Prometheus metrics, in a registry of their own (`ProcessorMetrics`).

Built once in `main.build()` and handed to whoever counts; `/metrics` (Faust's web server)
serves that registry, with the process and platform collectors and Faust's own sensor
(`f2pipe_processor_faust_*`). Two instances, in one test process or two, never share a counter.

Counted per batch, not per message: a counter increment costs about as much as decoding a
datapoint, so the hot loop collects numbers in plain ints and adds them once.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

PREFIX = "f2pipe_processor_"
LOOKUP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0)


class ProcessorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # What the default registry showed before: process, platform and garbage collector.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.records = Counter(PREFIX + "records", "raw-iot-data records processed", registry=r)
        self.messages = Counter(
            PREFIX + "messages", "MQTT messages processed (decoded or dead-lettered)", registry=r
        )
        self.readings = Counter(PREFIX + "readings", "readings decoded", registry=r)
        self.events = Counter(
            PREFIX + "events", "events emitted (scans, state changes)", registry=r
        )
        self.dead_letters = Counter(
            PREFIX + "dead_letters", "messages dead-lettered", ["reason"], registry=r
        )
        self.cache_lookups = Counter(
            PREFIX + "cache_lookups",
            "registry lookups by cache layer and outcome (memory, redis, postgres)",
            ["layer", "result"],
            registry=r,
        )
        self.lookup_seconds = Histogram(
            PREFIX + "lookup_seconds",
            "one batched lookup of a batch's cache misses, by layer",
            ["layer"],
            buckets=LOOKUP_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            PREFIX + "batch_seconds",
            "processing one raw record: parse, lookup, decode, hand to the producer",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Counter(
            PREFIX + "stage_seconds",
            "time spent per stage (parse, lookup, decode, produce): the cost split",
            ["stage"],
            registry=r,
        )
        self.redis_up = Gauge(
            PREFIX + "redis_up", "1 while Redis answers, 0 while lookups bypass it", registry=r
        )
        self.redis_fallbacks = Counter(
            PREFIX + "redis_fallbacks",
            "lookups sent to PostgreSQL because Redis was unavailable",
            registry=r,
        )
        self.invalidations = Counter(
            PREFIX + "invalidations", "registry_changed notifications applied", ["table"],
            registry=r,
        )  # fmt: skip
        self.cache_flushes = Counter(
            PREFIX + "cache_flushes",
            "whole-cache flushes (listener reconnect, TRUNCATE, big changes)",
            registry=r,
        )
        self.refused = Counter(
            PREFIX + "records_refused",
            "output records Kafka refused as such, replaced by a dead letter",
            registry=r,
        )
        self.produce_retries = Counter(
            PREFIX + "produce_retries", "output records sent again after a failure", registry=r
        )
        self.inflight = Gauge(
            PREFIX + "inflight_records", "raw records whose output awaits Kafka's ack", registry=r
        )
        self.postgres_up = Gauge(
            PREFIX + "postgres_up", "1 while the registry database answers", registry=r
        )
        self.postgres_retries = Counter(
            PREFIX + "postgres_retries",
            "failed registry queries, retried (offsets wait meanwhile)",
            registry=r,
        )
        self.skipped_by_faust = Counter(
            PREFIX + "skipped_by_faust",
            "raw records Faust skipped (kept uncommitted; a restart processes them): should stay 0",
            registry=r,
        )

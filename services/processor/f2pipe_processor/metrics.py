"""The processor's Prometheus metrics, in a registry of their own (`ProcessorMetrics`).

Built once in `main.build()` and handed to whoever counts; `/metrics` (Faust's web server)
serves that registry, with the process and platform collectors and Faust's own sensor
(`f2pipe_processor_faust_*`). Two instances, in one test process or two, never share a counter.

Counted per batch, not per message: a counter increment costs about as much as decoding a
datapoint, so the hot loop collects numbers in plain ints and adds them once.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from f2pipe_shared.metrics import ServiceMetrics

PREFIX = "f2pipe_processor_"
LOOKUP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0)


class ProcessorMetrics(ServiceMetrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # What the default registry showed before: process, platform and garbage collector.
        super().__init__(PREFIX, registry, gc=True)
        self.records = self.counter("records", "raw-iot-data records processed")
        self.messages = self.counter(
            "messages", "MQTT messages processed (decoded or dead-lettered)"
        )
        self.readings = self.counter("readings", "readings decoded")
        self.events = self.counter("events", "events emitted (scans, state changes)")
        self.dead_letters = self.counter("dead_letters", "messages dead-lettered", ["reason"])
        self.cache_lookups = self.counter(
            "cache_lookups",
            "registry lookups by cache layer and outcome (memory, redis, postgres)",
            ["layer", "result"],
        )
        self.lookup_seconds = self.histogram(
            "lookup_seconds",
            "one batched lookup of a batch's cache misses, by layer",
            LOOKUP_BUCKETS,
            ["layer"],
        )
        self.batch_seconds = self.histogram(
            "batch_seconds",
            "processing one raw record: parse, lookup, decode, hand to the producer",
            BATCH_BUCKETS,
        )
        self.stage_seconds = self.counter(
            "stage_seconds",
            "time spent per stage (parse, lookup, decode, produce): the cost split",
            ["stage"],
        )
        self.redis_up = self.gauge(
            "redis_up", "1 while Redis answers the background probe, 0 while lookups bypass it"
        )
        self.redis_fallbacks = self.counter(
            "redis_fallbacks", "lookups sent to PostgreSQL because Redis was unavailable"
        )
        self.invalidations = self.counter(
            "invalidations", "registry_changed notifications applied", ["table"]
        )
        self.cache_flushes = self.counter(
            "cache_flushes",
            "whole-cache flushes (start-up, TRUNCATE, big changes, a listener away too long)",
        )
        self.registry_replayed = self.counter(
            "registry_replayed",
            "registry changes read from registry.changes after the listener reconnected",
        )
        self.refused = self.counter(
            "records_refused", "output records Kafka refused as such, replaced by a dead letter"
        )
        self.produce_retries = self.counter(
            "produce_retries", "output records sent again after a failure"
        )
        self.inflight = self.gauge(
            "inflight_records", "raw records whose output awaits Kafka's ack"
        )
        self.assigned_partitions = self.gauge(
            "assigned_partitions",
            "raw-iot-data partitions assigned to this worker (its share of the group)",
        )
        self.postgres_up = self.gauge("postgres_up", "1 while the registry database answers")
        self.postgres_retries = self.counter(
            "postgres_retries", "failed registry queries, retried (offsets wait meanwhile)"
        )
        self.controllers_online = self.gauge(
            "controllers_online",
            "controllers online, of those whose raw partitions this worker owns",
        )
        self.controllers_offline = self.gauge(
            "controllers_offline",
            "controllers offline (nothing received for CONNECTIVITY_TIMEOUT), of this worker's",
        )
        self.connectivity_transitions = self.counter(
            "connectivity_transitions",
            "connectivity events emitted, by the status a controller went to",
            ["status"],
        )
        self.commit_failures = self.counter(
            "commit_failures",
            "offset commits the broker refused, by error (retried with the next commit)",
            ["error"],
        )
        self.skipped_by_faust = self.counter(
            "skipped_by_faust",
            "raw offsets the consumer skipped (never acked unprocessed; read again): should stay 0",
        )
        self.holes = self.counter(
            "holes",
            "skipped raw offsets by outcome: healed (read again), no_records (nothing there to "
            "read: committed past), left (uncommitted until a restart)",
            ["outcome"],
        )
        for outcome in ("healed", "no_records", "left"):
            # At 0 from the start: increase() sees the first one (alerts.yml).
            self.holes.labels(outcome=outcome)
        self.offsets_without_records = self.counter(
            "offsets_without_records",
            "raw offsets found empty when read again (transaction markers, or records deleted "
            "by retention before they were processed), committed past",
        )

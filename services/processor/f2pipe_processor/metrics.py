"""The processor's Prometheus metrics (Faust's own sensor adds its consumer/producer ones).

Counted per batch, not per message: a counter increment costs about as much as decoding a
datapoint, so the hot loop collects numbers in plain ints and adds them once.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PREFIX = "f2pipe_processor_"

RECORDS = Counter(PREFIX + "records", "raw-iot-data records processed")
MESSAGES = Counter(PREFIX + "messages", "MQTT messages processed (decoded or dead-lettered)")
READINGS = Counter(PREFIX + "readings", "readings decoded")
EVENTS = Counter(PREFIX + "events", "events emitted (scans, state changes)")
DEAD_LETTERS = Counter(PREFIX + "dead_letters", "messages dead-lettered", ["reason"])

CACHE_LOOKUPS = Counter(
    PREFIX + "cache_lookups",
    "registry lookups by cache layer and outcome (memory, redis, postgres)",
    ["layer", "result"],
)
LOOKUP_SECONDS = Histogram(
    PREFIX + "lookup_seconds",
    "one batched lookup of a batch's cache misses, by layer",
    ["layer"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)
BATCH_SECONDS = Histogram(
    PREFIX + "batch_seconds",
    "processing one raw record: parse, lookup, decode, hand to the producer",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0),
)
STAGE_SECONDS = Counter(
    PREFIX + "stage_seconds",
    "time spent per stage (parse, lookup, decode, produce): the cost split",
    ["stage"],
)

REDIS_UP = Gauge(PREFIX + "redis_up", "1 while Redis answers, 0 while lookups bypass it")
REDIS_FALLBACKS = Counter(
    PREFIX + "redis_fallbacks", "lookups sent to PostgreSQL because Redis was unavailable"
)
POSTGRES_UP = Gauge(PREFIX + "postgres_up", "1 while the registry database answers")
POSTGRES_RETRIES = Counter(
    PREFIX + "postgres_retries", "failed registry queries, retried (offsets wait meanwhile)"
)
INVALIDATIONS = Counter(
    PREFIX + "invalidations", "registry_changed notifications applied", ["table"]
)
CACHE_FLUSHES = Counter(
    PREFIX + "cache_flushes", "whole-cache flushes (listener reconnect, TRUNCATE, big changes)"
)
REFUSED = Counter(
    PREFIX + "records_refused", "output records Kafka refused as such, replaced by a dead letter"
)
PRODUCE_RETRIES = Counter(PREFIX + "produce_retries", "output records sent again after a failure")
INFLIGHT = Gauge(PREFIX + "inflight_records", "raw records whose output awaits Kafka's ack")
SKIPPED_BY_FAUST = Counter(
    PREFIX + "skipped_by_faust",
    "raw records Faust skipped (kept uncommitted; a restart processes them): should stay 0",
)

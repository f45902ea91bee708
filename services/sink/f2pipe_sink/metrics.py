"""Prometheus metrics of the sink, in a registry of its own (two sinks in one test process
never share counters). `/metrics` serves them with the process and Python collectors."""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from f2pipe_shared.deadletters import DeadLetter, Reason
from f2pipe_sink.batch import Batch
from f2pipe_sink.writer import WriteResult

log = logging.getLogger("f2pipe_sink")

TABLES = ("readings", "events")

# End to end: from the device's timestamp to the sink's commit. Wide, because it includes the
# bridge's and the processor's batching, and replays after an outage.
LATENCY_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5,
    10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
WRITE_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_ROWS_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000)


class BulkHistogram(Collector):
    """A histogram fed a whole batch at once.

    `Histogram.observe` per reading would cost a lock and a Python call per row; a batch of
    timestamps is sorted once and each bucket's count found by bisection, so recording 5,000
    latencies takes well under a millisecond.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(buckets)
        self._counts = [0] * (len(self.bounds) + 1)  # cumulative; the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_ages(self, now_us: int, timestamps_us: Iterable[int]) -> None:
        """Record `now - t` in seconds for every timestamp t (microseconds)."""
        ordered = sorted(timestamps_us)
        if not ordered:
            return
        n = len(ordered)
        # age <= bound  <=>  t >= now - bound
        counts = [n - bisect.bisect_left(ordered, now_us - round(b * 1e6)) for b in self.bounds]
        total = (n * now_us - sum(ordered)) / 1e6
        with self._lock:
            for i, c in enumerate(counts):
                self._counts[i] += c
            self._counts[-1] += n
            self._sum += total

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts = list(self._counts)
            total = self._sum
        buckets = [(_le(b), float(c)) for b, c in zip(self.bounds, counts, strict=False)]
        buckets.append(("+Inf", float(counts[-1])))
        yield HistogramMetricFamily(self.name, self.documentation, buckets, total)


def _le(bound: float) -> str:
    return repr(float(bound))


class SinkMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.records = Counter(
            "f2pipe_sink_records", "processed-iot-data records consumed", registry=r
        )
        self.rows_written = Counter(
            "f2pipe_sink_rows_written",
            "Rows inserted, by table (a key already stored is not inserted again)",
            ["table"],
            registry=r,
        )
        self.rows_duplicate = Counter(
            "f2pipe_sink_rows_duplicate",
            "Rows skipped because their key was already stored (replays, duplicated messages)",
            ["table"],
            registry=r,
        )
        self.batches = Counter(
            "f2pipe_sink_batches", "Batches written and committed", ["path"], registry=r
        )
        self.batch_rows = Histogram(
            "f2pipe_sink_batch_rows", "Rows per written batch", buckets=BATCH_ROWS_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.write_seconds = Histogram(
            "f2pipe_sink_write_seconds",
            "Database time per batch, all its transactions",
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.transactions = Counter(
            "f2pipe_sink_transactions",
            "Database transactions committed (more than batches while bisecting refused rows)",
            registry=r,
        )
        self.retries = Counter(
            "f2pipe_sink_write_retries",
            "Batch writes retried after the database or the dead-letter topic failed",
            registry=r,
        )
        self.outages = Counter(
            "f2pipe_sink_db_outages",
            "Times the database became unreachable (consumption paused until it returned)",
            registry=r,
        )
        self.db_up = Gauge(
            "f2pipe_sink_db_up", "1 when the last database operation succeeded", registry=r
        )
        self.paused = Gauge(
            "f2pipe_sink_paused", "1 while consumption is paused (holding a batch)", registry=r
        )
        self.held_rows = Gauge(
            "f2pipe_sink_held_rows", "Rows consumed and not yet committed", registry=r
        )
        self.dead_letters = Counter(
            "f2pipe_sink_dead_letters", "Records dead-lettered, by reason", ["reason"], registry=r
        )
        self.commit_failures = Counter(
            "f2pipe_sink_offset_commit_failures",
            "Offset commits Kafka refused (rows were written; the next owner replays them)",
            registry=r,
        )
        self.assigned = Gauge(
            "f2pipe_sink_assigned_partitions", "Partitions assigned to this sink", registry=r
        )
        self.consumed_offset = Gauge(
            "f2pipe_sink_consumed_offset",
            "Next offset to consume, per partition",
            ["topic", "partition"],
            registry=r,
        )
        self.committed_offset = Gauge(
            "f2pipe_sink_committed_offset",
            "Offset last committed, per partition",
            ["topic", "partition"],
            registry=r,
        )
        self.lag = Gauge(
            "f2pipe_sink_consumer_lag",
            "Records consumed but not yet committed, per partition (consumed - committed "
            "offset; not from the broker's high watermark, which Tansu reports wrong)",
            ["topic", "partition"],
            registry=r,
        )
        self.end_to_end = BulkHistogram(
            "f2pipe_sink_end_to_end_latency_seconds",
            "Commit time minus the device timestamp, per reading",
            LATENCY_BUCKETS,
        )
        r.register(self.end_to_end)
        for table in TABLES:
            self.rows_written.labels(table)
            self.rows_duplicate.labels(table)
        for path in ("direct", "merge"):
            self.batches.labels(path)
        for reason in (Reason.bad_batch, Reason.invalid_record, Reason.constraint_violation):
            self.dead_letters.labels(str(reason))

    def batch_done(
        self,
        batch: Batch,
        result: WriteResult | None,
        letters: Sequence[DeadLetter],
        elapsed: float,
    ) -> None:
        """Count a committed batch: its rows, dead letters, timing and readings' latency."""
        for letter in letters:
            self.dead_letters.labels(str(letter.reason)).inc()
        if result is None:  # nothing to write: only dead letters
            return
        path = "merge" if result.merged else "direct"
        n_readings = sum(r.n_readings for r in batch.records)
        n_events = batch.rows - n_readings
        self.rows_written.labels("readings").inc(result.readings)
        self.rows_written.labels("events").inc(result.events)
        self.rows_duplicate.labels("readings").inc(max(0, n_readings - result.readings))
        self.rows_duplicate.labels("events").inc(max(0, n_events - result.events))
        self.batches.labels(path).inc()
        self.transactions.inc(result.transactions)
        self.batch_rows.observe(batch.rows)
        self.write_seconds.observe(elapsed)
        self.end_to_end.observe_ages(round(result.committed_at * 1e6), batch.timestamps())
        log.debug(
            "batch written",
            extra={
                "records": len(batch.records),
                "rows": batch.rows,
                "inserted": result.readings + result.events,
                "path": path,
                "seconds": round(elapsed, 4),
            },
        )

    def set_offsets(self, topic: str, partition: int, consumed: int, committed: int) -> None:
        labels = (topic, str(partition))
        self.consumed_offset.labels(*labels).set(consumed)
        self.committed_offset.labels(*labels).set(committed)
        self.lag.labels(*labels).set(max(0, consumed - committed))

    def forget_partition(self, topic: str, partition: int) -> None:
        labels = (topic, str(partition))
        for gauge in (self.consumed_offset, self.committed_offset, self.lag):
            with contextlib.suppress(KeyError):  # never set for this partition
                gauge.remove(*labels)

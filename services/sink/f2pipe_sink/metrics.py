"""Prometheus metrics of the sink, in a registry of its own (two sinks in one test process
never share counters). `/metrics` serves them with the process and Python collectors."""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from f2pipe_shared.deadletters import DeadLetter, Reason
from f2pipe_shared.metrics import ServiceMetrics
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


class SinkMetrics(ServiceMetrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__("f2pipe_sink_", registry)
        self.records = self.counter("records", "processed-iot-data records consumed")
        self.rows_written = self.counter(
            "rows_written",
            "Rows inserted, by table (a key already stored is not inserted again)",
            ["table"],
        )
        self.rows_duplicate = self.counter(
            "rows_duplicate",
            "Rows skipped because their key was already stored (replays, duplicated messages)",
            ["table"],
        )
        self.batches = self.counter("batches", "Batches written and committed", ["path"])
        self.batch_rows = self.histogram("batch_rows", "Rows per written batch", BATCH_ROWS_BUCKETS)
        self.write_seconds = self.histogram(
            "write_seconds", "Database time per batch, all its transactions", WRITE_BUCKETS
        )
        self.transactions = self.counter(
            "transactions",
            "Database transactions committed (more than batches while bisecting refused rows)",
        )
        self.retries = self.counter(
            "write_retries",
            "Batch writes retried after the database or the dead-letter topic failed",
        )
        self.outages = self.counter(
            "db_outages",
            "Times the database became unreachable (consumption paused until it returned)",
        )
        self.db_up = self.gauge("db_up", "1 when the last database operation succeeded")
        self.paused = self.gauge("paused", "1 while consumption is paused (holding a batch)")
        self.held_rows = self.gauge("held_rows", "Rows consumed and not yet committed")
        self.dead_letters = self.counter(
            "dead_letters", "Records dead-lettered, by reason", ["reason"]
        )
        self.commit_failures = self.counter(
            "offset_commit_failures",
            "Offset commits Kafka refused (rows were written; the offsets are asked again)",
        )
        self.assigned = self.gauge("assigned_partitions", "Partitions assigned to this sink")
        partition = ["topic", "partition"]
        self.consumed_offset = self.gauge(
            "consumed_offset", "Next offset to consume, per partition", partition
        )
        self.committed_offset = self.gauge(
            "committed_offset", "Offset last committed, per partition", partition
        )
        self.lag = self.gauge(
            "consumer_lag",
            "Records consumed but not yet committed, per partition (consumed - committed "
            "offset; not from the broker's high watermark, which Tansu reports wrong)",
            partition,
        )
        self.end_to_end = BulkHistogram(
            "f2pipe_sink_end_to_end_latency_seconds",
            "Commit time minus the device timestamp, per reading",
            LATENCY_BUCKETS,
        )
        self.registry.register(self.end_to_end)
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

"""The sink's database write: rows/s by its writer next to a bare binary COPY of the same rows.

Starts its own PostgreSQL (in a temporary directory, `durable=False`: fsync,
synchronous_commit and full_page_writes off, as the test servers run) and, for the last
measurement, its own Tansu broker. `telemetry.readings` starts with 1,000,000 rows of history
(so its indexes have some depth) and grows as a time series does: every run writes 100,000
new readings, newer than all before, in batches of BATCH_SIZE 5,000 (four records of 1,250
readings, as the processor sends them) unless the name says otherwise, one transaction per
batch. The methods run interleaved, run after run, so a disturbance on the machine hits all
of them; the ratios are taken run by run.

Compared:
- bare binary COPY: the rows the sink encodes, COPYed straight into the table; the floor,
  not idempotent;
- sink writer: `Writer.write`, the path every batch takes in steady state (direct COPY, which
  fails as a whole if any key is already stored), at BATCH_SIZE 500, 1,000, 5,000, 20,000;
- sink writer, replay: the same batches again, every key already stored (the merge path);
- COPY → temp table → INSERT … ON CONFLICT: the merge path on new rows;
- INSERT … SELECT FROM unnest(arrays) ON CONFLICT, executemany INSERT … ON CONFLICT, and
  psycopg's own binary COPY of Python rows (`write_row` with datetime objects);
- sink end to end: `f2pipe sink`'s loop in this process draining a Kafka backlog (decode,
  check, encode, write, commit) from the moment its partitions are assigned.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import psycopg
from psycopg.rows import TupleRow

from f2pipe.migrate import apply_migrations
from f2pipe_devtools.bench.report import Measurement, Report, rate
from f2pipe_devtools.servers import KafkaBroker, PostgresServer
from f2pipe_devtools.servers.postgres import postgres_bin_dir, timescaledb_installed
from f2pipe_shared.records import ProcessedBatch, Reading, encode_processed_batch
from f2pipe_sink.batch import Record, take
from f2pipe_sink.metrics import SinkMetrics
from f2pipe_sink.rows import copy_payload
from f2pipe_sink.writer import Writer

BATCH_ROWS = 5_000  # SinkSettings.batch_size's default
RECORD_ROWS = 1_250
PREFILL_ROWS = 1_000_000
T0 = 1_795_000_000_000_000
COMPRESSED_T0 = 1_767_247_200_000_000  # 2026-01-01 06:00 UTC: the prefill's day, after it
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Connection = psycopg.Connection[TupleRow]


class Batch(NamedTuple):
    records: list[Record]  # as the sink holds them: rows encoded for COPY
    readings: list[Reading]  # the same rows as Python tuples, for the methods that want them


Method = Callable[[Connection, list[Batch]], None]
MERGE = "COPY -> temp table -> INSERT ON CONFLICT"


def sample_readings(
    n_records: int, start_us: int, record_rows: int = RECORD_ROWS
) -> list[list[Reading]]:
    """Records of `record_rows` readings: devices x 5 datapoints per timestamp, 1 s apart."""
    records = []
    for r in range(n_records):
        ts = start_us + r * 1_000_000
        records.append(
            [
                Reading(ts, 10_000 + i // 5, 1 + i % 5, 20.0 + (r * record_rows + i) % 977 / 10)
                for i in range(record_rows)
            ]
        )
    return records


def workload(n_rows: int, start_us: int, batch_rows: int = BATCH_ROWS) -> list[Batch]:
    """`n_rows` readings in batches of `batch_rows`, made of records as the processor sends."""
    record_rows = min(RECORD_ROWS, batch_rows)
    per_batch = batch_rows // record_rows
    readings = sample_readings(n_rows // record_rows, start_us, record_rows)
    records = [
        take("processed", 0, offset, encode_processed_batch(ProcessedBatch(0, offset, rs, [])))[0]
        for offset, rs in enumerate(readings)
    ]
    return [
        Batch(records[i : i + per_batch], [r for rs in readings[i : i + per_batch] for r in rs])
        for i in range(0, len(records), per_batch)
    ]


# -- the methods ------------------------------------------------------------------------------


def bare_copy(conn: Connection, batches: list[Batch]) -> None:
    for batch in batches:
        with (
            conn.cursor() as cur,
            cur.copy("COPY telemetry.readings FROM STDIN (FORMAT BINARY)") as cp,
        ):
            cp.write(copy_payload([r.readings for r in batch.records]))
        conn.commit()


def writer_method(conninfo: str, *, force_merge: bool = False) -> Method:
    writer = Writer(conninfo)

    def write(_conn: Connection, batches: list[Batch]) -> None:
        writer.direct = not force_merge  # a run starts in steady state, whatever came before
        for batch in batches:
            if force_merge:
                writer.direct = False
            writer.write(batch.records)

    return write


def unnest(conn: Connection, batches: list[Batch]) -> None:
    sql = """INSERT INTO telemetry.readings ("timestamp", device_id, datapoint_id, value)
        SELECT 'epoch'::timestamptz + t * interval '1 microsecond', d, p, v
        FROM unnest(%s::bigint[], %s::bigint[], %s::integer[], %s::float8[]) AS u(t, d, p, v)
        ON CONFLICT ("timestamp", device_id, datapoint_id) DO NOTHING"""
    for batch in batches:
        columns = [[r[i] for r in batch.readings] for i in range(4)]
        conn.execute(sql, columns, binary=True)
        conn.commit()


def executemany(conn: Connection, batches: list[Batch]) -> None:
    sql = """INSERT INTO telemetry.readings ("timestamp", device_id, datapoint_id, value)
        VALUES (%s, %s, %s, %s) ON CONFLICT ("timestamp", device_id, datapoint_id) DO NOTHING"""
    for batch in batches:
        rows = [(EPOCH + timedelta(microseconds=t), d, p, v) for t, d, p, v in batch.readings]
        with conn.cursor() as cur:
            cur.executemany(sql, rows)
        conn.commit()


def write_row(conn: Connection, batches: list[Batch]) -> None:
    for batch in batches:
        with (
            conn.cursor() as cur,
            cur.copy("COPY telemetry.readings FROM STDIN (FORMAT BINARY)") as cp,
        ):
            cp.set_types(["timestamptz", "int8", "int4", "float8"])
            for t, d, p, v in batch.readings:
                cp.write_row((EPOCH + timedelta(microseconds=t), d, p, v))
        conn.commit()


# -- running them -----------------------------------------------------------------------------


def _timed(conn: Connection, method: Method, batches: list[Batch]) -> float:
    started = time.perf_counter()
    method(conn, batches)
    return sum(len(b.readings) for b in batches) / (time.perf_counter() - started)


def _prefill(conninfo: str) -> None:
    """History older than anything measured, so indexes have a realistic depth."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO telemetry.readings
               SELECT timestamptz '2026-01-01' + (i / 1250) * interval '1 second',
                      10000 + (i %% 1250) / 5, 1 + i %% 5, i %% 977 / 10.0
               FROM generate_series(0, %s - 1) AS i""",
            (PREFILL_ROWS,),
        )
        conn.execute("VACUUM ANALYZE telemetry.readings")


def run(report: Report, repeats: int, min_seconds: float) -> None:
    n_rows = 100_000 if min_seconds >= 0.3 else 20_000
    one = workload(RECORD_ROWS, T0)[0]
    encoded = encode_processed_batch(ProcessedBatch(0, 0, one.readings, []))
    report.add(
        Measurement(
            "take(): decode, check, encode for COPY",
            "readings/s",
            rate(lambda: take("processed", 0, 0, encoded), RECORD_ROWS, repeats, min_seconds),
            f"{RECORD_ROWS:,}-reading record, no database",
        )
    )
    # Production's engine and the plain one, in the same run: their ratios compare.
    engines = ["postgres"]
    if timescaledb_installed(postgres_bin_dir()):
        engines.insert(0, "timescaledb")
    with tempfile.TemporaryDirectory(prefix="f2pipe-bench-sink-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o755)  # PostgreSQL runs as `postgres` when we are root
        for engine in engines:
            tsdb = engine == "timescaledb"
            with PostgresServer(
                directory / f"postgres-{engine}", durable=False, timescaledb=tsdb
            ) as server:
                conninfo = server.create_database("bench")
                apply_migrations(conninfo)
                _prefill(conninfo)
                _measure_writes(report, conninfo, n_rows, repeats, f" [{engine}]")
                if tsdb:
                    _measure_compressed(report, conninfo, n_rows, max(1, min(repeats, 3)))
                if engine == engines[0]:
                    e2e_repeats = max(1, min(repeats, 3))
                    _measure_end_to_end(report, directory, conninfo, n_rows, e2e_repeats)


def _measure_compressed(report: Report, conninfo: str, n_rows: int, repeats: int) -> None:
    """New rows, then the same rows again, into a chunk TimescaleDB has compressed (the
    prefill's day): the direct COPY path, and the replay, which meets the stored keys in the
    compressed data (23505 on COPY) and goes the merge path, landing nothing twice."""
    step = (n_rows // RECORD_ROWS + 1) * 1_000_000  # each run a little later, same day
    starts = itertools.count(COMPRESSED_T0, step)
    writer = writer_method(conninfo)
    direct: list[float] = []
    replay: list[float] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        (before,) = conn.execute("SELECT count(*) FROM telemetry.readings").fetchone() or (0,)
        for _ in range(repeats):
            _compress_prefill_day(conn)
            batches = workload(n_rows, next(starts))
            direct.append(_timed(conn, writer, batches))
            _compress_prefill_day(conn)  # the new rows too: the replay meets compressed keys
            replay.append(_timed(conn, writer, batches))
        (total,) = conn.execute("SELECT count(*) FROM telemetry.readings").fetchone() or (0,)
        (compressed,) = conn.execute(
            "SELECT count(*) FROM timescaledb_information.chunks"
            " WHERE hypertable_name = 'readings' AND is_compressed"
        ).fetchone() or (0,)
    if total != before + repeats * n_rows:  # a benchmark of a writer that loses or doubles
        raise RuntimeError(f"compressed-chunk runs: {total - before:,} rows stored, "
                           f"{repeats * n_rows:,} written once each")  # fmt: skip
    shape = f"{n_rows // BATCH_ROWS} x {BATCH_ROWS:,}-row batches into a compressed chunk"
    report.add(Measurement("sink writer, compressed chunk [timescaledb]", "rows/s", direct,
                           f"{shape}; direct COPY path, new keys"))  # fmt: skip
    report.add(Measurement("sink writer, replay into compressed chunk [timescaledb]", "rows/s",
                           replay, f"{shape}; every key stored and compressed: merge path, "
                           "0 inserted"))  # fmt: skip
    print(f"compressed chunks: {compressed}; rows after the compressed-chunk runs: {total:,}")


def _compress_prefill_day(conn: Connection) -> None:
    conn.execute(
        "SELECT compress_chunk(c, if_not_compressed => false)"
        " FROM show_chunks('telemetry.readings', older_than => timestamptz '2026-01-02') AS c"
    )


def _measure_writes(
    report: Report, conninfo: str, n_rows: int, repeats: int, engine: str = ""
) -> None:
    writer = writer_method(conninfo)
    merge = writer_method(conninfo, force_merge=True)
    # name: (method, batch rows, note)
    methods: dict[str, tuple[Method, int, str]] = {
        "bare binary COPY": (bare_copy, BATCH_ROWS, "the sink's encoded rows; not idempotent"),
        "sink writer": (writer, BATCH_ROWS, "direct COPY path (no key stored yet)"),
        MERGE: (merge, BATCH_ROWS, "the writer's merge path on new rows"),
        "INSERT SELECT unnest(arrays) ON CONFLICT": (unnest, BATCH_ROWS, "binary arrays"),
        "executemany INSERT ON CONFLICT": (executemany, BATCH_ROWS, "psycopg pipeline mode"),
        "psycopg write_row binary COPY": (write_row, BATCH_ROWS, "datetimes; not idempotent"),
        **{
            f"sink writer, BATCH_SIZE {size:,}": (writer, size, "direct COPY path")
            for size in (500, 1_000, 20_000)
        },
    }
    # Every run writes keys of its own, newer than all before: the table grows as a time
    # series does, and no run meets another's rows (except the replay, on purpose). One
    # second per row is more than any run's span.
    starts = itertools.count(T0, n_rows * 1_000_000)
    runs: dict[str, list[float]] = {name: [] for name in methods}
    replays: list[float] = []
    written: list[Batch] = []
    with psycopg.connect(conninfo) as conn:
        for method, size, _ in methods.values():  # warm-up: connections, plans, caches
            _timed(conn, method, workload(size, next(starts), size))
        for _ in range(repeats):
            for name, (method, size, _) in methods.items():
                batches = workload(n_rows, next(starts), size)
                runs[name].append(_timed(conn, method, batches))
                if name == "sink writer":
                    written = batches
            replays.append(_timed(conn, writer, written))
        (total,) = conn.execute("SELECT count(*) FROM telemetry.readings").fetchone() or (0,)
    for name, (_, size, note) in methods.items():
        shape = f"{n_rows // size} x {size:,}-row batches, a transaction each"
        report.add(Measurement(name + engine, "rows/s", runs[name], f"{shape}; {note}"))
    report.add(
        Measurement(
            "sink writer, replay" + engine,
            "rows/s",
            replays,
            f"{n_rows // BATCH_ROWS} x {BATCH_ROWS:,}-row batches; every key stored (0 inserted)",
        )
    )
    bare = runs["bare binary COPY"]
    for name, label in (
        ("sink writer", "sink writer / bare COPY"),
        (MERGE, "temp table + ON CONFLICT / bare COPY"),
    ):
        ratios = [m / b for m, b in zip(runs[name], bare, strict=True)]
        report.add(Measurement(label + engine, "ratio", ratios, "paired run by run"))
    print(
        f"{engine.strip() or 'table'}: {PREFILL_ROWS:,} rows before, {total:,} after; medians: "
        + ", ".join(f"{name} {statistics.median(v):,.0f}" for name, v in runs.items())
    )


def _measure_end_to_end(
    report: Report, directory: Path, conninfo: str, n_rows: int, repeats: int
) -> None:
    from dataclasses import replace

    from confluent_kafka import Producer

    from f2pipe_shared.kafka import ensure_topics
    from f2pipe_shared.settings import KafkaSettings
    from f2pipe_sink.main import build
    from f2pipe_sink.settings import Settings, SinkSettings

    n_records = n_rows // RECORD_ROWS
    results = []
    with KafkaBroker(directory / "kafka") as broker:
        for repeat in range(repeats):
            start_us = T0 - (repeat + 1) * n_records * 1_000_000  # keys no other run wrote
            values = [
                encode_processed_batch(ProcessedBatch(0, i, rs, []))
                for i, rs in enumerate(sample_readings(n_records, start_us))
            ]
            suffix = uuid.uuid4().hex[:8]
            kafka = KafkaSettings(
                kafka_bootstrap_servers=broker.bootstrap_servers,
                kafka_processed_topic=f"processed-{suffix}",
                kafka_deadletter_topic=f"dlq-{suffix}",
                kafka_processed_partitions=3,
                kafka_max_poll_interval_ms=5_000,
                kafka_session_timeout_ms=3_000,
            )
            ensure_topics(kafka, {kafka.kafka_processed_topic: 3, kafka.kafka_deadletter_topic: 3})
            producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
            for i, value in enumerate(values):
                producer.produce(kafka.kafka_processed_topic, value, partition=i % 3)
            producer.flush(30)
            settings = replace(
                Settings.load(), kafka=kafka, sink=SinkSettings(sink_group_id=f"bench-{suffix}")
            )
            sink = build(settings, writer=Writer(conninfo))
            metrics = sink.metrics
            thread = threading.Thread(target=sink.run, daemon=True)
            thread.start()
            give_up = time.monotonic() + 60
            while not sink.assignment and time.monotonic() < give_up:
                time.sleep(0.002)
            started = time.perf_counter()
            while _written(metrics) < n_rows and time.monotonic() < give_up:
                time.sleep(0.002)
            if _written(metrics) < n_rows:
                raise RuntimeError("the sink did not write the backlog within 60 s")
            results.append(n_rows / (time.perf_counter() - started))
            sink.stop()
            thread.join(30)
    report.add(
        Measurement(
            "sink end to end (Kafka backlog -> PostgreSQL)",
            "rows/s",
            results,
            f"{n_records} records of {RECORD_ROWS:,}, 3 partitions, BATCH_SIZE {BATCH_ROWS:,}, "
            "from partition assignment to the last commit; Tansu broker",
        )
    )


def _written(metrics: SinkMetrics) -> float:
    value = metrics.registry.get_sample_value(
        "f2pipe_sink_rows_written_total", {"table": "readings"}
    )
    return value or 0.0

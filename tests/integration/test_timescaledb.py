"""The schema on TimescaleDB: hypertables, compression, the policies' effects, the sink's writes
into compressed chunks, and the report of the background jobs.

Each job is run with CALL run_job(id) and judged by what it did (chunks compressed, chunks
dropped, buckets materialised), never by the scheduler's record: TimescaleDB 2.28.3 on
PostgreSQL 15.20 records every background run as failed after it did its work
(docs/operations.md). The scheduler is paused in these databases so that it does not run the
same jobs under the tests' feet.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import pytest
from psycopg import errors

import f2pipe.migrate as migrate
from f2pipe.cli import main as f2pipe_main
from f2pipe.migrate import JobStatus, apply_migrations, apply_settings, job_report
from f2pipe_devtools.servers import PostgresServer
from f2pipe_shared.records import Event, ProcessedBatch, Reading, encode_processed_batch
from f2pipe_sink.batch import Record, take
from f2pipe_sink.writer import Writer

pytestmark = [pytest.mark.integration, pytest.mark.database]
timescaledb = pytest.mark.engine("timescaledb")

Conn = psycopg.Connection[Any]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
BACKFILL_JOB = "f2pipe backfill: telemetry.readings_hourly"


def scalar(conn: Conn, query: str, *params: Any) -> Any:
    row = conn.execute(query, params or None).fetchone()
    assert row is not None
    return row[0]


def this_hour() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def jobs(conn: Conn) -> dict[int, tuple[str, str | None, dict[str, Any], timedelta]]:
    """Our policy jobs: id -> (procedure, relation, config, schedule interval)."""
    rows = conn.execute(
        "SELECT job_id, proc_name, hypertable_name, config, schedule_interval"
        " FROM timescaledb_information.jobs WHERE job_id >= 1000 ORDER BY job_id"
    ).fetchall()
    return {row[0]: (row[1], row[2], row[3], row[4]) for row in rows}


def job_of(conn: Conn, proc: str, relation: str) -> int:
    """The one policy job `proc` (policy_compression, ...) has on `relation` (its table name)."""
    found = [
        job_id for job_id, (name, on, _, _) in jobs(conn).items() if name == proc and on == relation
    ]
    assert len(found) == 1, (proc, relation, jobs(conn))
    return found[0]


def refresh_jobs(conn: Conn) -> tuple[int, int]:
    """(the recent-window refresh job, the backfill job) of readings_hourly."""
    rows = conn.execute(
        "SELECT job_id, application_name LIKE %s FROM timescaledb_information.jobs"
        " WHERE proc_name = 'policy_refresh_continuous_aggregate' ORDER BY job_id",
        (BACKFILL_JOB + "%",),
    ).fetchall()
    recent = [job for job, backfill in rows if not backfill]
    backfill = [job for job, is_backfill in rows if is_backfill]
    assert len(recent) == 1, rows
    assert len(backfill) == 1, rows
    return recent[0], backfill[0]


def run_job(conn: Conn, job_id: int) -> None:
    conn.execute(f"CALL run_job({int(job_id)})")


def pause_scheduler(conn: Conn) -> None:
    """Unschedule our jobs: run_job still runs them, the scheduler no longer does."""
    conn.execute(
        "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs"
        " WHERE job_id >= 1000"
    )


def hourly_buckets(conn: Conn, **where: int) -> int:
    condition = " AND ".join(f"{column} = {int(value)}" for column, value in where.items())
    query = "SELECT count(*) FROM telemetry.readings_hourly"
    return int(scalar(conn, query + (f" WHERE {condition}" if condition else "")))


def hourly_buckets_of(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        return hourly_buckets(conn)


def materialised_rows(conn: Conn) -> int:
    """Rows in the aggregate's own hypertable: what refreshes stored, not what is computed."""
    table = scalar(
        conn,
        "SELECT format('%I.%I', materialization_hypertable_schema,"
        " materialization_hypertable_name) FROM timescaledb_information.continuous_aggregates"
        " WHERE view_name = 'readings_hourly'",
    )
    return int(scalar(conn, f"SELECT count(*) FROM {table}"))


def insert_hourly_readings(conn: Conn, days: int, end: datetime | None = None) -> int:
    """One reading per hour (device 1, datapoint 1) over the `days` days before `end` (this
    hour): days * 24 buckets."""
    end = end or this_hour()
    conn.execute(
        "INSERT INTO telemetry.readings"
        " SELECT ts, %s, %s, extract(epoch FROM ts) FROM generate_series("
        "   %s::timestamptz - make_interval(days => %s), %s::timestamptz - interval '1 second',"
        "   interval '1 hour') AS ts",
        (1, 1, end, days, end),
    )
    return days * 24


@pytest.fixture
def tsdb(migrated: str) -> Iterator[Conn]:
    """A migrated TimescaleDB database, scheduler paused; an autocommit connection to it."""
    with psycopg.connect(migrated, autocommit=True) as conn:
        pause_scheduler(conn)
        yield conn


# --- hypertables, chunking, compression settings ----------------------------------------------


@timescaledb
def test_readings_and_events_are_hypertables_with_their_chunk_intervals(tsdb: Conn) -> None:
    dimensions = {
        table: (column, interval)
        for table, column, interval in tsdb.execute(
            "SELECT hypertable_name, column_name, time_interval"
            " FROM timescaledb_information.dimensions WHERE hypertable_schema = 'telemetry'"
        )
    }
    assert dimensions == {
        "readings": ("timestamp", timedelta(days=1)),
        "events": ("timestamp", timedelta(days=7)),
    }
    # Three days of readings: three one-day chunks, each [midnight, midnight) UTC.
    start = this_hour().replace(hour=0) - 3 * DAY
    tsdb.execute(
        "INSERT INTO telemetry.readings SELECT ts, 1, 1, 0"
        " FROM generate_series(%s::timestamptz, %s::timestamptz, interval '6 hours') AS ts",
        (start, start + 3 * DAY - HOUR),
    )
    chunks = tsdb.execute(
        "SELECT range_start, range_end FROM timescaledb_information.chunks"
        " WHERE hypertable_name = 'readings' ORDER BY range_start"
    ).fetchall()
    assert chunks == [(start + n * DAY, start + (n + 1) * DAY) for n in range(3)]
    # The primary key leads with the time column: no default time index next to it.
    indexes = {
        row[0]
        for row in tsdb.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'telemetry'"
            " AND tablename = 'readings'"
        )
    }
    assert indexes == {"readings_pkey", "readings_device_time"}


@timescaledb
def test_chunk_interval_setting_reaches_the_hypertable(pg_conninfo: str) -> None:
    apply_migrations(pg_conninfo, settings={"chunk_interval": "12 hours"})
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        interval = scalar(
            conn,
            "SELECT time_interval FROM timescaledb_information.dimensions"
            " WHERE hypertable_name = 'readings'",
        )
    assert interval == timedelta(hours=12)


@timescaledb
def test_compression_settings_segment_by_series_and_order_by_time(tsdb: Conn) -> None:
    settings = tsdb.execute(
        "SELECT hypertable::text, segmentby, orderby"
        " FROM timescaledb_information.hypertable_compression_settings"
        " WHERE hypertable::text LIKE 'telemetry.%' ORDER BY 1"
    ).fetchall()
    assert settings == [
        ("telemetry.events", "device_id,kind", '"timestamp" DESC'),
        ("telemetry.readings", "device_id,datapoint_id", '"timestamp" DESC'),
    ]
    assert (
        scalar(
            tsdb,
            "SELECT materialized_only FROM timescaledb_information.continuous_aggregates"
            " WHERE view_name = 'readings_hourly'",
        )
        is False
    )


# --- the policies' jobs, run by hand, judged by their effect -----------------------------------


@timescaledb
def test_compression_policy_compresses_chunks_older_than_compress_after(tsdb: Conn) -> None:
    insert_hourly_readings(tsdb, days=10)
    tsdb.execute(
        "INSERT INTO telemetry.events SELECT ts, 1, 'state', '{}'"
        " FROM generate_series(now() - interval '30 days', now(), interval '1 day') AS ts"
    )
    before = tsdb.execute("SELECT count(*), sum(value) FROM telemetry.readings").fetchone()

    run_job(tsdb, job_of(tsdb, "policy_compression", "readings"))
    run_job(tsdb, job_of(tsdb, "policy_compression", "events"))

    chunks = tsdb.execute(
        "SELECT hypertable_name, range_end, is_compressed FROM timescaledb_information.chunks"
        " WHERE hypertable_schema = 'telemetry'"
    ).fetchall()
    horizon = datetime.now(UTC) - timedelta(days=7)
    for table in ("readings", "events"):
        compressed = [end for name, end, done in chunks if name == table and done]
        plain = [end for name, end, done in chunks if name == table and not done]
        assert compressed, table
        assert plain, table
        assert all(end <= horizon for end in compressed), table
        assert all(end > horizon - timedelta(hours=1) for end in plain), table
    # Compressed rows read back the same.
    assert tsdb.execute("SELECT count(*), sum(value) FROM telemetry.readings").fetchone() == before


@timescaledb
def test_retention_policies_drop_old_chunks_and_old_hourly_rows(tsdb: Conn) -> None:
    for days_ago in (800, 400, 10):
        tsdb.execute(
            "INSERT INTO telemetry.readings VALUES (now() - make_interval(days => %s), 1, 1, %s)",
            (days_ago, days_ago),
        )
        tsdb.execute(
            "INSERT INTO telemetry.events VALUES (now() - make_interval(days => %s), 1, 'scan')",
            (days_ago,),
        )
    # Hourly rows for all three, while their raw rows are there.
    tsdb.execute("CALL refresh_continuous_aggregate('telemetry.readings_hourly', NULL, now())")
    assert materialised_rows(tsdb) == 3

    run_job(tsdb, job_of(tsdb, "policy_retention", "readings"))
    run_job(tsdb, job_of(tsdb, "policy_retention", "events"))
    assert [row[0] for row in tsdb.execute("SELECT value FROM telemetry.readings")] == [10]
    assert scalar(tsdb, "SELECT count(*) FROM telemetry.events") == 1
    # The hourly rows outlive the raw ones: 365 days of readings, 730 of hourly aggregates.
    assert materialised_rows(tsdb) == 3

    run_job(tsdb, job_of(tsdb, "policy_retention", "readings_hourly"))
    assert sorted(row[0] for row in tsdb.execute("SELECT avg FROM telemetry.readings_hourly")) == [
        10,
        400,
    ]


@timescaledb
def test_refresh_policy_materialises_its_window(tsdb: Conn) -> None:
    expected = insert_hourly_readings(tsdb, days=2)
    assert materialised_rows(tsdb) == 0
    recent, _ = refresh_jobs(tsdb)
    run_job(tsdb, recent)
    # Everything but the last hour before now (end offset 1 hour) is stored...
    assert materialised_rows(tsdb) >= expected - 1
    # ...and the rest is computed live (materialized_only = false): every hour is there.
    assert hourly_buckets(tsdb) == expected
    # A reading of this hour shows without any refresh.
    tsdb.execute("INSERT INTO telemetry.readings VALUES (now(), 1, 1, 1)")
    assert hourly_buckets(tsdb) == expected + 1


# --- defect 1: the hourly aggregate keeps history, and late readings reach it -----------------


def migrations_up_to(tmp_path: Path, last: str) -> Path:
    """A directory with the project's migrations up to `last` (a database of that age)."""
    target = tmp_path / "migrations"
    target.mkdir()
    for path in sorted(migrate.MIGRATIONS_DIR.glob("*.sql")):
        if path.name[:4] <= last:
            shutil.copy(path, target / path.name)
    return target


@timescaledb
def test_history_older_than_the_refresh_window_survives_the_upgrade(
    pg_conninfo: str, tmp_path: Path
) -> None:
    # A database migrated before the fix, holding 10 days of readings (240 hourly buckets).
    apply_migrations(pg_conninfo, migrations_up_to(tmp_path, "0009"))
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        pause_scheduler(conn)
        expected = insert_hourly_readings(conn, days=10)
        assert hourly_buckets(conn) == expected == 240  # all computed live so far
        # The defect: the policy's first run materialises its 3-day window and moves the
        # watermark past the older buckets, which were never materialised.
        (old_refresh,) = [
            job
            for job, (proc, _, _, _) in jobs(conn).items()
            if proc == "policy_refresh_continuous_aggregate"
        ]
        run_job(conn, old_refresh)
        lost = hourly_buckets(conn)
        assert lost < 80  # 71 or 72, depending on the minute

    # The upgrade materialises what is stored (0011), so nothing waits for a job.
    applied = apply_migrations(pg_conninfo)
    assert applied == [path.name for path in sorted(migrate.MIGRATIONS_DIR.glob("*.sql"))][9:]
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        pause_scheduler(conn)
        assert hourly_buckets(conn) == expected
        assert materialised_rows(conn) >= expected - 1
        recent, backfill = refresh_jobs(conn)
        assert recent == old_refresh  # altered in place, not recreated
        run_job(conn, recent)
        run_job(conn, backfill)
        assert hourly_buckets(conn) == expected
    # Shown with -s: the numbers of the defect and of the fix.
    fixed = hourly_buckets_of(pg_conninfo)
    print(f"hourly buckets: {expected}; after the old policy's first run: {lost}; fixed: {fixed}")


@timescaledb
def test_a_reading_five_days_late_is_aggregated(tsdb: Conn) -> None:
    hour = this_hour()
    expected = insert_hourly_readings(tsdb, days=10, end=hour)
    recent, backfill = refresh_jobs(tsdb)
    run_job(tsdb, recent)
    run_job(tsdb, backfill)
    assert hourly_buckets(tsdb) == expected

    # Device 2 was offline: its reading of 5 days ago arrives now, with one 2 days late.
    five_days_ago = hour - 5 * DAY + timedelta(minutes=10)
    two_days_ago = hour - 2 * DAY + timedelta(minutes=10)
    tsdb.execute(
        "INSERT INTO telemetry.readings VALUES (%s, 2, 1, 42.0), (%s, 2, 1, 43.0)",
        (five_days_ago, two_days_ago),
    )
    # Below the watermark: not computed live, so not there until a refresh covers it.
    assert hourly_buckets(tsdb, device_id=2) == 0
    run_job(tsdb, recent)  # the recent window (3 days) takes the one 2 days late
    assert hourly_buckets(tsdb, device_id=2) == 1
    run_job(tsdb, backfill)  # the backfill window takes the one 5 days late
    rows = tsdb.execute(
        'SELECT bucket, "avg", "count" FROM telemetry.readings_hourly WHERE device_id = 2'
        " ORDER BY bucket"
    ).fetchall()
    assert rows == [(hour - 5 * DAY, 42.0, 1), (hour - 2 * DAY, 43.0, 1)]
    # A late reading into a bucket that had one already updates it.
    tsdb.execute(
        "INSERT INTO telemetry.readings VALUES (%s, 1, 1, 0)",
        (five_days_ago + timedelta(minutes=1),),
    )
    run_job(tsdb, backfill)
    assert (
        scalar(
            tsdb,
            'SELECT "count" FROM telemetry.readings_hourly WHERE device_id = 1 AND bucket = %s',
            hour - 5 * DAY,
        )
        == 2
    )


@timescaledb
def test_backfill_window_follows_the_retention_and_can_be_switched_off(
    migrated: str, tsdb: Conn
) -> None:
    conninfo = migrated
    _, backfill = refresh_jobs(tsdb)
    config = jobs(tsdb)[backfill][2]
    assert (config["start_offset"], config["end_offset"]) == ("364 days", "3 days")
    assert jobs(tsdb)[backfill][3] == timedelta(days=1)

    effective = apply_settings(conninfo, {"retention": "90 days"})
    assert effective["cagg_backfill_start_offset"] == "89 days"
    assert jobs(tsdb)[backfill][2]["start_offset"] == "89 days"

    apply_settings(conninfo, {"cagg_backfill_start_offset": "off"})
    assert backfill not in jobs(tsdb)
    apply_settings(conninfo, {"cagg_backfill_start_offset": "30 days"})
    _, again = refresh_jobs(tsdb)
    assert jobs(tsdb)[again][2]["start_offset"] == "30 days"
    with pytest.raises(psycopg.Error, match=r"must be longer than f2pipe\.cagg_backfill"):
        apply_settings(conninfo, {"cagg_backfill_start_offset": "100 days"})
    with pytest.raises(psycopg.Error, match="at least two hours longer"):
        apply_settings(conninfo, {"cagg_backfill_start_offset": "3 days"})
    # Nothing is ever dropped: the backfill reaches back to the first reading.
    effective = apply_settings(
        conninfo,
        {"retention": "off", "hourly_retention": "off", "cagg_backfill_start_offset": "auto"},
    )
    assert (effective["cagg_backfill"], effective["cagg_backfill_start_offset"]) == (
        "unbounded",
        None,
    )
    assert jobs(tsdb)[again][2]["start_offset"] is None
    assert not [job for job in jobs(tsdb).values() if job[0] == "policy_retention"]


# --- defect 2: one setting changes, the others stay, the jobs keep their ids -------------------


@timescaledb
def test_changing_one_setting_keeps_the_others_and_the_job_ids(migrated: str, tsdb: Conn) -> None:
    conninfo = migrated
    apply_settings(conninfo, {"compress_after": "10 days", "chunk_interval": "12 hours"})
    before = jobs(tsdb)

    effective = apply_settings(conninfo, {"retention": "200 days"})

    after = jobs(tsdb)
    assert sorted(after) == sorted(before)  # same jobs, same ids
    assert (effective["compress_after"], effective["chunk_interval"]) == ("10 days", "12:00:00")
    assert effective["retention"] == effective["events_retention"] == "200 days"
    compression = job_of(tsdb, "policy_compression", "readings")
    assert after[compression][2]["compress_after"] == "10 days"
    assert after[job_of(tsdb, "policy_compression", "events")][2]["compress_after"] == "10 days"
    assert after[job_of(tsdb, "policy_retention", "readings")][2]["drop_after"] == "200 days"
    assert after[job_of(tsdb, "policy_retention", "readings_hourly")][2]["drop_after"] == (
        "730 days"
    )
    assert scalar(
        tsdb,
        "SELECT time_interval FROM timescaledb_information.dimensions"
        " WHERE hypertable_name = 'readings'",
    ) == timedelta(hours=12)
    # The refresh windows move without recreating their jobs.
    recent, backfill = refresh_jobs(tsdb)
    apply_settings(conninfo, {"cagg_refresh_start_offset": "5 days"})
    assert refresh_jobs(tsdb) == (recent, backfill)
    assert jobs(tsdb)[recent][2]["start_offset"] == "5 days"
    assert jobs(tsdb)[backfill][2]["end_offset"] == "5 days"
    apply_settings(conninfo, {"cagg_refresh_start_offset": "2 days"})
    assert jobs(tsdb)[backfill][2]["end_offset"] == "2 days"
    # 'default' forgets a setting; 'off' deletes the job, a value adds one again.
    assert apply_settings(conninfo, {"compress_after": "default"})["compress_after"] == "7 days"
    assert jobs(tsdb)[compression][2]["compress_after"] == "7 days"
    apply_settings(conninfo, {"compress_after": "off"})
    assert compression not in jobs(tsdb)
    apply_settings(conninfo, {"compress_after": "9 days"})
    assert jobs(tsdb)[job_of(tsdb, "policy_compression", "readings")][2]["compress_after"] == (
        "9 days"
    )


def test_settings_given_once_stay_in_effect_on_either_engine(migrated: str) -> None:
    apply_settings(migrated, {"compress_after": "10 days", "hourly_retention": "off"})
    effective = apply_settings(migrated, {"retention": "200 days"})
    assert effective["compress_after"] == "10 days"
    assert effective["hourly_retention"] is None
    assert effective["retention"] == "200 days"
    # A later migration run without settings keeps them too.
    assert apply_migrations(migrated) == []
    effective = apply_settings(migrated, {})
    assert (effective["compress_after"], effective["retention"]) == ("10 days", "200 days")
    with psycopg.connect(migrated) as conn:
        remembered: dict[str, str] = dict(
            conn.execute("SELECT name, value FROM f2pipe_meta.policy_settings")
        )
    assert remembered == {
        "compress_after": "10 days",
        "hourly_retention": "off",
        "retention": "200 days",
    }


@timescaledb
def test_upgrade_keeps_policies_set_before_the_fix(pg_conninfo: str, tmp_path: Path) -> None:
    old = migrations_up_to(tmp_path, "0009")
    apply_migrations(
        pg_conninfo, old, settings={"compress_after": "10 days", "hourly_retention": "off"}
    )
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        before = jobs(conn)
    apply_migrations(pg_conninfo)  # no settings: what was in effect stays
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        after = jobs(conn)
        compression = job_of(conn, "policy_compression", "readings")
        remembered: dict[str, str] = dict(
            conn.execute("SELECT name, value FROM f2pipe_meta.policy_settings")
        )
    assert set(before) < set(after)  # the old jobs kept, the backfill job added
    assert after[compression][2]["compress_after"] == "10 days"
    assert not [job for job in after.values() if job[:2] == ("policy_retention", "readings_hourly")]
    assert remembered == {"compress_after": "10 days", "hourly_retention": "off"}


# --- the sink into compressed chunks ------------------------------------------------------------


def record(readings: list[Reading], events: list[Event] | None = None, offset: int = 0) -> Record:
    value = encode_processed_batch(ProcessedBatch(0, offset, readings, events or []))
    rec, dead = take("processed", 0, offset, value)
    assert dead is None
    return rec


def micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def readings_at(start: datetime, n: int, device: int = 7) -> list[Reading]:
    return [Reading(micros(start) + i * 60_000_000, device, 1 + i % 3, 20.0 + i) for i in range(n)]


class Compressed(NamedTuple):
    conninfo: str
    conn: Conn
    rows: list[Reading]
    events: list[Event]


@pytest.fixture
def compressed(migrated: str, tsdb: Conn) -> Compressed:
    """Readings and events 20 days old, written by the sink, their chunks compressed."""
    start = this_hour() - 20 * DAY
    rows = readings_at(start, 120)
    events = [Event(micros(start) + i, 7, "scan", {"data": f"card {i}"}) for i in range(5)]
    writer = Writer(migrated)
    assert writer.write([record(rows, events)]).readings == 120
    writer.close()
    run_job(tsdb, job_of(tsdb, "policy_compression", "readings"))
    run_job(tsdb, job_of(tsdb, "policy_compression", "events"))
    assert is_compressed(tsdb, "readings", start)
    assert is_compressed(tsdb, "events", start)
    return Compressed(migrated, tsdb, rows, events)


def is_compressed(conn: Conn, table: str, moment: datetime) -> bool:
    return bool(
        scalar(
            conn,
            "SELECT is_compressed FROM timescaledb_information.chunks"
            " WHERE hypertable_name = %s AND %s >= range_start AND %s < range_end",
            table,
            moment,
            moment,
        )
    )


def copy_readings(conn: Conn, rows: list[tuple[Any, ...]]) -> None:
    """COPY rows straight into telemetry.readings, as the sink's direct path does."""
    with conn.cursor() as cur, cur.copy("COPY telemetry.readings FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def stored_keys(conn: Conn) -> tuple[int, int]:
    row = conn.execute(
        'SELECT count(*), count(DISTINCT ("timestamp", device_id, datapoint_id))'
        " FROM telemetry.readings"
    ).fetchone()
    assert row is not None
    return row[0], row[1]


@timescaledb
def test_a_duplicate_into_a_compressed_chunk_fails_the_direct_copy(compressed: Compressed) -> None:
    conn, rows = compressed.conn, compressed.rows
    duplicate = rows[5]
    when = EPOCH + timedelta(microseconds=duplicate.timestamp_us)
    rows_in = [
        (when + timedelta(hours=1), 7, 1, 1.0),  # a new key first
        (when, duplicate.device_id, duplicate.datapoint_id, 99.0),
    ]
    with pytest.raises(errors.UniqueViolation) as raised:
        copy_readings(conn, rows_in)
    assert raised.value.sqlstate == "23505"
    assert stored_keys(conn) == (120, 120)  # the COPY inserted nothing, not even the new key
    assert (
        scalar(conn, "SELECT value FROM telemetry.readings WHERE \"timestamp\" = %s"
               " AND device_id = 7 AND datapoint_id = %s", when, duplicate.datapoint_id)
        == duplicate.value
    )  # fmt: skip


@timescaledb
def test_the_sink_writes_new_rows_into_a_compressed_chunk_directly(compressed: Compressed) -> None:
    conn = compressed.conn
    late = readings_at(this_hour() - 20 * DAY + timedelta(seconds=30), 30, device=8)
    writer = Writer(compressed.conninfo)
    result = writer.write([record(late)])
    assert (result.readings, result.merged, result.rejected) == (30, False, [])
    assert stored_keys(conn) == (150, 150)
    writer.close()


@timescaledb
def test_the_sink_merges_a_replay_into_compressed_chunks_landing_nothing_twice(
    compressed: Compressed,
) -> None:
    conn, rows, events = compressed.conn, compressed.rows, compressed.events
    new_rows = readings_at(this_hour() - 20 * DAY + timedelta(seconds=30), 20, device=9)
    new_event = Event(events[0].timestamp_us, 9, "scan", {"data": "late"})
    writer = Writer(compressed.conninfo)
    # A replay: every row and event already stored (in compressed chunks), plus new ones.
    result = writer.write([record(rows[:60], events), record(rows[60:] + new_rows, [new_event], 1)])
    assert result.merged  # the direct COPY met a stored key (23505) and fell back
    assert (result.readings, result.events, result.rejected) == (20, 1, [])
    assert stored_keys(conn) == (140, 140)
    assert scalar(conn, "SELECT count(*) FROM telemetry.events") == 6
    # The same replay again: nothing lands.
    again = writer.write([record(rows + new_rows, [*events, new_event], 2)])
    assert (again.readings, again.events, again.merged) == (0, 0, True)
    assert stored_keys(conn) == (140, 140)
    # The stored values are the first ones (a replay never overwrites).
    assert scalar(conn, "SELECT sum(value) FROM telemetry.readings WHERE device_id = 7") == sum(
        r.value for r in rows
    )
    writer.close()


# --- defect 3: the jobs' report ---------------------------------------------------------------


def test_job_report_without_timescaledb_is_none(pg_engine: str, pg_conninfo: str) -> None:
    if pg_engine == "timescaledb":
        # A database without the extension, on a server that has it.
        apply_migrations(pg_conninfo, settings={"timescaledb": "off"})
    else:
        apply_migrations(pg_conninfo)
    assert job_report(pg_conninfo) is None


@timescaledb
def test_job_report_lists_every_job_with_its_last_status(migrated: str, tsdb: Conn) -> None:
    report = job_report(migrated)
    assert report is not None
    ours = {job.job_id: job for job in report if job.job_id >= 1000}
    assert set(ours) == set(jobs(tsdb))
    assert not any(job.scheduled for job in ours.values())  # paused by the fixture
    compression = ours[job_of(tsdb, "policy_compression", "readings")]
    assert compression.proc == "_timescaledb_functions.policy_compression"
    assert compression.relation == "telemetry.readings"
    assert compression.describe().startswith(f"job {compression.job_id} Columnstore Policy")
    assert ", paused" in compression.describe()
    recent, backfill = refresh_jobs(tsdb)
    assert ours[backfill].name.startswith(BACKFILL_JOB)
    assert ours[backfill].relation == ours[recent].relation == "telemetry.readings_hourly"


def test_known_portal_failure_is_explained() -> None:
    job = JobStatus(
        job_id=1002, name="Retention Policy [1002]",
        proc="_timescaledb_functions.policy_retention", relation="telemetry.readings",
        scheduled=True, last_run_status="Failed",
        last_run_started_at=datetime(2026, 12, 4, 17, 19, tzinfo=UTC),
        last_successful_finish=None, next_start=None, total_runs=3, total_failures=3,
        error='24000: cannot drop portal "" while it is being set up',
        error_at=datetime(2026, 12, 4, 17, 19, tzinfo=UTC),
    )  # fmt: skip
    assert job.known_portal_issue
    line = job.describe()
    assert line.startswith("job 1002 Retention Policy [1002] (_timescaledb_functions.policy_")
    assert "3 of 3 runs failed" in line
    assert "did its work" in line
    assert "docs/operations.md" in line


@pytest.fixture(scope="module")
def scheduler_server(pg_engine: str, servers_dir: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL of our own for tests that need TimescaleDB's scheduler: on the session's
    server every test database keeps a scheduler running, and once there are more databases
    than timescaledb.max_background_workers, a new one gets none."""
    if pg_engine != "timescaledb":
        pytest.skip("a test of the timescaledb branch; this pass runs on postgres")
    with PostgresServer(servers_dir / "postgres-scheduler", timescaledb=True) as server:
        yield server


@timescaledb
def test_a_failing_job_is_named_with_its_error(
    scheduler_server: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    conninfo = scheduler_server.create_database("jobs_report")
    apply_migrations(conninfo)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            """CREATE PROCEDURE public.failing_job(job_id integer, config jsonb)
               LANGUAGE plpgsql AS $$
               BEGIN
                   RAISE EXCEPTION 'the nightly export found no disk' USING ERRCODE = '53100';
               END $$"""
        )
        failing = scalar(
            conn,
            "SELECT add_job('public.failing_job', '1 day', initial_start => now(),"
            " job_name => 'nightly export')",
        )
        # run_job runs it in this session and raises here; only the scheduler's runs are
        # recorded in job_stats.
        with pytest.raises(errors.DiskFull):
            run_job(conn, failing)

    deadline = time.monotonic() + 90
    job = None
    while time.monotonic() < deadline:
        report = job_report(conninfo) or []
        job = next((j for j in report if j.job_id == failing), None)
        if job is not None and job.failing:
            break
        time.sleep(0.5)
    assert job is not None, f"job {failing} is not in the report"
    assert job.failing, f"the scheduler did not run job {failing}: {job}"
    assert job.error == "53100: the nightly export found no disk"
    assert not job.known_portal_issue
    assert job.name.startswith("nightly export")

    capsys.readouterr()
    assert f2pipe_main(["db-check", "--conninfo", conninfo]) == 1
    out = capsys.readouterr().out
    assert "migrations up to date" in out
    (line,) = [line for line in out.splitlines() if f"job {failing} " in line]
    assert "FAILING" in line
    assert "public.failing_job" in line
    assert "error: 53100: the nightly export found no disk" in line

    assert f2pipe_main(["migrate", "--conninfo", conninfo]) == 0
    out = capsys.readouterr().out
    assert "migrate: nothing to apply" in out
    assert any(f"job {failing} " in line and "no disk" in line for line in out.splitlines())


@timescaledb
def test_db_check_reports_every_job(
    migrated: str, tsdb: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    code = f2pipe_main(["db-check", "--conninfo", migrated])
    out = capsys.readouterr().out
    report = job_report(migrated) or []
    # This database's scheduler may have run TimescaleDB's own jobs already (on PostgreSQL
    # 15.20 recorded failed): the exit code follows the report.
    assert code == (1 if any(job.failing for job in report) else 0)
    assert "migrations up to date" in out
    assert f"TimescaleDB jobs: {len(report)}, " in out
    for job_id in jobs(tsdb):
        assert f"job {job_id} " in out

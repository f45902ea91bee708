"""The sink's writer against a real PostgreSQL: idempotency, isolation of refused rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from f2pipe.migrate import apply_migrations
from f2pipe_devtools.servers import free_port
from f2pipe_shared.deadletters import Reason
from f2pipe_shared.records import Event, ProcessedBatch, Reading, encode_processed_batch
from f2pipe_sink.batch import Record, take
from f2pipe_sink.writer import DatabaseUnavailable, Writer

# The database layer: run on TimescaleDB and again on plain PostgreSQL (Makefile `test`).
pytestmark = [pytest.mark.integration, pytest.mark.database]

T0 = 1_795_000_000_123_456  # 2026-11-18, with microseconds
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture
def db(pg_conninfo: str) -> str:
    apply_migrations(pg_conninfo)
    return pg_conninfo


def record(readings: list[Reading], events: list[Event] | None = None, offset: int = 0) -> Record:
    value = encode_processed_batch(ProcessedBatch(0, offset, readings, events or []))
    rec, dead = take("processed", 0, offset, value)
    assert dead is None
    return rec


def readings(n: int, start: int = 0, device: int = 7) -> list[Reading]:
    return [Reading(T0 + (start + i) * 1000, device, 1 + i % 3, 20.0 + i / 7) for i in range(n)]


def as_datetime(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def stored_readings(conninfo: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo) as conn:
        return conn.execute(
            "SELECT timestamp, device_id, datapoint_id, value FROM telemetry.readings "
            "ORDER BY 1, 2, 3"
        ).fetchall()


def expected(rows: list[Reading]) -> list[tuple[Any, ...]]:
    return sorted(
        {(as_datetime(r.timestamp_us), r.device_id, r.datapoint_id, r.value) for r in rows}
    )


def test_round_trip_exact_values(db: str) -> None:
    rows = [*readings(500), Reading(T0, 9, 4, -1.5e-300), Reading(T0, 9, 5, 1.7976931348623157e308)]
    event = Event(
        T0 + 1, 9, "scan", {"data": "04A1B2C3", "ok": True, "n": [1, 2.5, None], "é": "ü"}
    )
    writer = Writer(db)
    result = writer.write([record(rows[:250]), record(rows[250:], [event], offset=1)])
    assert (result.readings, result.events, result.rejected, result.merged) == (502, 1, [], False)
    assert stored_readings(db) == expected(rows)
    with psycopg.connect(db) as conn:
        events = conn.execute(
            "SELECT timestamp, device_id, kind, data FROM telemetry.events"
        ).fetchall()
    assert events == [(as_datetime(T0 + 1), 9, "scan", event.data)]
    writer.close()


def test_duplicates_in_a_batch_and_replays_land_once(db: str) -> None:
    writer = Writer(db)
    rows = readings(100)
    first = writer.write([record(rows), record(rows[:10] + rows[:10], offset=1)])
    assert first.merged  # the direct COPY met its own duplicates and fell back
    assert first.readings == 100

    # It met stored keys: the next batch merges straight away.
    replay = writer.write([record(rows, offset=2)])
    assert (replay.readings, replay.merged, writer.direct) == (0, True, False)

    fresh = writer.write([record(readings(50, start=1000), offset=3)])
    # Nothing was stored already: back to plain COPY for the next batch.
    assert (fresh.readings, fresh.merged, writer.direct) == (50, True, True)

    direct = writer.write([record(readings(50, start=2000), offset=4)])
    assert (direct.readings, direct.merged) == (50, False)
    assert len(stored_readings(db)) == 200
    writer.close()


def test_constraint_violation_isolated_to_its_rows(db: str) -> None:
    records = [record(readings(40, start=i * 100), offset=i) for i in range(5)]
    bad = record(
        readings(40, start=900),
        [Event(T0, 1, "scan", {}), Event(T0, 1, "Not A Kind!", {}), Event(T0, 2, "state", {})],
        offset=5,
    )
    records.insert(3, bad)
    result = Writer(db).write(records)
    assert len(result.rejected) == 1
    rejection = result.rejected[0]
    assert rejection.record is bad
    assert rejection.reason is Reason.constraint_violation
    assert "event row 1" in rejection.detail
    assert "23514" in rejection.detail  # check_violation
    assert result.readings == 240
    assert result.events == 2  # the bad record's good events were written
    assert len(stored_readings(db)) == 240


def test_data_errors_from_the_database_are_invalid_records(db: str) -> None:
    with psycopg.connect(db) as conn:
        # A trigger stands in for any data error the server finds that our checks do not.
        conn.execute(
            """CREATE FUNCTION public.refuse_666() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN
                 IF NEW.value = 666 THEN
                   RAISE EXCEPTION 'value 666 refused' USING ERRCODE = 'numeric_value_out_of_range';
                 END IF;
                 RETURN NEW;
               END $$;
               CREATE TRIGGER refuse_666 BEFORE INSERT ON telemetry.readings
               FOR EACH ROW EXECUTE FUNCTION public.refuse_666()"""
        )
    good = readings(300)
    with_bad = [
        *readings(30, start=500),
        Reading(T0 + 1, 3, 1, 666.0),
        Reading(T0 + 2, 3, 1, 666.0),
    ]
    result = Writer(db).write(
        [record(good[:150]), record(with_bad, offset=1), record(good[150:], offset=2)]
    )
    assert [(r.record.offset, r.reason) for r in result.rejected] == [(1, Reason.invalid_record)]
    assert "2 of 32 rows" in result.rejected[0].detail
    assert "22003" in result.rejected[0].detail
    assert stored_readings(db) == expected(good + with_bad[:30])


def test_unreachable_database_raises_and_judges_nothing(db: str) -> None:
    port = free_port()
    writer = Writer(f"host=127.0.0.1 port={port} user=postgres dbname=x connect_timeout=2")
    with pytest.raises(DatabaseUnavailable):
        writer.write([record(readings(3))])
    with pytest.raises(DatabaseUnavailable):
        writer.ping()


def test_missing_tables_are_an_outage_not_bad_data(pg_conninfo: str) -> None:
    # Migrations not applied yet: retry until they are, never dead-letter the data.
    with pytest.raises(DatabaseUnavailable, match="does not exist"):
        Writer(pg_conninfo).write([record(readings(3))])


def test_writer_reconnects_after_its_connection_is_killed(db: str) -> None:
    writer = Writer(db)
    writer.write([record(readings(5))])
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'f2pipe-sink'"
        )
    with pytest.raises(DatabaseUnavailable):
        writer.write([record(readings(5, start=10))])
    assert writer.write([record(readings(5, start=10))]).readings == 5
    assert len(stored_readings(db)) == 10

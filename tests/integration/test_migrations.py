"""The migrations and their runner, against a real PostgreSQL (plain: no TimescaleDB here)."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from f2pipe.migrate import (
    MIGRATIONS_DIR,
    MigrationError,
    apply_migrations,
    apply_settings,
    load_migrations,
    migration_status,
    policy_gucs,
    split_statements,
)
from f2pipe.seed import seed_demo
from f2pipe_shared.settings import TelemetryPolicySettings

# The database layer: run on TimescaleDB and again on plain PostgreSQL (Makefile `test`).
pytestmark = [pytest.mark.integration, pytest.mark.database]

Conn = psycopg.Connection[Any]

ALL = [path.name for path in sorted(MIGRATIONS_DIR.glob("*.sql"))]
ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    target = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, target)
    return target


def scalar(conn: Conn, query: str, *params: Any) -> Any:
    row = conn.execute(query, params or None).fetchone()
    assert row is not None
    return row[0]


# --- the runner ---------------------------------------------------------------------------


def test_migrating_twice_applies_everything_once(pg_conninfo: str) -> None:
    assert ALL[0].startswith("0001_")
    assert apply_migrations(pg_conninfo) == ALL
    assert apply_migrations(pg_conninfo) == []
    status = migration_status(pg_conninfo)
    assert status.up_to_date
    assert [m.name for m in status.applied] == ALL
    assert all(len(m.checksum) == 64 for m in status.applied)


def test_status_of_an_empty_database_lists_everything_pending(pg_conninfo: str) -> None:
    status = migration_status(pg_conninfo)
    assert status.pending == ALL
    assert not status.applied
    assert not status.up_to_date


def test_a_changed_applied_migration_is_refused(pg_conninfo: str, migrations_copy: Path) -> None:
    apply_migrations(pg_conninfo, migrations_copy)
    tampered = migrations_copy / ALL[1]
    tampered.write_text(tampered.read_text() + "\n-- an innocent-looking edit\n")
    (migrations_copy / "0099_later.sql").write_text("CREATE TABLE public.later (id int);")

    with pytest.raises(MigrationError, match=ALL[1]):
        apply_migrations(pg_conninfo, migrations_copy)

    status = migration_status(pg_conninfo, migrations_copy)
    assert status.changed == [ALL[1]]
    assert status.pending == ["0099_later.sql"]  # refused before anything ran
    # Line endings are not a change.
    crlf = migrations_copy / ALL[2]
    crlf.write_bytes(crlf.read_bytes().replace(b"\n", b"\r\n"))
    assert ALL[2] not in migration_status(pg_conninfo, migrations_copy).changed


def test_a_new_file_is_applied_on_the_next_run(pg_conninfo: str, migrations_copy: Path) -> None:
    apply_migrations(pg_conninfo, migrations_copy)
    (migrations_copy / "0099_later.sql").write_text("CREATE TABLE public.later (id int);")
    assert apply_migrations(pg_conninfo, migrations_copy) == ["0099_later.sql"]
    assert migration_status(pg_conninfo, migrations_copy).up_to_date


def test_a_failing_migration_leaves_nothing_behind(pg_conninfo: str, tmp_path: Path) -> None:
    (tmp_path / "0001_good.sql").write_text("CREATE TABLE public.good (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE public.half (id int);\nSELECT 1/0;\n")
    with pytest.raises(MigrationError, match=r"0002_bad\.sql: division by zero"):
        apply_migrations(pg_conninfo, tmp_path)
    status = migration_status(pg_conninfo, tmp_path)
    assert [m.name for m in status.applied] == ["0001_good.sql"]
    assert status.pending == ["0002_bad.sql"]
    with psycopg.connect(pg_conninfo) as conn:
        assert scalar(conn, "SELECT to_regclass('public.half')") is None
        assert scalar(conn, "SELECT to_regclass('public.good')") is not None


def test_no_transaction_migrations_run_statement_by_statement(
    pg_conninfo: str, tmp_path: Path
) -> None:
    body = """
        CREATE TABLE public.things (id int, note text);
        CREATE INDEX CONCURRENTLY things_id ON public.things (id);
        DO $$ BEGIN INSERT INTO public.things VALUES (1, 'a; b'); END $$;
        INSERT INTO public.things VALUES (2, 'it''s; fine'), (3, E'back\\'slash;');
    """
    (tmp_path / "0001_plain.sql").write_text("-- plain\n" + body)
    with pytest.raises(MigrationError, match="f2pipe:no-transaction"):
        apply_migrations(pg_conninfo, tmp_path)

    (tmp_path / "0001_plain.sql").write_text(
        "-- Builds an index.\n-- f2pipe:no-transaction\n" + body
    )
    assert apply_migrations(pg_conninfo, tmp_path) == ["0001_plain.sql"]
    with psycopg.connect(pg_conninfo) as conn:
        notes = conn.execute("SELECT note FROM public.things ORDER BY id").fetchall()
        valid = scalar(
            conn, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'things_id'::regclass"
        )
    assert notes == [("a; b",), ("it's; fine",), ("back'slash;",)]
    assert valid is True


def test_two_runners_at_once_apply_each_file_once(pg_conninfo: str) -> None:
    results: list[list[str]] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            results.append(apply_migrations(pg_conninfo))
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures
    assert sorted(name for result in results for name in result) == ALL


def test_badly_named_files_and_settings_are_refused(pg_conninfo: str, tmp_path: Path) -> None:
    (tmp_path / "1_oops.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_lowercase_name"):
        load_migrations(tmp_path)
    with pytest.raises(ValueError, match="unknown migration setting 'retension'"):
        apply_migrations(pg_conninfo, settings={"retension": "9 days"})


def test_split_statements_respects_quotes_and_comments() -> None:
    sql = """
        -- a comment; with a semicolon
        SELECT 'a;b', "odd;name", $$x;y$$, $tag$ $$ ; $tag$;
        /* block ; /* nested ; */ still comment ; */
        SELECT E'\\';', 1 ; ;
        CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $body$ SELECT 1; $body$
    """
    statements = split_statements(sql)
    assert len(statements) == 3
    assert statements[0].endswith("""SELECT 'a;b', "odd;name", $$x;y$$, $tag$ $$ ; $tag$""")
    assert statements[1].endswith("SELECT E'\\';', 1")
    assert statements[2].startswith("CREATE FUNCTION")
    assert split_statements("-- only a comment\n") == []


# --- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"retention": "ninety days"}, r"f2pipe\.retention = 'ninety days' is not an interval"),
        ({"compress_after": "1 day"}, "must be longer than f2pipe.replay_window"),
        ({"cagg_refresh_start_offset": "1 day"}, "must be at least f2pipe.replay_window"),
        ({"cagg_refresh_end_offset": "2 days 23 hours"}, "at least two hourly buckets"),
        ({"retention": "3 days"}, "must be longer than f2pipe.cagg_refresh_start_offset"),
        ({"chunk_interval": "off"}, "cannot be switched off"),
        ({"timescaledb": "maybe"}, "must be auto, on or off"),
        pytest.param(
            {"f2pipe.timescaledb": "on"},
            "cannot load TimescaleDB",
            marks=pytest.mark.engine("postgres"),  # only where TimescaleDB is not loaded
        ),
    ],
)
def test_bad_settings_stop_the_migration_even_without_timescaledb(
    pg_conninfo: str, settings: dict[str, str], message: str
) -> None:
    with pytest.raises(MigrationError, match=message):
        apply_migrations(pg_conninfo, settings=settings)
    # What failed rolled back: the next run with good settings finishes the job.
    assert apply_migrations(pg_conninfo, settings={"retention": "30 days"})
    assert migration_status(pg_conninfo).up_to_date


@pytest.mark.engine("postgres")
def test_apply_settings_reports_what_is_in_effect(migrated: str) -> None:
    effective = apply_settings(migrated, {"retention": "off", "compress_after": "14 days"})
    assert effective["timescaledb"] is False
    assert effective["retention"] is None
    assert effective["compress_after"] == "14 days"
    assert effective["chunk_interval"] == "1 day"
    assert effective["cagg_refresh_end_offset"] == "01:00:00"
    with pytest.raises(psycopg.Error, match="must be longer than"):
        apply_settings(migrated, {"retention": "1 day"})


def test_telemetry_settings_reach_the_migrations(pg_conninfo: str) -> None:
    policy = TelemetryPolicySettings(
        telemetry_retention="30 days", telemetry_compress_after="3 days"
    )
    gucs = policy_gucs(policy)
    assert gucs["retention"] == gucs["events_retention"] == "30 days"
    apply_migrations(pg_conninfo, settings=gucs)
    effective = apply_settings(pg_conninfo, gucs)
    assert (effective["retention"], effective["events_retention"]) == ("30 days", "30 days")
    assert effective["compress_after"] == "3 days"


@pytest.mark.engine("postgres")
def test_plain_postgres_has_no_hypertables_but_the_same_objects(
    conn: Conn,
) -> None:
    assert scalar(conn, "SELECT telemetry.timescaledb_enabled()") is False
    kinds = dict(
        conn.execute(
            "SELECT c.relname, c.relkind FROM pg_class AS c"
            " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'telemetry' AND c.relkind IN ('r', 'v', 'm')"
        ).fetchall()
    )
    assert kinds == {
        "readings": "r",
        "events": "r",
        "readings_hourly": "v",
        "readings_labeled": "v",
        "events_labeled": "v",
        "readings_hourly_labeled": "v",
        "controller_status": "r",  # 0014: one row per controller, never a hypertable
    }


# --- time_bucket on plain PostgreSQL --------------------------------------------------------


def expected_bucket(width: timedelta, ts: datetime) -> datetime:
    return ORIGIN + ((ts - ORIGIN) // width) * width


@pytest.mark.parametrize(
    "width",
    [timedelta(hours=1), timedelta(minutes=15), timedelta(days=1), timedelta(days=7)],
    ids=["1 hour", "15 minutes", "1 day", "7 days"],
)
def test_time_bucket_matches_timescaledb_buckets(conn: Conn, width: timedelta) -> None:
    samples = [
        datetime(2025, 3, 14, 15, 9, 26, 535897, tzinfo=UTC),
        datetime(2025, 3, 14, 0, 0, tzinfo=UTC),  # on a boundary
        datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),  # before the origin
        datetime(2000, 1, 3, tzinfo=UTC),
        datetime(2024, 2, 29, 23, 45, tzinfo=UTC),
    ]
    for ts in samples:
        got = scalar(conn, "SELECT time_bucket(%s, %s)", width, ts)
        assert got == expected_bucket(width, ts), ts


def test_time_bucket_examples_and_properties(conn: Conn) -> None:
    conn.execute("SET TIME ZONE 'America/New_York'")  # buckets are in UTC whatever the session
    assert scalar(
        conn, "SELECT time_bucket('15 minutes', timestamptz '2025-06-01 12:44:59+00')"
    ) == datetime(2025, 6, 1, 12, 30, tzinfo=UTC)
    assert scalar(
        conn, "SELECT time_bucket('1 day', timestamptz '2025-06-01 23:30:00-04')"
    ) == datetime(2025, 6, 2, tzinfo=UTC)
    # Weekly buckets start on Mondays, like TimescaleDB's.
    assert (
        scalar(conn, "SELECT extract(isodow FROM time_bucket('7 days', now()) AT TIME ZONE 'UTC')")
        == 1
    )
    assert (
        scalar(
            conn,
            "SELECT p.provolatile FROM pg_proc AS p"
            " JOIN pg_namespace AS n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'public' AND p.proname = 'time_bucket'",
        )
        == "i"
    )


# --- telemetry ------------------------------------------------------------------------------

# Yesterday, on the hour: a fixed date falls out of the 365-day retention in time, and
# TimescaleDB's retention job may then drop its chunk in the middle of a test.
RECENT = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)


def test_readings_key_rejects_a_duplicate_and_on_conflict_ignores_it(
    conn: Conn,
) -> None:
    ts = RECENT
    insert = "INSERT INTO telemetry.readings VALUES (%s, %s, %s, %s)"
    conn.execute(insert, (ts, 7, 1, 21.5))
    with pytest.raises(errors.UniqueViolation):
        conn.execute(insert, (ts, 7, 1, 99.0))
    skipped = conn.execute(insert + " ON CONFLICT DO NOTHING", (ts, 7, 1, 99.0)).rowcount
    assert skipped == 0
    conn.execute(insert, (ts, 7, 2, 40.0))  # another datapoint at the same time is a new row
    assert conn.execute(
        "SELECT datapoint_id, value FROM telemetry.readings ORDER BY 1"
    ).fetchall() == [
        (1, 21.5),
        (2, 40.0),
    ]


def test_events_key_makes_writes_idempotent(conn: Conn) -> None:
    ts = RECENT
    insert = "INSERT INTO telemetry.events VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING"
    assert conn.execute(insert, (ts, 3, "scan", '{"data": "abc"}')).rowcount == 1
    assert conn.execute(insert, (ts, 3, "scan", '{"data": "abc"}')).rowcount == 0
    assert scalar(conn, "SELECT count(*) FROM telemetry.events") == 1


def test_telemetry_has_no_foreign_keys_to_the_registry(conn: Conn) -> None:
    # By design (see 0004_telemetry.sql): the row lands though device 424242 does not exist.
    conn.execute("INSERT INTO telemetry.readings VALUES (now(), 424242, 1, 1.0)")
    assert (
        scalar(
            conn,
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
            " AND conrelid::regclass::text LIKE 'telemetry.%%'",
        )
        == 0
    )


def test_readings_hourly_aggregates_per_hour(conn: Conn) -> None:
    base = RECENT
    rows = [(base + timedelta(minutes=m), 5, 1, float(m)) for m in (0, 20, 40, 70)]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO telemetry.readings VALUES (%s, %s, %s, %s)", rows)
    hourly = conn.execute(
        'SELECT bucket, device_id, datapoint_id, "avg", "min", "max", "count"'
        " FROM telemetry.readings_hourly ORDER BY bucket"
    ).fetchall()
    assert hourly == [
        (base, 5, 1, 20.0, 0.0, 40.0, 3),
        (base + timedelta(hours=1), 5, 1, 70.0, 70.0, 70.0, 1),
    ]


# --- registry constraints -------------------------------------------------------------------


@pytest.fixture
def registry(migrated: str) -> Iterator[Conn]:
    seed_demo(migrated, 0)  # device types, templates and datapoints only
    with psycopg.connect(migrated, autocommit=True) as connection:
        yield connection


def add_device(conn: Conn, type_key: str, name: str, mac: str | None = None) -> int:
    return int(
        scalar(
            conn,
            "INSERT INTO registry.devices (device_type_id, template_id, name, mac)"
            " SELECT t.id, (SELECT min(id) FROM registry.device_templates"
            "               WHERE device_type_id = t.id), %s, %s"
            " FROM registry.device_types AS t WHERE t.key = %s RETURNING id",
            name,
            mac,
            type_key,
        )
    )


def insert_row(conn: Conn, table: str, **values: object) -> int:
    """INSERT one row into registry.<table>; its id."""
    columns, marks = ", ".join(values), ", ".join(["%s"] * len(values))
    query = f"INSERT INTO registry.{table} ({columns}) VALUES ({marks}) RETURNING id"
    return int(scalar(conn, query, *values.values()))


@pytest.fixture
def controller(registry: Conn) -> int:
    """A controller, aabbccddee01, with nothing on it yet."""
    return add_device(registry, "controller", "c", "aabbccddee01")


def add_connector(conn: Conn, controller: int, name: str, mode: str) -> int:
    return insert_row(conn, "connectors", controller_id=controller, name=name, mode=mode)


def add_pin(conn: Conn, connector: int, component: str, device: int) -> int:
    return insert_row(conn, "pins", connector_id=connector, component=component, device_id=device)


@pytest.mark.parametrize(
    "mac", ["AABBCCDDEE01", "aa:bb:cc:dd:ee:01", "aabbccddee0", "aabbccddee012", "aabbccddee0g"]
)
def test_mac_must_be_twelve_lowercase_hex_digits(registry: Conn, mac: str) -> None:
    with pytest.raises(errors.CheckViolation, match="devices_mac_format"):
        add_device(registry, "controller", "bad", mac)


def test_macs_are_unique_and_only_controllers_have_one(registry: Conn) -> None:
    add_device(registry, "controller", "f2-aabbccddee01", "aabbccddee01")
    with pytest.raises(errors.UniqueViolation):
        add_device(registry, "controller", "again", "aabbccddee01")
    with pytest.raises(errors.CheckViolation, match="needs a MAC"):
        add_device(registry, "controller", "no mac")
    with pytest.raises(errors.CheckViolation, match="cannot have a MAC"):
        add_device(registry, "environmental-sensor", "sensor", "aabbccddee02")


def test_claim_codes_are_stored_hashed_only(registry: Conn, controller: int) -> None:
    with pytest.raises(errors.CheckViolation, match="devices_claim_code_is_hashed"):
        registry.execute(
            "UPDATE registry.devices SET claim_code_hash = 'ABCD-EFGH-JKMN-PQRS' WHERE id = %s",
            (controller,),
        )


def test_pins_are_unique_per_position_and_per_device(registry: Conn, controller: int) -> None:
    j3 = add_connector(registry, controller, "J3", "sensor-mode")
    j4 = add_connector(registry, controller, "J4", "sensor-mode")
    first = add_device(registry, "environmental-sensor", "first")
    second = add_device(registry, "environmental-sensor", "second")
    pin = add_pin(registry, j3, "sensor-3", first)
    assert scalar(registry, "SELECT position FROM registry.pins WHERE id = %s", pin) == 3

    with pytest.raises(errors.UniqueViolation, match="pins_unique_position"):
        add_pin(registry, j3, "sensor-3", second)
    with pytest.raises(errors.UniqueViolation, match="device_id"):
        add_pin(registry, j4, "sensor-1", first)  # a device sits on one pin
    add_pin(registry, j4, "sensor-3", second)  # same position, other connector: fine
    with pytest.raises(errors.UniqueViolation):
        add_connector(registry, controller, "J3", "alarm-mode")


def test_pins_accept_only_matching_components_and_modes(registry: Conn, controller: int) -> None:
    j1 = add_connector(registry, controller, "J1", "access-control-mode")
    j3 = add_connector(registry, controller, "J3", "sensor-mode")
    sensor = add_device(registry, "environmental-sensor", "env")
    doors = add_device(registry, "door-sensor-pair", "doors")
    with pytest.raises(errors.CheckViolation, match="pins_component_format"):
        add_pin(registry, j3, "sensor-7", sensor)  # RS-485 positions are 1..6
    with pytest.raises(errors.CheckViolation, match="answers to 'sensor'"):
        add_pin(registry, j3, "reader-1", sensor)
    with pytest.raises(errors.CheckViolation, match="needs a connector in access-control-mode"):
        add_pin(registry, j3, "door-sensors", doors)
    with pytest.raises(errors.CheckViolation, match="sits on no pin"):
        add_pin(registry, j1, "door-sensors", controller)
    pin = add_pin(registry, j1, "door-sensors", doors)
    assert scalar(registry, "SELECT position FROM registry.pins WHERE id = %s", pin) is None
    with pytest.raises(errors.CheckViolation, match="not a controller"):
        add_connector(registry, sensor, "J2", "alarm-mode")


DATAPOINT = (
    'INSERT INTO registry.datapoints (template_id, key, label, "offset", length, encoding,'
    " byte_order, decimals, field)"
    " SELECT id, %s, 'x', %s, %s, %s, coalesce(%s, 'big'), %s, %s"
    " FROM registry.device_templates WHERE key = 'environmental-sensor-v1'"
)


@pytest.mark.parametrize(
    ("values", "constraint"),
    [
        ((0, 2, "int16", None, 2, "status"), "datapoints_one_form"),  # both forms
        ((None, None, None, None, None, None), "datapoints_one_form"),  # neither
        ((0, 2, "int16", None, None, None), "datapoints_one_form"),  # decimals missing
        ((0, 4, "int16", None, 0, None), "datapoints_length_matches_encoding"),
        ((0, 2, "int16", "word_swapped", 0, None), "datapoints_word_swap_needs_32_bits"),
        ((0, 2, "int64", None, 0, None), "datapoints_encoding_check"),
        ((0, 2, "int16", "middle", 0, None), "datapoints_byte_order_check"),
        ((0, 2, "int16", None, 10, None), "datapoints_decimals_check"),
    ],
)
def test_datapoints_have_exactly_one_valid_decoding_form(
    registry: Conn, values: tuple[Any, ...], constraint: str
) -> None:
    with pytest.raises(errors.CheckViolation, match=constraint):
        registry.execute(DATAPOINT, ("extra", *values))


def test_both_datapoint_forms_are_accepted(registry: Conn) -> None:
    registry.execute(DATAPOINT, ("pressure", 6, 4, "float32", "word_swapped", 1, None))
    registry.execute(DATAPOINT, ("alarm", None, None, None, None, None, "alarm"))


def test_certificates_outlive_their_device(registry: Conn, controller: int) -> None:
    insert = (
        "INSERT INTO registry.certificates (serial, device_id, cn, kind, not_before, not_after,"
        " status, revoked_at, revocation_reason, fingerprint_sha256)"
        " VALUES (%s, %s, 'f2-aabbccddee01', 'device', now(), now() + interval '1 year',"
        " %s, %s, %s, %s)"
    )
    registry.execute(
        insert, ("1a2b", controller, "revoked", datetime.now(UTC), "keyCompromise", "a" * 64)
    )
    with pytest.raises(errors.CheckViolation, match="certificates_revoked_at"):
        registry.execute(insert, ("1a2c", controller, "revoked", None, None, "b" * 64))
    with pytest.raises(errors.CheckViolation, match="certificates_serial_check"):
        registry.execute(insert, ("1A2C", controller, "valid", None, None, "c" * 64))
    registry.execute("DELETE FROM registry.devices WHERE id = %s", (controller,))
    assert registry.execute(
        "SELECT serial, device_id, status FROM registry.certificates"
    ).fetchall() == [("1a2b", None, "revoked")]


# --- NOTIFY registry_changed ----------------------------------------------------------------


def received(listener: Conn) -> list[dict[str, Any]]:
    return [json.loads(n.payload) for n in listener.notifies(timeout=0.5)]


@pytest.fixture
def listener(migrated: str) -> Iterator[Conn]:
    with psycopg.connect(migrated, autocommit=True) as connection:
        connection.execute("LISTEN registry_changed")
        yield connection


def test_registry_changes_notify_listeners(registry: Conn, listener: Conn) -> None:
    controller = add_device(registry, "controller", "c", "aabbccddee01")
    j3 = add_connector(registry, controller, "J3", "sensor-mode")
    sensor = add_device(registry, "environmental-sensor", "env")
    pin = add_pin(registry, j3, "sensor-1", sensor)
    registry.execute("UPDATE registry.devices SET name = 'renamed' WHERE id = %s", (sensor,))
    registry.execute("DELETE FROM registry.pins WHERE id = %s", (pin,))

    assert received(listener) == [
        {"table": "devices", "op": "INSERT", "ids": [controller], "macs": ["aabbccddee01"]},
        {"table": "connectors", "op": "INSERT", "ids": [j3], "controller_ids": [controller]},
        {"table": "devices", "op": "INSERT", "ids": [sensor], "macs": None},
        {"table": "pins", "op": "INSERT", "ids": [pin], "connector_ids": [j3]},
        {"table": "devices", "op": "UPDATE", "ids": [sensor], "macs": None},
        {"table": "pins", "op": "DELETE", "ids": [pin], "connector_ids": [j3]},
    ]


def test_notifications_cover_templates_and_datapoints_and_skip_rollbacks(
    registry: Conn, listener: Conn
) -> None:
    with registry.transaction():
        registry.execute("UPDATE registry.datapoints SET label = label || '!' WHERE key = 'co2'")
        registry.execute("UPDATE registry.device_templates SET name = name WHERE key = 'siren-v1'")
        registry.execute("UPDATE registry.devices SET name = name WHERE false")  # no row: no news
    with pytest.raises(errors.DivisionByZero):
        registry.execute("UPDATE registry.datapoints SET label = 'x'; SELECT 1/0")
    notes = received(listener)
    assert [(n["table"], n["op"]) for n in notes] == [
        ("datapoints", "UPDATE"),
        ("device_templates", "UPDATE"),
    ]
    assert len(notes[0]["ids"]) == 1
    assert len(notes[0]["template_ids"]) == 1


def test_a_big_change_notifies_without_ids(registry: Conn, listener: Conn) -> None:
    registry.execute(
        "INSERT INTO registry.devices (device_type_id, name)"
        " SELECT t.id, 'sensor ' || g FROM registry.device_types AS t, generate_series(1, 3000) g"
        " WHERE t.key = 'environmental-sensor'"
    )
    registry.execute("TRUNCATE registry.pins")
    assert received(listener) == [
        {"table": "devices", "op": "INSERT", "ids": None, "count": 3000},
        {"table": "pins", "op": "TRUNCATE", "ids": None},
    ]

"""Every SQL query of the Grafana dashboards runs against the migrated schema.

As Grafana would run it: logged in as the read-only role deploy/timescaledb/grafana-reader.sql
creates (before the migrations, as the timescaledb container's init does), with the template
variables filled from their own queries and Grafana's macros expanded to plain SQL.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from f2pipe.migrate import apply_migrations
from f2pipe.seed import seed_demo

# The database layer: run on TimescaleDB and again on plain PostgreSQL (Makefile `test`).
pytestmark = [pytest.mark.integration, pytest.mark.database]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
READER_SQL = ROOT / "deploy" / "timescaledb" / "grafana-reader.sql"

NOW = datetime.now(UTC).replace(microsecond=0)
RANGE_FROM = NOW - timedelta(hours=6)
RANGE_TO = NOW + timedelta(minutes=1)
INTERVAL_SECONDS = 60

_roles = itertools.count(1)


def expand_macros(text: str, variables: dict[str, list[str]]) -> str:
    """Grafana's PostgreSQL macros and template variables, as Grafana expands them."""
    start, end = RANGE_FROM.isoformat(), RANGE_TO.isoformat()
    text = re.sub(
        r"\$__timeFilter\(([^)]*)\)",
        lambda m: f"{m[1]} BETWEEN '{start}' AND '{end}'",
        text,
    )
    text = re.sub(
        r"\$__timeGroupAlias\(([^,]*),[^)]*\)",
        lambda m: (
            f'floor(extract(epoch from {m[1]})/{INTERVAL_SECONDS})*{INTERVAL_SECONDS} AS "time"'
        ),
        text,
    )
    text = re.sub(
        r"\$__timeGroup\(([^,]*),[^)]*\)",
        lambda m: f"floor(extract(epoch from {m[1]})/{INTERVAL_SECONDS})*{INTERVAL_SECONDS}",
        text,
    )

    def variable(match: re.Match[str]) -> str:
        values = variables[match[1] or match[2]]
        # Grafana quotes every value of a multi-value variable as a string literal.
        return ",".join("'" + v.replace("'", "''") + "'" for v in values) or "NULL"

    text = re.sub(r"\$\{(\w+)\}|\$(\w+)", variable, text)
    assert "$" not in text, text
    return text


def dashboards() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(DASHBOARDS.glob("*.json")):
        yield path.name, json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def grafana_db(pg_conninfo: str) -> Iterator[tuple[str, str]]:
    """A database as the compose stack leaves it: reader role, migrations, demo fleet, data."""
    reader = f"grafana_reader_test_{os.getpid()}_{next(_roles)}"
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        owner = conn.execute("SELECT current_user").fetchone()
        assert owner is not None
        script = (
            READER_SQL.read_text(encoding="utf-8")
            .replace(':"reader"', sql.Identifier(reader).as_string(conn))
            .replace(':"owner"', sql.Identifier(owner[0]).as_string(conn))
            .replace(":'password'", sql.Literal("not-a-real-password").as_string(conn))
        )
        conn.execute(script)
    try:
        apply_migrations(pg_conninfo)
        seed_demo(pg_conninfo, 3)
        insert_telemetry(pg_conninfo)
        yield pg_conninfo, reader
    finally:
        with psycopg.connect(pg_conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(reader)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(reader)))


def insert_telemetry(conninfo: str) -> None:
    """A few readings of every datapoint of every device, and events on every connector."""
    with psycopg.connect(conninfo) as conn:
        conn.execute(
            """
            INSERT INTO telemetry.readings ("timestamp", device_id, datapoint_id, value)
            SELECT %(now)s - make_interval(mins => n * 7), l.device_id, dp.id, 20 + n
            FROM registry.device_locations AS l
            JOIN registry.datapoints AS dp ON dp.template_id = l.template_id
            CROSS JOIN generate_series(0, 2) AS n
            """,
            {"now": NOW},
        )
        conn.execute(
            """
            INSERT INTO telemetry.events ("timestamp", device_id, kind, data)
            SELECT %(now)s - make_interval(mins => row_number() OVER ()::int),
                   l.device_id, k.kind, jsonb_build_object('data', 'abc123')
            FROM registry.device_locations AS l
            CROSS JOIN (VALUES ('scan'), ('state')) AS k (kind)
            WHERE l.connector IS NOT NULL
            """,
            {"now": NOW},
        )
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM telemetry.readings), "
            "(SELECT count(*) FROM telemetry.events)"
        ).fetchone()
        assert counts is not None
        assert counts[0] > 0
        assert counts[1] > 0


def run_as(conn: psycopg.Connection[Any], reader: str, query: str) -> list[tuple[Any, ...]]:
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(reader)))
        return conn.execute(query).fetchall()


@pytest.mark.parametrize("name", [path.name for path in sorted(DASHBOARDS.glob("*.json"))])
def test_dashboard_sql_runs_as_grafana_reader(grafana_db: tuple[str, str], name: str) -> None:
    conninfo, reader = grafana_db
    board = json.loads((DASHBOARDS / name).read_text(encoding="utf-8"))
    variables: dict[str, list[str]] = {}
    with psycopg.connect(conninfo) as conn:
        # Variables in order, each query seeing the values of those before it ("All").
        for var in board["templating"]["list"]:
            rows = run_as(conn, reader, expand_macros(var["query"], variables))
            assert rows, f"{name}: variable {var['name']} has no values"
            variables[var["name"]] = [str(row[-1]) for row in rows]
        ran = 0
        for panel in board["panels"]:
            for target in panel["targets"]:
                if "rawSql" not in target:
                    continue
                query = expand_macros(target["rawSql"], variables)
                rows = run_as(conn, reader, query)
                ran += 1
                if panel["type"] != "table" or "scan" in target["rawSql"]:
                    assert rows, f"{name}: {panel['title']} ({target['refId']}) returned nothing"
    if any("rawSql" in t for p in board["panels"] for t in p["targets"]):
        assert ran > 0


def test_the_readings_dashboard_shows_names_and_units(grafana_db: tuple[str, str]) -> None:
    conninfo, reader = grafana_db
    board = json.loads((DASHBOARDS / "f2pipe-readings.json").read_text(encoding="utf-8"))
    with psycopg.connect(conninfo) as conn:
        variables: dict[str, list[str]] = {}
        for var in board["templating"]["list"]:
            rows = run_as(conn, reader, expand_macros(var["query"], variables))
            variables[var["name"]] = [str(row[-1]) for row in rows]
        (latest,) = [p for p in board["panels"] if p["title"].startswith("Latest value")]
        query = expand_macros(latest["targets"][0]["rawSql"], variables)
        rows = run_as(conn, reader, query)
        expected = conn.execute(
            "SELECT count(DISTINCT (device_id, datapoint_id)) FROM telemetry.readings"
        ).fetchone()
    assert expected is not None
    assert len(rows) == expected[0]
    # controller, connector, device, datapoint, value, unit, at: names filled in, some units.
    assert all(row[0] and row[2] and row[3] for row in rows)
    assert any(row[5] for row in rows)
    # The latest reading of each series (n = 0 above: value 20).
    assert {row[4] for row in rows} == {20}


def test_grafana_reader_cannot_write(grafana_db: tuple[str, str]) -> None:
    conninfo, reader = grafana_db
    with psycopg.connect(conninfo) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            run_as(conn, reader, "DELETE FROM telemetry.readings RETURNING 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            run_as(conn, reader, "UPDATE registry.devices SET name = 'x' RETURNING 1")
    # Logged in (not SET ROLE), its sessions are read-only too.
    with psycopg.connect(conninfo) as conn:
        setting = conn.execute(
            "SELECT setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
            "WHERE r.rolname = %s",
            (reader,),
        ).fetchone()
    assert setting is not None
    assert "default_transaction_read_only=on" in setting[0]
    assert "jit=off" in setting[0]  # JIT spent ~100 ms compiling each 24 h panel's plan


# What the readings dashboard's variables listed through registry.device_locations; they now
# read the base tables, which indexes serve (the view's controller_mac, a coalesce over two
# joins, is not): at 100,000 controllers 1.4-2.2 s -> ~1 ms for $device (bench growth).
VIEW_CONTROLLERS = (
    "SELECT DISTINCT coalesce(controller_name, controller_mac) AS __text, controller_mac AS "
    "__value FROM registry.device_locations WHERE controller_mac IS NOT NULL ORDER BY 1"
)
VIEW_DEVICES = (
    "SELECT l.device_name || coalesce(' (' || l.controller_name || ' ' || l.connector || ')', "
    "'') AS __text, l.device_id AS __value FROM registry.device_locations AS l WHERE "
    "l.controller_mac IN ($controller) AND EXISTS (SELECT 1 FROM registry.datapoints AS dp "
    "WHERE dp.template_id = l.template_id) ORDER BY 1"
)


def test_the_readings_dashboard_variables_list_what_the_registry_view_lists(
    grafana_db: tuple[str, str],
) -> None:
    conninfo, reader = grafana_db
    board = json.loads((DASHBOARDS / "f2pipe-readings.json").read_text(encoding="utf-8"))
    queries = {var["name"]: var["query"] for var in board["templating"]["list"]}
    assert "device_locations" not in queries["controller"] + queries["device"]
    with psycopg.connect(conninfo) as conn:
        controllers = run_as(conn, reader, queries["controller"])
        assert controllers == run_as(conn, reader, VIEW_CONTROLLERS)
        macs = [str(row[1]) for row in controllers]
        assert len(macs) == 3
        for chosen in ([macs[0]], macs):  # one controller, and "All"
            variables = {"controller": chosen}
            devices = run_as(conn, reader, expand_macros(queries["device"], variables))
            expected = run_as(conn, reader, expand_macros(VIEW_DEVICES, variables))
            assert sorted(devices) == sorted(expected)
            assert devices, chosen

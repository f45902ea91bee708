"""`f2pipe migrate` and `f2pipe seed-demo` as an operator runs them, settings from the env."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

# The database layer: run on TimescaleDB and again on plain PostgreSQL (Makefile `test`).
pytestmark = [pytest.mark.integration, pytest.mark.database]


def f2pipe(conninfo: str, *args: str) -> subprocess.CompletedProcess[str]:
    params = conninfo_to_dict(conninfo)
    env = {
        **os.environ,
        "POSTGRES_HOST": str(params["host"]),
        "POSTGRES_PORT": str(params["port"]),
        "POSTGRES_USER": str(params["user"]),
        "POSTGRES_DB": str(params["dbname"]),
        "POSTGRES_SSLMODE": "disable",
        "POSTGRES_PASSWORD": str(params.get("password", "")),
    }
    for var in [v for v in env if v.startswith("TIMESCALE_")]:
        del env[var]
    return subprocess.run(
        [sys.executable, "-m", "f2pipe", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_migrate_twice_then_seed_100_controllers(pg_conninfo: str, tmp_path: Path) -> None:
    first = f2pipe(pg_conninfo, "migrate")
    assert first.returncode == 0, first.stderr
    assert "0001_storage_engine" in first.stdout
    second = f2pipe(pg_conninfo, "migrate")
    assert second.returncode == 0, second.stderr
    assert "nothing to apply" in second.stdout

    codes = tmp_path / "claim-codes.csv"
    seeded = f2pipe(pg_conninfo, "seed-demo", "--controllers", "100", "--claim-codes", str(codes))
    assert seeded.returncode == 0, seeded.stderr
    assert codes.stat().st_mode & 0o777 == 0o600
    assert "aabbccddee01" in codes.read_text()
    again = f2pipe(pg_conninfo, "seed-demo", "--controllers", "100")
    assert again.returncode == 0, again.stderr
    assert "claim codes of the new controllers" not in again.stdout  # nothing new to print

    with psycopg.connect(pg_conninfo) as conn:
        controllers = conn.execute(
            "SELECT count(*) FROM registry.devices WHERE mac IS NOT NULL"
        ).fetchone()
        per_controller = conn.execute(
            """SELECT min(n), max(n) FROM (
                 SELECT c.controller_id, count(*) AS n FROM registry.connectors c
                 GROUP BY c.controller_id) t"""
        ).fetchone()
        sensors = conn.execute(
            """SELECT d.device_id, dp.id FROM registry.device_locations d
               JOIN registry.devices dev ON dev.id = d.device_id
               JOIN registry.datapoints dp ON dp.template_id = dev.template_id
               WHERE d.controller_mac = 'aabbccddee01' AND d.component = 'sensor-1'
                 AND d.connector = 'J3'"""
        ).fetchall()
        assert sensors, "the first controller has a sensor on J3 position 1"
        conn.execute(
            "INSERT INTO telemetry.readings VALUES ('2026-11-24 10:00:00+00', %s, %s, 21.5)",
            sensors[0],
        )
        labeled = conn.execute(
            """SELECT controller_mac, connector, component, datapoint_label, value
               FROM telemetry.readings_labeled"""
        ).fetchall()
    assert controllers == (100,)
    assert per_controller == (4, 4)
    assert labeled == [("aabbccddee01", "J3", "sensor-1", labeled[0][3], 21.5)]
    assert labeled[0][3]


def test_migrate_reports_an_unreachable_database(tmp_path: Path) -> None:
    result = f2pipe("host=127.0.0.1 port=1 user=x dbname=x", "migrate")
    assert result.returncode == 1
    assert result.stderr.startswith("f2pipe migrate: database unreachable: ")
    assert "Traceback" not in result.stderr

"""The demo fleet: idempotent, complete, and visible through the label views."""

from __future__ import annotations

import csv
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from f2pipe.seed import CONNECTOR_MODES, LAYOUT, demo_mac, seed_demo
from f2pipe_shared.claimcodes import generate_claim_code, verify_claim_code

# The database layer: run on TimescaleDB and again on plain PostgreSQL (Makefile `test`).
pytestmark = [pytest.mark.integration, pytest.mark.database]

Conn = psycopg.Connection[Any]

SNAPSHOT = {
    "devices": "SELECT * FROM registry.devices ORDER BY id",
    "connectors": "SELECT * FROM registry.connectors ORDER BY id",
    "pins": "SELECT * FROM registry.pins ORDER BY id",
    "types": "SELECT * FROM registry.device_types ORDER BY id",
    "templates": "SELECT * FROM registry.device_templates ORDER BY id",
    "datapoints": "SELECT * FROM registry.datapoints ORDER BY id",
}


def snapshot(conn: Conn) -> dict[str, list[Any]]:
    return {name: conn.execute(query).fetchall() for name, query in SNAPSHOT.items()}


def test_demo_macs_count_on_past_a_byte() -> None:
    assert demo_mac(1) == "aabbccddee01"
    assert demo_mac(255) == "aabbccddeeff"
    assert demo_mac(256) == "aabbccddef00"
    assert demo_mac(1000) == "aabbccddf1e8"
    assert len({demo_mac(i) for i in range(1, 5001)}) == 5000
    with pytest.raises(ValueError, match="controller index"):
        demo_mac(0)


def test_seeding_twice_gives_exactly_one_fleet(migrated: str, conn: Conn) -> None:
    first = seed_demo(migrated, 100)
    assert (first.controllers_created, first.controllers_existing) == (100, 0)
    assert first.connectors_created == 400
    assert first.devices_created == first.pins_created == 100 * len(LAYOUT)
    assert first.device_types_created == 9
    assert first.templates_created == 8
    assert first.datapoints_created == 13
    assert first.changed
    before = snapshot(conn)

    second = seed_demo(migrated, 100)
    assert not second.changed
    assert (second.controllers_created, second.controllers_existing) == (0, 100)
    assert second.connectors_created == second.devices_created == second.pins_created == 0
    assert second.claim_codes == {}
    assert "nothing to do" in second.summary()
    assert snapshot(conn) == before  # not a row added, not a value changed (updated_at included)

    macs = [
        mac for (mac,) in conn.execute(
            "SELECT mac FROM registry.devices WHERE mac IS NOT NULL ORDER BY mac"
        ).fetchall()
    ]  # fmt: skip
    assert macs == [demo_mac(i) for i in range(1, 101)]


def test_every_controller_is_wired_as_the_layout_says(migrated: str, conn: Conn) -> None:
    seed_demo(migrated, 100)
    connectors = conn.execute(
        "SELECT c.controller_id, array_agg(c.name || ':' || c.mode ORDER BY c.name)"
        " FROM registry.connectors AS c GROUP BY 1"
    ).fetchall()
    assert len(connectors) == 100
    wanted = [f"{name}:{mode}" for name, mode in CONNECTOR_MODES.items()]
    assert all(layout == wanted for _, layout in connectors)

    placed = conn.execute(
        "SELECT controller_mac, connector, component, device_type, device_name"
        " FROM registry.device_locations WHERE pin_id IS NOT NULL"
    ).fetchall()
    assert len(placed) == 100 * len(LAYOUT)
    by_controller: dict[str, set[tuple[str, str, str]]] = {}
    for mac, connector, component, device_type, name in placed:
        by_controller.setdefault(mac, set()).add((connector, component, device_type))
        assert name == f"f2-{mac}/{connector}/{component}"
    layout = {(slot.connector, slot.component, slot.type_key) for slot in LAYOUT}
    assert len(by_controller) == 100
    assert all(slots == layout for slots in by_controller.values())
    # Every device on a pin has a template of its own type (the foreign key guarantees it).
    assert conn.execute(
        "SELECT count(*) FROM registry.device_locations"
        " WHERE pin_id IS NOT NULL AND template_id IS NULL"
    ).fetchone() == (0,)


def test_claim_codes_verify_against_their_hashes(migrated: str, conn: Conn) -> None:
    result = seed_demo(migrated, 20)
    assert sorted(result.claim_codes) == [demo_mac(i) for i in range(1, 21)]
    stored = dict(
        conn.execute(
            "SELECT mac, claim_code_hash FROM registry.devices WHERE mac IS NOT NULL"
        ).fetchall()
    )
    for mac, code in result.claim_codes.items():
        assert stored[mac].startswith("scrypt$")
        assert code not in stored[mac]
        assert verify_claim_code(code, stored[mac])
        assert not verify_claim_code(generate_claim_code(), stored[mac])
    assert len(set(result.claim_codes.values())) == 20
    for code in result.claim_codes.values():  # secrets stay out of logs
        assert code not in repr(result)
        assert code not in result.summary()


def test_claim_codes_file_is_private_and_lists_new_controllers_only(
    migrated: str, tmp_path: Path
) -> None:
    path = tmp_path / "claim-codes.csv"
    first = seed_demo(migrated, 3, claim_codes_path=path)
    assert first.claim_codes_path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    again = seed_demo(migrated, 3, claim_codes_path=path)
    assert again.claim_codes_path is None
    grown = seed_demo(migrated, 5, claim_codes_path=path)
    assert sorted(grown.claim_codes) == [demo_mac(4), demo_mac(5)]

    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["mac"] for row in rows] == [demo_mac(i) for i in range(1, 6)]
    assert rows[0]["name"] == f"f2-{demo_mac(1)}"
    codes = {**first.claim_codes, **grown.claim_codes}
    assert all(row["claim_code"] == codes[row["mac"]] for row in rows)


def test_an_existing_controller_keeps_what_an_operator_changed(migrated: str, conn: Conn) -> None:
    seed_demo(migrated, 2)
    conn.execute(
        "DELETE FROM registry.pins WHERE component = 'siren-1' AND connector_id IN"
        " (SELECT c.id FROM registry.connectors AS c JOIN registry.devices AS d"
        "  ON d.id = c.controller_id WHERE d.mac = %s)",
        (demo_mac(1),),
    )
    before = snapshot(conn)
    seed_demo(migrated, 2)
    assert snapshot(conn) == before


def test_seeded_sensors_show_up_in_the_label_views(migrated: str, conn: Conn) -> None:
    seed_demo(migrated, 3)
    env = conn.execute(
        "SELECT device_id, template_id FROM registry.device_locations"
        " WHERE controller_mac = %s AND connector = 'J3' AND component = 'sensor-1'",
        (demo_mac(2),),
    ).fetchone()
    reader = conn.execute(
        "SELECT device_id FROM registry.device_locations"
        " WHERE controller_mac = %s AND component = 'reader-1'",
        (demo_mac(3),),
    ).fetchone()
    assert env is not None
    assert reader is not None
    points = dict(
        conn.execute(
            "SELECT key, id FROM registry.datapoints WHERE template_id = %s", (env[1],)
        ).fetchall()
    )
    assert set(points) == {"temperature", "humidity", "co2"}

    # Yesterday: a fixed date falls out of the 365-day retention in time, and TimescaleDB's
    # retention job may then drop its chunk between two statements of this test.
    hour = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    readings = [
        (hour + timedelta(seconds=30 * i), env[0], points[key], value + i)
        for i in range(4)
        for key, value in (("temperature", 21.0), ("humidity", 40.0), ("co2", 600.0))
    ]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO telemetry.readings VALUES (%s, %s, %s, %s)", readings)
    conn.execute(
        "INSERT INTO telemetry.events VALUES (%s, %s, 'scan', %s::jsonb)",
        (hour, reader[0], '{"data": "QR-123"}'),
    )

    labeled = conn.execute(
        "SELECT controller_mac, connector, mode, component, position, device_type,"
        " datapoint_key, datapoint_label, unit, value FROM telemetry.readings_labeled"
        " WHERE datapoint_key = 'temperature' ORDER BY timestamp"
    ).fetchall()
    assert labeled[0] == (
        demo_mac(2), "J3", "sensor-mode", "sensor-1", 1, "environmental-sensor",
        "temperature", "Temperature", "°C", 21.0,
    )  # fmt: skip
    assert len(labeled) == 4
    assert conn.execute(
        "SELECT count(*) FROM telemetry.readings_labeled WHERE controller_mac IS NULL"
    ).fetchone() == (0,)

    hourly = conn.execute(
        'SELECT bucket, controller_mac, datapoint_key, unit, "avg", "min", "max", "count"'
        " FROM telemetry.readings_hourly_labeled ORDER BY datapoint_key"
    ).fetchall()
    assert hourly == [
        (hour, demo_mac(2), "co2", "ppm", 601.5, 600.0, 603.0, 4),
        (hour, demo_mac(2), "humidity", "%", 41.5, 40.0, 43.0, 4),
        (hour, demo_mac(2), "temperature", "°C", 22.5, 21.0, 24.0, 4),
    ]
    assert conn.execute(
        "SELECT controller_mac, connector, component, device_type, kind, data->>'data'"
        " FROM telemetry.events_labeled"
    ).fetchall() == [(demo_mac(3), "J1", "reader-1", "reader", "scan", "QR-123")]


def test_seeding_needs_the_schema_and_a_sane_count(pg_conninfo: str) -> None:
    with pytest.raises(ValueError, match="controllers must be"):
        seed_demo(pg_conninfo, -1)
    with pytest.raises(psycopg.errors.UndefinedTable):
        seed_demo(pg_conninfo, 1)

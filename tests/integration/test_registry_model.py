"""The registry read model's queries against PostgreSQL, migrated and seeded with the demo fleet."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from f2pipe.migrate import apply_migrations
from f2pipe.seed import CONNECTOR_MODES, DATAPOINTS, DEVICE_TEMPLATES, LAYOUT, demo_mac, seed_demo
from f2pipe_processor.registry import pack_template
from f2pipe_shared import registry
from f2pipe_shared.decoding import ByteOrder, Encoding, FrameFormat
from f2pipe_shared.registry import Connector, DeviceLocation, PinLookup

# Not `database`: the registry's tables and queries are the same on either storage engine,
# so the plain-PostgreSQL pass (make test) does not run them again.
pytestmark = pytest.mark.integration

CONTROLLERS = 3
MACS = [demo_mac(i) for i in range(1, CONTROLLERS + 1)]


@pytest.fixture
def seeded(pg_conninfo: str) -> str:
    apply_migrations(pg_conninfo)
    seed_demo(pg_conninfo, CONTROLLERS)
    return pg_conninfo


def template_ids(conninfo: str) -> dict[str, int]:
    with psycopg.connect(conninfo) as conn:
        return dict(conn.execute("SELECT key, id FROM registry.device_templates").fetchall())


def test_the_fleet_is_the_seeded_layout(seeded: str) -> None:
    ids = template_ids(seeded)
    with psycopg.connect(seeded) as conn:
        fleet = registry.fetch_fleet(conn)
    assert fleet.controllers == tuple(MACS)
    assert fleet.connectors == tuple(
        Connector(mac, name, mode) for mac in MACS for name, mode in CONNECTOR_MODES.items()
    )
    placed = [(loc.controller_mac, loc.connector, loc.mode, loc.component, loc.template_id)
              for loc in fleet.locations]  # fmt: skip
    assert placed == sorted(
        (mac, s.connector, CONNECTOR_MODES[s.connector], s.component, ids[s.template_key])
        for mac in MACS
        for s in LAYOUT
    )
    assert all(isinstance(loc, DeviceLocation) for loc in fleet.locations)
    assert len({loc.device_id for loc in fleet.locations}) == len(MACS) * len(LAYOUT)
    # The templates the pins use, every one of the seed's, with the seed's datapoints.
    assert {t.key for t in fleet.templates.values()} == {t["key"] for t in DEVICE_TEMPLATES}
    for template in fleet.templates.values():
        seeded_points = sorted(
            (p for p in DATAPOINTS if p["template_key"] == template.key),
            key=lambda p: p.get("sort_order", 0),
        )
        assert [dp.key for dp in template.datapoints] == [p["key"] for p in seeded_points]
        assert [dp.unit for dp in template.datapoints] == [p.get("unit") for p in seeded_points]


def test_templates_carry_their_decoding_spec_and_modbus_hints(seeded: str) -> None:
    ids = template_ids(seeded)
    with psycopg.connect(seeded) as conn:
        templates = registry.fetch_templates(conn, [ids["power-monitor-v1"], ids["strike-v1"]])
    assert set(templates) == {ids["power-monitor-v1"], ids["strike-v1"]}
    power = templates[ids["power-monitor-v1"]]
    assert (power.frame_format, power.verify_crc) == (FrameFormat.MODBUS_RTU, True)
    assert (power.modbus_address, power.modbus_function, power.modbus_register_count) == (2, 3, 6)
    assert power.data_length == 12
    voltage = power.frame_points[0]
    assert voltage.spec is not None
    assert (voltage.key, voltage.unit, voltage.chart_min, voltage.chart_max) == (
        "voltage", "V", 0.0, 260.0
    )  # fmt: skip
    assert (voltage.spec.offset, voltage.spec.encoding, voltage.spec.byte_order) == (
        0, Encoding.FLOAT32, ByteOrder.WORD_SWAPPED
    )  # fmt: skip
    strike = templates[ids["strike-v1"]]
    assert strike.frame_format is None
    assert [(dp.key, dp.field, dp.spec) for dp in strike.datapoints] == [("status", "status", None)]


def test_sync_and_async_read_the_same_templates_whatever_the_row_factory(seeded: str) -> None:
    ids = sorted(template_ids(seeded).values())

    async def read_async() -> tuple[Any, Any, Any]:
        async with await psycopg.AsyncConnection.connect(seeded, row_factory=dict_row) as conn:
            return (
                await registry.fetch_templates_async(conn),
                await registry.fetch_templates_async(conn, ids[:2]),
                await registry.fetch_templates_async(conn, []),
            )

    with psycopg.connect(seeded, row_factory=dict_row) as conn:
        every = registry.fetch_templates(conn)
        assert registry.fetch_templates(conn, ids) == every
        assert registry.fetch_templates(conn, [ids[-1] + 1000]) == {}
    assert sorted(every) == ids
    all_async, two, none = asyncio.run(read_async())
    assert all_async == every
    assert two == {i: every[i] for i in ids[:2]}
    assert none == {}


def test_some_controllers_or_none(seeded: str) -> None:
    with psycopg.connect(seeded) as conn:
        one = registry.fetch_fleet(conn, [MACS[1], "0123456789ab"])
        empty = registry.fetch_fleet(conn, [])
        everything = registry.fetch_locations(conn)
    assert one.controllers == (MACS[1],)
    assert {c.controller_mac for c in one.connectors} == {MACS[1]}
    assert {loc.controller_mac for loc in one.locations} == {MACS[1]}
    assert len(one.locations) == len(LAYOUT)
    assert (empty.controllers, empty.connectors, empty.locations) == ((), (), ())
    assert dict(empty.templates) == {}
    assert len(everything) == len(MACS) * len(LAYOUT)


def test_pin_lookups_say_how_far_the_chain_goes(seeded: str) -> None:
    mac = MACS[0]
    with psycopg.connect(seeded, autocommit=True) as conn:
        ids: dict[str, int] = dict(
            conn.execute(
                "SELECT c.name, c.id FROM registry.connectors c"
                " JOIN registry.devices d ON d.id = c.controller_id WHERE d.mac = %s",
                (mac,),
            ).fetchall()
        )
        row = conn.execute("SELECT id FROM registry.devices WHERE mac = %s", (mac,)).fetchone()
        assert row is not None
        controller_id, j3 = row[0], ids["J3"]
        sensor = next(
            loc
            for loc in registry.fetch_locations(conn, [mac])
            if (loc.connector, loc.component) == ("J3", "sensor-3")
        )
        conn.execute("DELETE FROM registry.connectors WHERE id = %s", (ids["J4"],))

    keys = [
        (mac, "J3", "sensor-3"),
        (mac, "J3", "sensor-6"),  # nothing on that pin
        (mac, "J4", "sensor-1"),  # no such connector (deleted)
        ("0123456789ab", "J3", "sensor-1"),  # no such controller
        (mac, "J3", "sensor-3"),  # asked twice: answered once
    ]

    async def lookup() -> tuple[dict[Any, PinLookup], dict[Any, PinLookup]]:
        async with await psycopg.AsyncConnection.connect(seeded, autocommit=True) as conn:
            return (
                await registry.lookup_pins_async(conn, keys),
                await registry.lookup_pins_async(conn, []),
            )

    found, nothing = asyncio.run(lookup())
    assert nothing == {}
    assert found == {
        (mac, "J3", "sensor-3"): PinLookup(
            mac, "J3", "sensor-3", controller_id, j3, "sensor-mode",
            sensor.device_id, sensor.template_id,
        ),
        (mac, "J3", "sensor-6"): PinLookup(
            mac, "J3", "sensor-6", controller_id, j3, "sensor-mode", None, None
        ),
        (mac, "J4", "sensor-1"): PinLookup(
            mac, "J4", "sensor-1", controller_id, None, None, None, None
        ),
        ("0123456789ab", "J3", "sensor-1"): PinLookup(
            "0123456789ab", "J3", "sensor-1", None, None, None, None, None
        ),
    }  # fmt: skip


def test_controller_macs_behind_changed_rows(seeded: str) -> None:
    with psycopg.connect(seeded) as conn:
        rows = conn.execute(
            "SELECT controller_mac, controller_id, connector_id, device_id"
            " FROM registry.device_locations WHERE pin_id IS NOT NULL AND component = 'siren-1'"
            " ORDER BY controller_mac"
        ).fetchall()
    by_mac = {mac: (ctl, connector, device) for mac, ctl, connector, device in rows}

    async def macs(**ids: list[int]) -> set[str]:
        async with await psycopg.AsyncConnection.connect(seeded) as conn:
            return await registry.controller_macs_async(conn, **ids)

    assert asyncio.run(macs()) == set()
    assert asyncio.run(macs(controllers=[by_mac[MACS[0]][0]])) == {MACS[0]}
    assert asyncio.run(macs(connectors=[by_mac[MACS[1]][1]])) == {MACS[1]}
    assert asyncio.run(macs(devices=[by_mac[MACS[2]][2], by_mac[MACS[0]][2]])) == {
        MACS[0],
        MACS[2],
    }
    # device_locations lists controllers too: a controller's own id gives its MAC.
    assert asyncio.run(macs(devices=[by_mac[MACS[1]][0]])) == {MACS[1]}


# What the processor's Redis cache held before the read model was shared: the datapoint
# columns as the database has them. Its rows must not change (old entries stay readable).
_PROCESSOR_TEMPLATE_ROWS = """
SELECT t.id, t.key, t.frame_format, t.verify_crc,
       dp.id, dp.key, dp."offset", dp.length, dp.encoding, dp.byte_order, dp.decimals, dp.field
FROM registry.device_templates AS t
LEFT JOIN registry.datapoints AS dp ON dp.template_id = t.id
ORDER BY t.id, dp.sort_order, dp.id
"""


def test_the_processors_redis_rows_are_what_they_were(seeded: str) -> None:
    with psycopg.connect(seeded) as conn:
        templates = registry.fetch_templates(conn)
        expected: dict[int, tuple[Any, ...]] = {}
        for tid, key, fmt, crc, *point in conn.execute(_PROCESSOR_TEMPLATE_ROWS).fetchall():
            entry = expected.setdefault(tid, (tid, key, fmt, crc, []))
            if point[0] is not None:
                entry[4].append(tuple(point))
    assert {tid: pack_template(t) for tid, t in templates.items()} == expected

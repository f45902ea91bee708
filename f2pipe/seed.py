"""A demo fleet in the registry: device types, templates with datapoints, and N controllers.

Controller i (1-based) has MAC ``aabbccddee00 + i`` (aa:bb:cc:dd:ee:01, ...; past 255 the count
carries into the next byte, ...ef00, so MACs stay unique and valid) and the name
``f2-<mac>``. Each new controller gets connectors J1-J4 with sensor devices on pins (LAYOUT)
and a fresh claim code, of which only the hash is stored.

Idempotent: reference rows are inserted when missing and never changed; a controller that
exists already is left exactly as it is (its connectors, devices and claim code included), so
running it again adds nothing and changes nothing. Everything runs in one transaction with
set-based statements (arrays, not a round trip per row).

The claim codes of new controllers are in the result (for the CLI to print once) and, when a
path is given, appended to a CSV file created with mode 0600 (mac,name,claim_code). The file
is written before the transaction commits: if the commit then failed, the file would list
codes of controllers that do not exist (harmless), never the other way round.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from f2pipe_shared.claimcodes import generate_claim_code, hash_claim_code

Connection = psycopg.Connection[TupleRow]

BASE_MAC = 0xAABBCCDDEE00
MAX_CONTROLLERS = 1_000_000
# Serialises concurrent seeds ('f2seed' in ASCII); the unique MAC would catch a race anyway.
SEED_LOCK_KEY = 0x663273656564

SENSOR_MODE = "sensor-mode"
ACCESS_MODE = "access-control-mode"
ALARM_MODE = "alarm-mode"

DEVICE_TYPES: Sequence[Mapping[str, Any]] = (
    {"key": "controller", "name": "F2 Smart Controller", "is_controller": True},
    {"key": "environmental-sensor", "name": "Environmental sensor (RS-485)",
     "component": "sensor", "mode": SENSOR_MODE},
    {"key": "power-monitor", "name": "Power monitor (RS-485)",
     "component": "sensor", "mode": SENSOR_MODE},
    {"key": "door-sensor-pair", "name": "Door sensor pair",
     "component": "door-sensors", "mode": ACCESS_MODE},
    {"key": "exit-buttons", "name": "Exit buttons",
     "component": "exit-buttons", "mode": ACCESS_MODE},
    {"key": "reader", "name": "QR / NFC reader", "component": "reader", "mode": ACCESS_MODE},
    {"key": "strike", "name": "Door strike", "component": "strike", "mode": ACCESS_MODE},
    {"key": "motion-sensor", "name": "Motion sensor",
     "component": "motion-sensor", "mode": ALARM_MODE},
    {"key": "siren", "name": "Siren", "component": "siren", "mode": ALARM_MODE},
)  # fmt: skip

# Frame templates read a Modbus RTU read-holding-registers response; offsets count from the
# first data byte. The power monitor sends its float32 values low word first ("word_swapped",
# CDAB), as many meters do: each 16-bit register is big-endian, the two registers swapped.
DEVICE_TEMPLATES: Sequence[Mapping[str, Any]] = (
    {"key": "environmental-sensor-v1", "type_key": "environmental-sensor",
     "name": "Environmental sensor: temperature, humidity, CO2",
     "frame_format": "modbus_rtu", "verify_crc": True,
     "modbus_address": 1, "modbus_function": 3, "modbus_register": 0,
     "modbus_register_count": 3},
    {"key": "power-monitor-v1", "type_key": "power-monitor",
     "name": "Power monitor: voltage, current, power (float32, word-swapped)",
     "frame_format": "modbus_rtu", "verify_crc": True,
     "modbus_address": 2, "modbus_function": 3, "modbus_register": 0,
     "modbus_register_count": 6},
    {"key": "door-sensor-pair-v1", "type_key": "door-sensor-pair", "name": "Door sensor pair"},
    {"key": "exit-buttons-v1", "type_key": "exit-buttons", "name": "Exit buttons"},
    {"key": "reader-v1", "type_key": "reader", "name": "QR / NFC reader (scans are events)"},
    {"key": "strike-v1", "type_key": "strike", "name": "Door strike"},
    {"key": "motion-sensor-v1", "type_key": "motion-sensor", "name": "Motion sensor"},
    {"key": "siren-v1", "type_key": "siren", "name": "Siren"},
)  # fmt: skip


def _frame_point(template: str, key: str, label: str, unit: str, **spec: Any) -> dict[str, Any]:
    return {
        "template_key": template,
        "key": key,
        "label": label,
        "unit": unit,
        "chart_type": "line",
        **spec,
    }


def _state_point(template: str, key: str, label: str, sort_order: int = 0) -> dict[str, Any]:
    return {
        "template_key": template,
        "key": key,
        "label": label,
        "field": key,
        "chart_type": "state",
        "chart_min": 0,
        "chart_max": 1,
        "sort_order": sort_order,
    }


DATAPOINTS: Sequence[Mapping[str, Any]] = (
    _frame_point("environmental-sensor-v1", "temperature", "Temperature", "°C",
                 offset=0, length=2, encoding="int16", decimals=2,
                 chart_min=-20, chart_max=50, chart_color="#e05d44", sort_order=1),
    _frame_point("environmental-sensor-v1", "humidity", "Relative humidity", "%",
                 offset=2, length=2, encoding="uint16", decimals=2,
                 chart_min=0, chart_max=100, chart_color="#4c9ee0", sort_order=2),
    _frame_point("environmental-sensor-v1", "co2", "CO2", "ppm",
                 offset=4, length=2, encoding="uint16", decimals=0,
                 chart_min=400, chart_max=5000, chart_color="#7a7a7a", sort_order=3),
    _frame_point("power-monitor-v1", "voltage", "Voltage", "V",
                 offset=0, length=4, encoding="float32", byte_order="word_swapped",
                 decimals=0, chart_min=0, chart_max=260, sort_order=1),
    _frame_point("power-monitor-v1", "current", "Current", "A",
                 offset=4, length=4, encoding="float32", byte_order="word_swapped",
                 decimals=0, chart_min=0, chart_max=63, sort_order=2),
    _frame_point("power-monitor-v1", "power", "Active power", "W",
                 offset=8, length=4, encoding="float32", byte_order="word_swapped",
                 decimals=0, chart_min=0, chart_max=15000, sort_order=3),
    _state_point("door-sensor-pair-v1", "door-sensor-1", "Door sensor 1", 1),
    _state_point("door-sensor-pair-v1", "door-sensor-2", "Door sensor 2", 2),
    _state_point("exit-buttons-v1", "exit-button-1", "Exit button 1", 1),
    _state_point("exit-buttons-v1", "exit-button-2", "Exit button 2", 2),
    _state_point("strike-v1", "status", "Strike powered"),
    _state_point("motion-sensor-v1", "status", "Motion"),
    _state_point("siren-v1", "status", "Siren on"),
)  # fmt: skip

CONNECTOR_MODES: Mapping[str, str] = {
    "J1": ACCESS_MODE,
    "J2": ALARM_MODE,
    "J3": SENSOR_MODE,
    "J4": SENSOR_MODE,
}


class Slot(NamedTuple):
    """One device of the demo layout: where it sits and what it is."""

    connector: str
    component: str
    type_key: str
    template_key: str


LAYOUT: Sequence[Slot] = (
    Slot("J1", "door-sensors", "door-sensor-pair", "door-sensor-pair-v1"),
    Slot("J1", "exit-buttons", "exit-buttons", "exit-buttons-v1"),
    Slot("J1", "reader-1", "reader", "reader-v1"),
    Slot("J1", "strike-1", "strike", "strike-v1"),
    Slot("J2", "motion-sensor-1", "motion-sensor", "motion-sensor-v1"),
    Slot("J2", "motion-sensor-2", "motion-sensor", "motion-sensor-v1"),
    Slot("J2", "siren-1", "siren", "siren-v1"),
    Slot("J3", "sensor-1", "environmental-sensor", "environmental-sensor-v1"),
    Slot("J3", "sensor-2", "environmental-sensor", "environmental-sensor-v1"),
    Slot("J3", "sensor-3", "power-monitor", "power-monitor-v1"),
    Slot("J4", "sensor-1", "environmental-sensor", "environmental-sensor-v1"),
    Slot("J4", "sensor-2", "power-monitor", "power-monitor-v1"),
)


@dataclass(frozen=True)
class SeedResult:
    """What one seed_demo call created (zeros on a repeat run)."""

    controllers_created: int
    controllers_existing: int
    connectors_created: int
    devices_created: int  # devices on pins (sensors, readers, strikes...), not controllers
    pins_created: int
    device_types_created: int
    templates_created: int
    datapoints_created: int
    # MAC -> claim code of the controllers created by this call; the only copy of the codes.
    claim_codes: Mapping[str, str] = field(repr=False)
    claim_codes_path: Path | None = None

    def summary(self) -> str:
        """One line for the operator; never contains the claim codes."""
        if not self.changed:
            return (
                f"seed-demo: nothing to do ({self.controllers_existing} controllers "
                "already there, reference data complete)"
            )
        return (
            f"seed-demo: {self.controllers_created} controllers created "
            f"({self.controllers_existing} already there), {self.connectors_created} connectors, "
            f"{self.devices_created} devices on pins; reference data: "
            f"{self.device_types_created} device types, {self.templates_created} templates, "
            f"{self.datapoints_created} datapoints"
        )

    @property
    def changed(self) -> bool:
        return any((self.controllers_created, self.device_types_created,
                    self.templates_created, self.datapoints_created))  # fmt: skip


def demo_mac(index: int) -> str:
    """The MAC of demo controller ``index`` (1-based), as 12 lowercase hex digits."""
    if not 1 <= index <= MAX_CONTROLLERS:
        raise ValueError(f"controller index must be 1..{MAX_CONTROLLERS}")
    return f"{BASE_MAC + index:012x}"


def controller_name(mac: str) -> str:
    return f"f2-{mac}"


def seed_demo(conninfo: str, controllers: int, claim_codes_path: Path | None = None) -> SeedResult:
    """Make sure the demo reference data and controllers 1..``controllers`` exist."""
    if not 0 <= controllers <= MAX_CONTROLLERS:
        raise ValueError(f"controllers must be 0..{MAX_CONTROLLERS}, not {controllers}")
    macs = [demo_mac(i) for i in range(1, controllers + 1)]
    with psycopg.connect(conninfo, application_name="f2pipe-seed") as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SEED_LOCK_KEY,))
        types, templates, datapoints = _seed_reference(conn)
        missing = _missing_macs(conn, macs)
        hashed = _hash_new_codes({mac: generate_claim_code() for mac in missing})
        created = _insert_controllers(conn, hashed)
        connectors = _insert_connectors(conn, created.values())
        devices = _insert_layout(conn, created, connectors)
        codes = {mac: hashed[mac][0] for mac in created}
        if claim_codes_path is not None and codes:
            write_claim_codes(claim_codes_path, codes)
    # Leaving the block committed the transaction.
    return SeedResult(
        controllers_created=len(created),
        controllers_existing=len(macs) - len(created),
        connectors_created=len(connectors),
        devices_created=devices,
        pins_created=devices,
        device_types_created=types,
        templates_created=templates,
        datapoints_created=datapoints,
        claim_codes=codes,
        claim_codes_path=claim_codes_path if codes else None,
    )


def _seed_reference(conn: Connection) -> tuple[int, int, int]:
    """Insert missing device types, templates and datapoints; return how many of each."""
    types = conn.execute(
        """
        INSERT INTO registry.device_types (key, name, is_controller, component, mode)
        SELECT key, name, coalesce(is_controller, false), component, mode
        FROM jsonb_to_recordset(%s)
            AS x (key text, name text, is_controller boolean, component text, mode text)
        ON CONFLICT (key) DO NOTHING
        """,
        (Jsonb(list(DEVICE_TYPES)),),
    ).rowcount
    templates = conn.execute(
        """
        INSERT INTO registry.device_templates (
            device_type_id, key, name, frame_format, verify_crc,
            modbus_address, modbus_function, modbus_register, modbus_register_count)
        SELECT t.id, x.key, x.name, x.frame_format, coalesce(x.verify_crc, false),
               x.modbus_address, x.modbus_function, x.modbus_register, x.modbus_register_count
        FROM jsonb_to_recordset(%s) AS x (
            key text, type_key text, name text, frame_format text, verify_crc boolean,
            modbus_address smallint, modbus_function smallint, modbus_register integer,
            modbus_register_count smallint)
        JOIN registry.device_types AS t ON t.key = x.type_key
        ON CONFLICT (key) DO NOTHING
        """,
        (Jsonb(list(DEVICE_TEMPLATES)),),
    ).rowcount
    datapoints = conn.execute(
        """
        INSERT INTO registry.datapoints (
            template_id, key, label, unit, "offset", length, encoding, byte_order, decimals,
            field, chart_min, chart_max, chart_type, chart_color, sort_order)
        SELECT tp.id, x.key, x.label, x.unit, x."offset", x.length, x.encoding,
               coalesce(x.byte_order, 'big'), x.decimals, x.field, x.chart_min, x.chart_max,
               x.chart_type, x.chart_color, coalesce(x.sort_order, 0)
        FROM jsonb_to_recordset(%s) AS x (
            template_key text, key text, label text, unit text, "offset" integer,
            length integer, encoding text, byte_order text, decimals smallint, field text,
            chart_min double precision, chart_max double precision, chart_type text,
            chart_color text, sort_order smallint)
        JOIN registry.device_templates AS tp ON tp.key = x.template_key
        ON CONFLICT (template_id, key) DO NOTHING
        """,
        (Jsonb(list(DATAPOINTS)),),
    ).rowcount
    return types, templates, datapoints


def _missing_macs(conn: Connection, macs: list[str]) -> list[str]:
    existing = {
        mac
        for (mac,) in conn.execute(
            "SELECT mac FROM registry.devices WHERE mac = ANY(%s)", (macs,)
        ).fetchall()
    }
    return [mac for mac in macs if mac not in existing]


def _hash_new_codes(codes: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """MAC -> (code, hash). scrypt releases the GIL, so threads use every core."""
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        hashes = list(pool.map(hash_claim_code, codes.values()))
    return {mac: (code, digest) for (mac, code), digest in zip(codes.items(), hashes, strict=True)}


def _insert_controllers(conn: Connection, hashed: Mapping[str, tuple[str, str]]) -> dict[str, int]:
    """Insert the controllers; return MAC -> id of those actually created."""
    if not hashed:
        return {}
    macs = list(hashed)
    rows = conn.execute(
        """
        INSERT INTO registry.devices (device_type_id, name, mac, claim_code_hash)
        SELECT t.id, 'f2-' || x.mac, x.mac, x.claim_code_hash
        FROM unnest(%s::text[], %s::text[]) AS x (mac, claim_code_hash)
        JOIN registry.device_types AS t ON t.key = 'controller'
        ON CONFLICT (mac) DO NOTHING
        RETURNING mac, id
        """,
        (macs, [hashed[mac][1] for mac in macs]),
    ).fetchall()
    return dict(rows)


def _insert_connectors(
    conn: Connection, controller_ids: Iterable[int]
) -> dict[tuple[int, str], int]:
    """Connectors J1-J4 for each controller; return (controller id, name) -> connector id."""
    ids = list(controller_ids)
    if not ids:
        return {}
    rows = conn.execute(
        """
        INSERT INTO registry.connectors (controller_id, name, mode)
        SELECT c.id, j.name, j.mode
        FROM unnest(%s::bigint[]) AS c (id)
        CROSS JOIN unnest(%s::text[], %s::text[]) AS j (name, mode)
        RETURNING controller_id, name, id
        """,
        (ids, list(CONNECTOR_MODES), list(CONNECTOR_MODES.values())),
    ).fetchall()
    return {(controller_id, name): connector_id for controller_id, name, connector_id in rows}


def _insert_layout(
    conn: Connection,
    controllers: Mapping[str, int],
    connectors: Mapping[tuple[int, str], int],
) -> int:
    """The LAYOUT's devices and their pins for each new controller; return how many."""
    slots = [(mac, cid, slot) for mac, cid in controllers.items() for slot in LAYOUT]
    if not slots:
        return 0
    # Ids are drawn up front so devices and pins go in as two array inserts, with no need to
    # match RETURNING rows back to slots.
    device_ids = [
        device_id
        for (device_id,) in conn.execute(
            "SELECT nextval(pg_get_serial_sequence('registry.devices', 'id'))"
            " FROM generate_series(1, %s)",
            (len(slots),),
        ).fetchall()
    ]
    conn.execute(
        """
        INSERT INTO registry.devices (id, device_type_id, template_id, name)
        SELECT x.id, t.id, tp.id, x.name
        FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[])
            AS x (id, type_key, template_key, name)
        JOIN registry.device_types AS t ON t.key = x.type_key
        JOIN registry.device_templates AS tp ON tp.key = x.template_key
        """,
        (
            device_ids,
            [slot.type_key for _, _, slot in slots],
            [slot.template_key for _, _, slot in slots],
            [f"{controller_name(mac)}/{slot.connector}/{slot.component}" for mac, _, slot in slots],
        ),
    )
    conn.execute(
        """
        INSERT INTO registry.pins (connector_id, component, device_id)
        SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bigint[])
        """,
        (
            [connectors[(cid, slot.connector)] for _, cid, slot in slots],
            [slot.component for _, _, slot in slots],
            device_ids,
        ),
    )
    return len(slots)


def claim_codes_csv(codes: Mapping[str, str], *, header: bool = True) -> str:
    """The codes as CSV lines ``mac,name,claim_code``, for printing or for a file."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(["mac", "name", "claim_code"])
    for mac, code in codes.items():
        writer.writerow([mac, controller_name(mac), code])
    return buffer.getvalue()


def write_claim_codes(path: Path, codes: Mapping[str, str]) -> None:
    """Append codes to ``path`` (created 0600, header when new), flushed to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        # A file that existed with looser permissions is tightened: it holds secrets.
        os.fchmod(out.fileno(), 0o600)
        out.write(claim_codes_csv(codes, header=os.fstat(out.fileno()).st_size == 0))
        out.flush()
        os.fsync(out.fileno())

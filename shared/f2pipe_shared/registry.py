"""The registry's read model: templates with their datapoints, and where each device sits.

Every service that reads the registry reads it here: the processor (one batched lookup per
batch of distinct topics, and the templates it decodes with), the simulator and the test kit
(the whole fleet at start-up), and whatever else needs the same answers. The SQL is in this
module only; the results are plain frozen values, with no connection or ORM behind them.

- ``Template`` / ``Datapoint``: a row of ``registry.device_templates`` with its
  ``registry.datapoints`` (in ``sort_order``), each frame datapoint with its ``DecodingSpec``.
- ``DeviceLocation``: a device on a pin, from ``registry.device_locations``.
- ``PinLookup``: what the registry holds at (controller MAC, connector, component), as far as
  it goes, so a caller can tell an unknown MAC from an empty pin.
- ``Fleet``: controllers, connectors, devices on pins and their templates, read together.

Sync functions take a ``psycopg.Connection``, the ``*_async`` ones a ``psycopg.AsyncConnection``;
both read positional rows whatever the connection's row factory. Neither opens, commits nor
closes anything: connections, timeouts and retries are the caller's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeAlias

import psycopg
from psycopg.rows import args_row, tuple_row

from f2pipe_shared.decoding import DecodingSpec, FrameFormat

# The defaults a Modbus RTU frame falls back to when a template gives no hint.
DEFAULT_MODBUS_ADDRESS = 1
DEFAULT_MODBUS_FUNCTION = 3  # read holding registers

# (controller MAC, connector, component): how a topic names a pin.
PinKey: TypeAlias = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Datapoint:
    """One datapoint of a template: read from a frame (``spec``) or a JSON field (``field``)."""

    id: int
    key: str
    unit: str | None = None
    spec: DecodingSpec | None = None
    field: str | None = None  # wire name of the boolean payload field ("door-sensor-1")
    chart_min: float | None = None
    chart_max: float | None = None

    @classmethod
    def from_columns(
        cls,
        id: int,
        key: str,
        *,
        unit: str | None = None,
        offset: int | None = None,
        length: int | None = None,
        encoding: str | None = None,
        byte_order: str | None = None,
        decimals: int | None = None,
        field: str | None = None,
        chart_min: float | None = None,
        chart_max: float | None = None,
    ) -> Datapoint:
        """A datapoint from its ``registry.datapoints`` columns (ValueError on a bad spec).

        A field datapoint has no spec; a frame datapoint gets one (``byte_order`` NULL reads
        as big-endian, ``decimals`` NULL as 0, ``length`` NULL as the encoding's size).
        """
        spec = None
        if field is None and encoding is not None:
            spec = DecodingSpec.model_validate(
                {
                    "offset": offset,
                    "length": length,
                    "encoding": encoding,
                    "byte_order": byte_order or "big",
                    "decimals": decimals or 0,
                }
            )
        return cls(
            id=int(id),
            key=str(key),
            unit=None if unit is None else str(unit),
            spec=spec,
            field=None if field is None else str(field),
            chart_min=None if chart_min is None else float(chart_min),
            chart_max=None if chart_max is None else float(chart_max),
        )


@dataclass(frozen=True, slots=True)
class Template:
    """How a kind of device sends its values: frame layout and datapoints, in sort order."""

    id: int
    key: str
    frame_format: FrameFormat | None = None  # None: the device sends JSON fields, no frame
    verify_crc: bool = False
    # The Modbus RTU request the controller polls with: the template's hints, or the defaults.
    modbus_address: int = DEFAULT_MODBUS_ADDRESS
    modbus_function: int = DEFAULT_MODBUS_FUNCTION
    modbus_register_count: int | None = None
    datapoints: tuple[Datapoint, ...] = ()
    # Derived from datapoints, in their order: those read from a frame, those from a field.
    frame_points: tuple[Datapoint, ...] = field(init=False, repr=False, compare=False)
    field_points: tuple[Datapoint, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        frames = tuple(dp for dp in self.datapoints if dp.spec is not None)
        fields = tuple(dp for dp in self.datapoints if dp.field is not None)
        object.__setattr__(self, "frame_points", frames)
        object.__setattr__(self, "field_points", fields)

    @property
    def data_length(self) -> int:
        """Data bytes of a frame: the polled registers, or at least what the datapoints need."""
        needed = max((dp.spec.end for dp in self.frame_points if dp.spec), default=0)
        polled = 2 * (self.modbus_register_count or 0)
        return max(needed, polled)


class DeviceLocation(NamedTuple):
    """A device on a pin: controller, connector (and its mode), component; what sits there."""

    controller_mac: str
    connector: str
    mode: str
    component: str
    device_id: int
    template_id: int | None


class Connector(NamedTuple):
    controller_mac: str
    name: str  # J1..J4
    mode: str


class PinLookup(NamedTuple):
    """The registry at one (MAC, connector, component); None where the chain stops."""

    mac: str
    connector: str
    component: str
    controller_id: int | None  # None: no controller with that MAC
    connector_id: int | None  # None: the controller has no such connector
    connector_mode: str | None
    device_id: int | None  # None: nothing on that pin
    template_id: int | None


@dataclass(frozen=True, slots=True)
class Fleet:
    """Controllers (MACs, in order) with their connectors, devices on pins and templates."""

    controllers: tuple[str, ...]
    connectors: tuple[Connector, ...]
    locations: tuple[DeviceLocation, ...]  # ordered by MAC, connector, component
    templates: Mapping[int, Template]  # those the locations use


# --- SQL ------------------------------------------------------------------------------------------

# Template columns, then datapoint columns (NULL for a template without datapoints): the row
# layout templates_from_rows reads.
_TEMPLATES_SELECT = """
SELECT t.id, t.key, t.frame_format, t.verify_crc, t.modbus_address, t.modbus_function,
       t.modbus_register_count,
       dp.id, dp.key, dp.unit, dp."offset", dp.length, dp.encoding, dp.byte_order, dp.decimals,
       dp.field, dp.chart_min, dp.chart_max
FROM registry.device_templates AS t
LEFT JOIN registry.datapoints AS dp ON dp.template_id = t.id
"""
_TEMPLATES_ORDER = "ORDER BY t.id, dp.sort_order, dp.id\n"
_TEMPLATES_SQL = _TEMPLATES_SELECT + "WHERE t.id = ANY(%s::integer[])\n" + _TEMPLATES_ORDER
_ALL_TEMPLATES_SQL = _TEMPLATES_SELECT + _TEMPLATES_ORDER

_CONTROLLERS_SQL = """
SELECT d.mac
FROM registry.devices AS d
JOIN registry.device_types AS t ON t.id = d.device_type_id
WHERE t.is_controller AND d.mac IS NOT NULL
  AND (%(macs)s::text[] IS NULL OR d.mac = ANY(%(macs)s::text[]))
ORDER BY d.mac
"""

_CONNECTORS_SQL = """
SELECT ctl.mac, c.name, c.mode
FROM registry.connectors AS c
JOIN registry.devices AS ctl ON ctl.id = c.controller_id
WHERE ctl.mac IS NOT NULL AND (%(macs)s::text[] IS NULL OR ctl.mac = ANY(%(macs)s::text[]))
ORDER BY ctl.mac, c.name
"""

_LOCATIONS_SQL = """
SELECT l.controller_mac, l.connector, l.mode, l.component, l.device_id, l.template_id
FROM registry.device_locations AS l
WHERE l.pin_id IS NOT NULL
  AND (%(macs)s::text[] IS NULL OR l.controller_mac = ANY(%(macs)s::text[]))
ORDER BY l.controller_mac, l.connector, l.component
"""

# One row per key, however far the chain MAC -> connector -> pin -> device gets.
_PIN_LOOKUP_SQL = """
SELECT k.mac, k.connector, k.component, ctl.id, c.id, c.mode, p.device_id, d.template_id
FROM unnest(%s::text[], %s::text[], %s::text[]) AS k (mac, connector, component)
LEFT JOIN registry.devices AS ctl ON ctl.mac = k.mac
LEFT JOIN registry.connectors AS c ON c.controller_id = ctl.id AND c.name = k.connector
LEFT JOIN registry.pins AS p ON p.connector_id = c.id AND p.component = k.component
LEFT JOIN registry.devices AS d ON d.id = p.device_id
"""

# The controllers' MACs behind registry rows (controllers, connectors, devices on pins).
_CONTROLLER_MACS_SQL = """
SELECT mac FROM registry.devices WHERE mac IS NOT NULL AND id = ANY(%(controllers)s)
UNION
SELECT d.mac FROM registry.connectors AS c JOIN registry.devices AS d ON d.id = c.controller_id
WHERE c.id = ANY(%(connectors)s)
UNION
SELECT controller_mac FROM registry.device_locations
WHERE controller_mac IS NOT NULL AND device_id = ANY(%(devices)s)
"""


# --- rows -> values -------------------------------------------------------------------------------


def templates_from_rows(rows: Iterable[Sequence[Any]]) -> dict[int, Template]:
    """Templates from rows of the templates query: one per datapoint, grouped by template.

    Columns: template id, key, frame_format, verify_crc, modbus_address, modbus_function,
    modbus_register_count; then datapoint id, key, unit, offset, length, encoding, byte_order,
    decimals, field, chart_min, chart_max (all NULL for a template without datapoints).
    """
    heads: dict[int, Sequence[Any]] = {}
    points: dict[int, list[Datapoint]] = {}
    for row in rows:
        template_id = int(row[0])
        if template_id not in heads:
            heads[template_id] = row[:7]
            points[template_id] = []
        if row[7] is None:  # LEFT JOIN: a template without datapoints
            continue
        dp_id, key, unit, offset, length, encoding, byte_order, decimals, fld, cmin, cmax = row[7:]
        points[template_id].append(
            Datapoint.from_columns(
                dp_id,
                key,
                unit=unit,
                offset=offset,
                length=length,
                encoding=encoding,
                byte_order=byte_order,
                decimals=decimals,
                field=fld,
                chart_min=cmin,
                chart_max=cmax,
            )
        )
    templates: dict[int, Template] = {}
    for template_id, head in heads.items():
        _, key, frame_format, verify_crc, address, function, registers = head
        templates[template_id] = Template(
            id=template_id,
            key=str(key),
            frame_format=None if frame_format is None else FrameFormat(str(frame_format)),
            verify_crc=bool(verify_crc),
            modbus_address=DEFAULT_MODBUS_ADDRESS if address is None else int(address),
            modbus_function=DEFAULT_MODBUS_FUNCTION if function is None else int(function),
            modbus_register_count=None if registers is None else int(registers),
            datapoints=tuple(points[template_id]),
        )
    return templates


def _templates_query(ids: Iterable[int] | None) -> tuple[str, tuple[Any, ...]]:
    if ids is None:
        return _ALL_TEMPLATES_SQL, ()
    return _TEMPLATES_SQL, (list(ids),)


def _pin_params(keys: Iterable[PinKey]) -> tuple[list[str], list[str], list[str]]:
    distinct = list(dict.fromkeys(keys))
    return [k[0] for k in distinct], [k[1] for k in distinct], [k[2] for k in distinct]


def _macs_params(
    controllers: Iterable[int], connectors: Iterable[int], devices: Iterable[int]
) -> dict[str, list[int]]:
    return {
        "controllers": list(controllers),
        "connectors": list(connectors),
        "devices": list(devices),
    }


def _macs(macs: Iterable[str] | None) -> dict[str, list[str] | None]:
    return {"macs": None if macs is None else list(macs)}


# --- sync (psycopg.Connection) --------------------------------------------------------------------


def fetch_templates(
    conn: psycopg.Connection[Any], ids: Iterable[int] | None = None
) -> dict[int, Template]:
    """Template id -> template, for ``ids`` (every template when None); missing ids are absent."""
    sql, params = _templates_query(ids)
    with conn.cursor(row_factory=tuple_row) as cur:
        return templates_from_rows(cur.execute(sql, params).fetchall())


def fetch_controllers(
    conn: psycopg.Connection[Any], macs: Iterable[str] | None = None
) -> list[str]:
    """The MACs of the registry's controllers (those of ``macs`` only, when given), sorted."""
    with conn.cursor(row_factory=tuple_row) as cur:
        return [row[0] for row in cur.execute(_CONTROLLERS_SQL, _macs(macs))]


def fetch_connectors(
    conn: psycopg.Connection[Any], macs: Iterable[str] | None = None
) -> list[Connector]:
    """The connectors of the controllers ``macs`` (of every controller when None)."""
    with conn.cursor(row_factory=args_row(Connector)) as cur:
        return cur.execute(_CONNECTORS_SQL, _macs(macs)).fetchall()


def fetch_locations(
    conn: psycopg.Connection[Any], macs: Iterable[str] | None = None
) -> list[DeviceLocation]:
    """Every device on a pin of the controllers ``macs`` (of every controller when None)."""
    with conn.cursor(row_factory=args_row(DeviceLocation)) as cur:
        return cur.execute(_LOCATIONS_SQL, _macs(macs)).fetchall()


def fetch_fleet(conn: psycopg.Connection[Any], macs: Iterable[str] | None = None) -> Fleet:
    """The controllers of the registry (or those of ``macs``) with everything on them."""
    controllers = fetch_controllers(conn, macs)
    connectors = fetch_connectors(conn, controllers)
    locations = fetch_locations(conn, controllers)
    template_ids = sorted({loc.template_id for loc in locations if loc.template_id is not None})
    templates = fetch_templates(conn, template_ids)
    return Fleet(tuple(controllers), tuple(connectors), tuple(locations), templates)


# --- async (psycopg.AsyncConnection) --------------------------------------------------------------


async def fetch_templates_async(
    conn: psycopg.AsyncConnection[Any], ids: Iterable[int] | None = None
) -> dict[int, Template]:
    """Template id -> template, for ``ids`` (every template when None); missing ids are absent."""
    sql, params = _templates_query(ids)
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(sql, params)
        return templates_from_rows(await cur.fetchall())


async def lookup_pins_async(
    conn: psycopg.AsyncConnection[Any], keys: Iterable[PinKey]
) -> dict[PinKey, PinLookup]:
    """What sits at each (MAC, connector, component) given: one query for all of them."""
    async with conn.cursor(row_factory=args_row(PinLookup)) as cur:
        await cur.execute(_PIN_LOOKUP_SQL, _pin_params(keys))
        return {(r.mac, r.connector, r.component): r for r in await cur.fetchall()}


async def controller_macs_async(
    conn: psycopg.AsyncConnection[Any],
    *,
    controllers: Iterable[int] = (),
    connectors: Iterable[int] = (),
    devices: Iterable[int] = (),
) -> set[str]:
    """The MACs of the controllers behind these controller, connector and device ids."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(_CONTROLLER_MACS_SQL, _macs_params(controllers, connectors, devices))
        return {row[0] for row in await cur.fetchall()}

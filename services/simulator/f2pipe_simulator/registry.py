"""The simulated fleet as the registry describes it: controllers, connectors, pins, templates.

Read once at start-up from ``registry.device_locations`` (which device sits on which pin of
which connector of which controller) and the templates' datapoints, so every frame the
simulator sends encodes exactly the datapoints the processor will decode from it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from f2pipe_shared.decoding import DecodingSpec, FrameFormat
from f2pipe_shared.topics import ComponentKind, TopicError, make_topic

log = logging.getLogger(__name__)

MAX_FRAME_DATA = 250  # a Modbus RTU response carries at most 250 data bytes (252 - header)


@dataclass(frozen=True, slots=True)
class Datapoint:
    """One datapoint of a template: read from a frame (``spec``) or from a JSON field."""

    id: int
    key: str
    unit: str | None = None
    spec: DecodingSpec | None = None
    field: str | None = None  # wire name of the boolean payload field ("door-sensor-1")
    chart_min: float | None = None
    chart_max: float | None = None


@dataclass(frozen=True, slots=True)
class Template:
    id: int
    key: str
    frame_format: FrameFormat | None = None
    modbus_address: int = 1
    modbus_function: int = 3
    modbus_register_count: int | None = None
    frame_points: tuple[Datapoint, ...] = ()
    field_points: tuple[Datapoint, ...] = ()

    @property
    def data_length(self) -> int:
        """Data bytes of a frame: the polled registers, or at least what the datapoints need."""
        needed = max((dp.spec.end for dp in self.frame_points if dp.spec), default=0)
        polled = 2 * (self.modbus_register_count or 0)
        return max(needed, polled)


@dataclass(frozen=True, slots=True)
class Component:
    """A device on a pin: where it sits, what it is, and the topic it publishes on."""

    connector: str
    mode: str
    name: str  # the topic level: "sensor-2", "door-sensors"
    kind: ComponentKind
    index: int | None
    device_id: int | None = None
    template: Template | None = None


@dataclass(frozen=True, slots=True)
class ControllerSpec:
    mac: str
    connectors: dict[str, str] = field(default_factory=dict)  # name -> mode
    components: tuple[Component, ...] = ()

    @property
    def cn(self) -> str:
        return f"f2-{self.mac}"


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
WHERE ctl.mac = ANY(%s::text[])
"""

_PINS_SQL = """
SELECT l.controller_mac, l.connector, l.mode, l.component, l.device_id, l.template_id
FROM registry.device_locations AS l
WHERE l.pin_id IS NOT NULL AND l.controller_mac = ANY(%s::text[])
ORDER BY l.controller_mac, l.connector, l.component
"""

_TEMPLATES_SQL = """
SELECT t.id, t.key, t.frame_format, t.modbus_address, t.modbus_function,
       t.modbus_register_count,
       dp.id, dp.key, dp.unit, dp."offset", dp.length, dp.encoding, dp.byte_order, dp.decimals,
       dp.field, dp.chart_min, dp.chart_max
FROM registry.device_templates AS t
LEFT JOIN registry.datapoints AS dp ON dp.template_id = t.id
WHERE t.id = ANY(%s::integer[])
ORDER BY t.id, dp.sort_order, dp.id
"""


def load_fleet(conninfo: str, macs: Sequence[str] | None = None) -> list[ControllerSpec]:
    """Every controller of the registry (or those in ``macs``) with its connectors and pins."""
    with psycopg.connect(conninfo, application_name="f2pipe-simulator") as conn:
        wanted = list(macs) if macs is not None else None
        controllers = [row[0] for row in conn.execute(_CONTROLLERS_SQL, {"macs": wanted})]
        connectors = conn.execute(_CONNECTORS_SQL, (controllers,)).fetchall()
        pins = conn.execute(_PINS_SQL, (controllers,)).fetchall()
        template_ids = sorted({row[5] for row in pins if row[5] is not None})
        template_rows = conn.execute(_TEMPLATES_SQL, (template_ids,)).fetchall()
    templates = build_templates(template_rows)
    return assemble_fleet(controllers, connectors, pins, templates)


def build_templates(rows: Iterable[Sequence[Any]]) -> dict[int, Template]:
    """Templates from the rows of _TEMPLATES_SQL (one per datapoint, ordered by template)."""
    heads: dict[int, tuple[Any, ...]] = {}
    frames: dict[int, list[Datapoint]] = {}
    fields: dict[int, list[Datapoint]] = {}
    for row in rows:
        template_id = int(row[0])
        heads.setdefault(template_id, tuple(row[:6]))
        frames.setdefault(template_id, [])
        fields.setdefault(template_id, [])
        dp_id = row[6]
        if dp_id is None:
            continue
        (_, key, unit, offset, length, encoding, byte_order, decimals, fld, cmin, cmax) = row[6:]
        point = Datapoint(
            id=int(dp_id),
            key=str(key),
            unit=None if unit is None else str(unit),
            field=None if fld is None else str(fld),
            chart_min=None if cmin is None else float(cmin),
            chart_max=None if cmax is None else float(cmax),
            spec=None
            if fld is not None or encoding is None
            else DecodingSpec.model_validate(
                {
                    "offset": offset,
                    "length": length,
                    "encoding": encoding,
                    "byte_order": byte_order or "big",
                    "decimals": decimals or 0,
                }
            ),
        )
        (fields if point.field is not None else frames)[template_id].append(point)
    templates = {}
    for template_id, head in heads.items():
        _, key, frame_format, address, function, registers = head
        templates[template_id] = Template(
            id=template_id,
            key=str(key),
            frame_format=None if frame_format is None else FrameFormat(str(frame_format)),
            modbus_address=1 if address is None else int(address),
            modbus_function=3 if function is None else int(function),
            modbus_register_count=None if registers is None else int(registers),
            frame_points=tuple(p for p in frames[template_id] if p.spec is not None),
            field_points=tuple(fields[template_id]),
        )
    return templates


def assemble_fleet(
    controllers: Sequence[str],
    connectors: Iterable[Sequence[Any]],
    pins: Iterable[Sequence[Any]],
    templates: dict[int, Template],
) -> list[ControllerSpec]:
    modes: dict[str, dict[str, str]] = {mac: {} for mac in controllers}
    for mac, name, mode in connectors:
        modes[str(mac)][str(name)] = str(mode)
    components: dict[str, list[Component]] = {mac: [] for mac in controllers}
    for mac, connector, mode, name, device_id, template_id in pins:
        component = _component(
            str(mac),
            connector=str(connector),
            mode=str(mode),
            name=str(name),
            device_id=int(device_id),
            template=None if template_id is None else templates.get(int(template_id)),
        )
        if component is not None:
            components[str(mac)].append(component)
    return [
        ControllerSpec(mac=mac, connectors=modes[mac], components=tuple(components[mac]))
        for mac in controllers
    ]


def _component(
    mac: str,
    *,
    connector: str,
    mode: str,
    name: str,
    device_id: int,
    template: Template | None,
) -> Component | None:
    kind = "tele" if name.startswith(("sensor-", "reader-")) else "stat"
    try:
        topic = make_topic(kind, mac, connector, name)
    except TopicError as exc:
        # The registry allows a little more than the topic grammar (reader-3..9).
        log.warning(
            "pin not simulated: its topic is outside the grammar",
            extra={"mac": mac, "connector": connector, "component": name, "error": str(exc)},
        )
        return None
    if template is not None and topic.component_kind is ComponentKind.SENSOR:
        if template.frame_format is None or not template.frame_points:
            log.warning(
                "sensor not simulated: its template has no frame datapoints",
                extra={"mac": mac, "connector": connector, "template": template.key},
            )
            return None
        if template.data_length > MAX_FRAME_DATA:
            log.warning(
                "sensor not simulated: its frame would exceed 250 data bytes",
                extra={"mac": mac, "connector": connector, "template": template.key},
            )
            return None
    if topic.component_kind is ComponentKind.SENSOR and template is None:
        log.warning(
            "sensor not simulated: it has no template",
            extra={"mac": mac, "connector": connector, "component": name},
        )
        return None
    return Component(
        connector=connector,
        mode=mode,
        name=name,
        kind=topic.component_kind,
        index=topic.index,
        device_id=device_id,
        template=template,
    )

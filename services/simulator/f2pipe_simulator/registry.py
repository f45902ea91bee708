"""The simulated fleet as the registry describes it: controllers, connectors, pins, templates.

Read once at start-up through ``f2pipe_shared.registry`` (which device sits on which pin of
which connector of which controller, and the templates' datapoints), so every frame the
simulator sends encodes exactly the datapoints the processor will decode from it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from f2pipe_shared.registry import Template, fetch_fleet
from f2pipe_shared.topics import ComponentKind, TopicError, make_topic

log = logging.getLogger(__name__)

MAX_FRAME_DATA = 250  # a Modbus RTU response carries at most 250 data bytes (252 - header)


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


def load_fleet(conninfo: str, macs: Sequence[str] | None = None) -> list[ControllerSpec]:
    """Every controller of the registry (or those in ``macs``) with its connectors and pins."""
    with psycopg.connect(conninfo, application_name="f2pipe-simulator") as conn:
        fleet = fetch_fleet(conn, macs)
    return assemble_fleet(fleet.controllers, fleet.connectors, fleet.locations, fleet.templates)


def assemble_fleet(
    controllers: Sequence[str],
    connectors: Iterable[Sequence[Any]],
    pins: Iterable[Sequence[Any]],
    templates: Mapping[int, Template],
) -> list[ControllerSpec]:
    """Controller specs from registry rows: ``Connector`` and ``DeviceLocation`` tuples."""
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

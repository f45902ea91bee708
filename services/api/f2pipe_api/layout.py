"""/v1/controllers/{mac}/connectors: a controller's connectors J1-J4 (PUT sets the mode) and
the pins on them: which sensor device, of which template, sits at which component.

A pin's device must be of a type that answers to the pin's component ('sensor' for
'sensor-3') and is wired to the connector's mode; the api says so before the database's
trigger (registry.check_pin) would. A connector's mode changes only while it has no pins.
Deleting a connector or a pin keeps the devices that sat there: readings keep their labels.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from f2pipe_api import registry_store as rs
from f2pipe_api.controllers import MacPath, _mac, _unknown
from f2pipe_api.deps import AUTH_REASONS, Admin, DbDep, MetricsDep, Operator, Viewer
from f2pipe_api.device_types import Key, Mode
from f2pipe_api.problems import PROBLEMS
from f2pipe_api.store import audit
from f2pipe_shared.problems import ProblemError

CONNECTOR_PATTERN = "^J[1-4]$"
# registry.pins_component_format: the controllers' components (docs/mqtt_topics.md).
COMPONENT_PATTERN = (
    "^(sensor-[1-6]|motion-sensor-[1-5]|reader-[1-9]|strike-[12]|siren-[12]"
    "|door-sensors|exit-buttons)$"
)
ConnectorPath = Annotated[str, Path(pattern=CONNECTOR_PATTERN, examples=["J3"])]
ComponentPath = Annotated[str, Path(pattern=COMPONENT_PATTERN, examples=["sensor-1"])]
LOOKUP = ("unknown_mac", "unknown_connector", "invalid_mac", "invalid_request")

router = APIRouter(prefix="/v1/controllers/{mac}/connectors", tags=["connectors and pins"])


class PinDevice(BaseModel):
    id: int = Field(description="the device id readings carry")
    name: str
    device_type: str
    template: str | None


class Pin(BaseModel):
    component: str = Field(examples=["sensor-1"])
    position: int | None = Field(description="the n of sensor-n; null for door-sensors …")
    device: PinDevice


class Connector(BaseModel):
    name: str = Field(examples=["J3"])
    mode: Mode
    pins: list[Pin]


class ConnectorMode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Mode


class PinBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_name: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        examples=["Boiler room"],
        description="the same name as the device there now re-points that device (same id); "
        "another name puts a new device there",
    )
    template: Key = Field(
        description="the key of the device's template", examples=["environmental-sensor-v1"]
    )


def _stem(component: str) -> str:
    return re.sub(r"-[0-9]+$", "", component)


async def _controller(conn: rs.Connection, mac: str, *, lock: bool = False) -> int:
    found = await rs.controller_id(conn, mac, lock=lock)
    if found is None:
        raise _unknown(mac)
    return found


async def _connector(
    conn: rs.Connection, mac: str, name: str, *, lock: bool = True
) -> rs.ConnectorRow:
    controller = await _controller(conn, mac, lock=lock)
    found = await rs.connector(conn, controller, name, lock=lock)
    if found is None:
        raise ProblemError("unknown_connector", f"The controller has no connector {name}.",
                           context={"mac": mac})  # fmt: skip
    return found


async def _one(conn: rs.Connection, mac: str, name: str) -> dict[str, Any]:
    (found,) = await rs.connectors(conn, await _controller(conn, mac), name)
    return found


def _fits(ref: rs.TemplateRef, component: str, mode: str) -> None:
    if ref.type.component != _stem(component):
        raise ProblemError(
            "wrong_component",
            f"A {ref.type.key} answers to {ref.type.component or 'no pin'}, not {component}.",
        )
    if ref.type.mode != mode:
        raise ProblemError("wrong_mode", f"A {ref.type.key} needs a connector in {ref.type.mode}; "
                           f"this one is in {mode}.")  # fmt: skip


@router.get(
    "",
    response_model=list[Connector],
    responses=PROBLEMS.responses(*AUTH_REASONS, "unknown_mac", "invalid_mac"),
    summary="A controller's connectors with their pins (viewer)",
)
async def list_connectors(caller: Viewer, db: DbDep, mac: MacPath) -> list[Connector]:
    async with db.connection() as conn:
        found = await rs.connectors(conn, await _controller(conn, _mac(mac)))
    return [Connector(**c) for c in found]


@router.get(
    "/{connector}",
    response_model=Connector,
    responses=PROBLEMS.responses(*AUTH_REASONS, *LOOKUP),
    summary="One connector with its pins (viewer)",
)
async def get_connector(
    caller: Viewer, db: DbDep, mac: MacPath, connector: ConnectorPath
) -> Connector:
    async with db.connection() as conn:
        found = await rs.connectors(conn, await _controller(conn, _mac(mac)), connector)
    if not found:
        raise ProblemError("unknown_connector", f"The controller has no connector {connector}.")
    return Connector(**found[0])


@router.put(
    "/{connector}",
    response_model=Connector,
    responses={
        201: {"model": Connector, "description": "the connector was created"},
        **PROBLEMS.responses(
            *AUTH_REASONS, "unknown_mac", "mode_conflict", "invalid_mac", "invalid_request"
        ),
    },
    summary="Create a connector or set its mode (operator); a mode changes only without pins",
)
async def put_connector(
    caller: Operator, db: DbDep, *, metrics: MetricsDep, response: Response, mac: MacPath,
    connector: ConnectorPath, body: ConnectorMode,
) -> Connector:  # fmt: skip
    mac = _mac(mac)
    async with rs.refusals(), db.transaction() as conn:
        controller = await _controller(conn, mac, lock=True)
        existing = await rs.connector(conn, controller, connector)
        if existing is not None and existing.mode == body.mode:
            return Connector(**await _one(conn, mac, connector))  # nothing changes, nothing audited
        if existing is not None and existing.pins:
            raise ProblemError("mode_conflict", f"{connector} has {existing.pins} pin(s) of "
                               f"{existing.mode}: delete them first.")  # fmt: skip
        before = None if existing is None else await _one(conn, mac, connector)
        await rs.put_connector(conn, controller, connector, body.mode, existing)
        after = await _one(conn, mac, connector)
        action = "connector.create" if existing is None else "connector.update"
        await audit(conn, caller.name, action, f"connector:{mac}/{connector}", before=before,
                    after=after)  # fmt: skip
    metrics.changes.labels(action=action).inc()
    response.status_code = 201 if existing is None else 200
    return Connector(**after)


@router.delete(
    "/{connector}",
    status_code=204,
    response_class=Response,
    responses=PROBLEMS.responses(*AUTH_REASONS, *LOOKUP),
    summary="Delete a connector and its pins (admin); the devices on them stay, as history",
)
async def delete_connector(
    caller: Admin, db: DbDep, metrics: MetricsDep, mac: MacPath, connector: ConnectorPath
) -> Response:
    mac = _mac(mac)
    async with rs.refusals(), db.transaction() as conn:
        existing = await _connector(conn, mac, connector)
        before = await _one(conn, mac, connector)
        await rs.delete_connector(conn, existing.id)
        await audit(conn, caller.name, "connector.delete", f"connector:{mac}/{connector}",
                    before=before, after=None)  # fmt: skip
    metrics.changes.labels(action="connector.delete").inc()
    return Response(status_code=204)


@router.get(
    "/{connector}/pins/{component}",
    response_model=Pin,
    responses=PROBLEMS.responses(*AUTH_REASONS, *LOOKUP, "unknown_pin"),
    summary="What sits on one pin (viewer)",
)
async def get_pin(
    caller: Viewer, db: DbDep, mac: MacPath, connector: ConnectorPath, component: ComponentPath
) -> Pin:
    async with db.connection() as conn:
        row = await _connector(conn, _mac(mac), connector, lock=False)
        found = await rs.pin(conn, row.id, component, lock=False)
    if found is None:
        raise ProblemError("unknown_pin", f"Nothing sits on {connector}/{component}.")
    return Pin(**found)


@router.put(
    "/{connector}/pins/{component}",
    response_model=Pin,
    responses={
        201: {"model": Pin, "description": "the pin was created"},
        **PROBLEMS.responses(
            *AUTH_REASONS,
            *LOOKUP,
            "unknown_reference",
            "wrong_mode",
            "wrong_component",
            "constraint_violation",
        ),
    },
    summary="Put a device of a template on a pin (operator); the processor follows within 5 s",
)
async def put_pin(
    caller: Operator, db: DbDep, *, metrics: MetricsDep, response: Response, mac: MacPath,
    connector: ConnectorPath, component: ComponentPath, body: PinBody,
) -> Pin:  # fmt: skip
    mac = _mac(mac)
    async with rs.refusals(), db.transaction() as conn:
        row = await _connector(conn, mac, connector)
        ref = await rs.template_ref(conn, body.template)
        if ref is None:
            raise ProblemError("unknown_reference", "body.template: no template with this key")
        _fits(ref, component, row.mode)
        before = await rs.pin(conn, row.id, component)
        await rs.put_pin(
            conn, row.id, component, device_name=body.device_name, ref=ref, current=before
        )
        after = await rs.pin(conn, row.id, component)
        assert after is not None
        await audit(conn, caller.name, "pin.set", f"pin:{mac}/{connector}/{component}",
                    before=before, after=after)  # fmt: skip
    metrics.changes.labels(action="pin.set").inc()
    response.status_code = 201 if before is None else 200
    return Pin(**after)


@router.delete(
    "/{connector}/pins/{component}",
    status_code=204,
    response_class=Response,
    responses=PROBLEMS.responses(*AUTH_REASONS, *LOOKUP, "unknown_pin"),
    summary="Empty a pin (admin); its device stays, with its readings",
)
async def delete_pin(
    caller: Admin, db: DbDep, *, metrics: MetricsDep, mac: MacPath, connector: ConnectorPath,
    component: ComponentPath,
) -> Response:  # fmt: skip
    mac = _mac(mac)
    async with rs.refusals(), db.transaction() as conn:
        row = await _connector(conn, mac, connector)
        before = await rs.pin(conn, row.id, component)
        if before is None:
            raise ProblemError("unknown_pin", f"Nothing sits on {connector}/{component}.")
        await rs.delete_pin(conn, row.id, component)
        await audit(conn, caller.name, "pin.delete", f"pin:{mac}/{connector}/{component}",
                    before=before, after=None)  # fmt: skip
    metrics.changes.labels(action="pin.delete").inc()
    return Response(status_code=204)

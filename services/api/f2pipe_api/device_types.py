"""/v1/device-types: what kinds of device exist, which MQTT component each answers to and the
connector mode it is wired to. List (filter, search, paginated), read, create, rename, delete
(refused while a template or a device is of the type)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from f2pipe_api import registry_store as rs
from f2pipe_api.deps import AUTH_REASONS, Admin, DbDep, Limit, MetricsDep, Offset, Operator, Viewer
from f2pipe_api.problems import PROBLEMS
from f2pipe_api.store import audit
from f2pipe_shared.problems import ProblemError
from f2pipe_shared.topics import COMPONENT_RULES

# registry.device_types.key and device_templates.key: lowercase words joined by '-'.
KEY_PATTERN = "^[a-z0-9]+(-[a-z0-9]+)*$"
Key = Annotated[str, Field(pattern=KEY_PATTERN, max_length=64, examples=["environmental-sensor"])]
KeyPath = Annotated[
    str, Path(pattern=KEY_PATTERN, max_length=64, examples=["environmental-sensor"])
]
Name = Annotated[str, Field(min_length=1, max_length=200, examples=["Environmental sensor"])]
Description = Annotated[str, Field(max_length=4000)]
Component = Literal[
    "sensor", "door-sensors", "exit-buttons", "motion-sensor", "reader", "strike", "siren"
]
Mode = Literal["access-control-mode", "alarm-mode", "sensor-mode"]
# The protocol table: the mode each component stem lives in.
MODE_OF: dict[str, str] = {rule.stem: rule.mode for rule in COMPONENT_RULES}

router = APIRouter(prefix="/v1/device-types", tags=["device types"])


class DeviceType(BaseModel):
    key: str = Field(examples=["environmental-sensor"])
    name: str
    is_controller: bool = Field(description="an F2 controller (has a MAC), not a device on a pin")
    component: Component | None = Field(
        description="the MQTT component stem it answers to; null for controllers"
    )
    mode: Mode | None = Field(description="the connector mode it is wired to")
    description: str | None


class DeviceTypePage(BaseModel):
    total: int = Field(description="how many device types match, over all pages")
    limit: int
    offset: int
    items: list[DeviceType]


class NewDeviceType(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: Key
    name: Name
    is_controller: bool = False
    component: Component | None = Field(
        None, description="required unless is_controller; the stem of its pins' components"
    )
    mode: Mode | None = Field(
        None, description="follows from the component when left out (sensor: sensor-mode, …)"
    )
    description: Description | None = None


class DeviceTypeChanges(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    description: Description | None = None


def unknown_type(key: str) -> ProblemError:
    return ProblemError("unknown_device_type", "No device type with this key.",
                        context={"device_type": key})  # fmt: skip


def _checked(body: NewDeviceType) -> dict[str, Any]:
    """The row to insert: a controller has no component or mode, a pin device has both, and
    the mode is the one the protocol gives its component."""
    values = body.model_dump()
    if body.is_controller:
        if body.component is not None or body.mode is not None:
            raise ProblemError("form_mismatch", "A controller type has no component or mode.")
        return values
    if body.component is None:
        raise ProblemError("form_mismatch", "A device type needs a component (or is_controller).")
    mode = MODE_OF[body.component]
    if body.mode is not None and body.mode != mode:
        raise ProblemError("wrong_mode", f"A {body.component} is wired to a {mode} connector.")
    return {**values, "mode": mode}


@router.get(
    "",
    response_model=DeviceTypePage,
    responses=PROBLEMS.responses(*AUTH_REASONS, "invalid_request"),
    summary="List device types (viewer): filter by component or mode, search key or name",
)
async def list_device_types(
    caller: Viewer,
    db: DbDep,
    *,
    component: Component | None = None,
    mode: Mode | None = None,
    q: Annotated[str | None, Query(max_length=64, description="part of the key or name")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> DeviceTypePage:
    async with db.connection() as conn:
        total, rows = await rs.list_device_types(
            conn, component=component, mode=mode, search=q, limit=limit, offset=offset
        )
    items = [DeviceType(**r.public()) for r in rows]
    return DeviceTypePage(total=total, limit=limit, offset=offset, items=items)


@router.get(
    "/{key}",
    response_model=DeviceType,
    responses=PROBLEMS.responses(*AUTH_REASONS, "unknown_device_type", "invalid_request"),
    summary="One device type (viewer)",
)
async def get_device_type(caller: Viewer, db: DbDep, key: KeyPath) -> DeviceType:
    async with db.connection() as conn:
        found = await rs.device_type(conn, key)
    if found is None:
        raise unknown_type(key)
    return DeviceType(**found.public())


@router.post(
    "",
    status_code=201,
    response_model=DeviceType,
    responses=PROBLEMS.responses(
        *AUTH_REASONS,
        "key_taken",
        "form_mismatch",
        "wrong_mode",
        "invalid_request",
        "constraint_violation",
    ),
    summary="Create a device type (operator)",
)
async def create_device_type(
    caller: Operator, db: DbDep, metrics: MetricsDep, body: NewDeviceType
) -> DeviceType:
    values = _checked(body)
    async with rs.refusals(), db.transaction() as conn:
        created = await rs.insert_device_type(conn, values)
        if created is None:
            raise ProblemError("key_taken", "A device type with this key exists.")
        await audit(conn, caller.name, "device_type.create", f"device_type:{body.key}",
                    before=None, after=created.public())  # fmt: skip
    metrics.changes.labels(action="device_type.create").inc()
    return DeviceType(**created.public())


@router.patch(
    "/{key}",
    response_model=DeviceType,
    responses=PROBLEMS.responses(*AUTH_REASONS, "unknown_device_type", "invalid_request"),
    summary="Rename a device type or change its description (operator); null clears it",
)
async def update_device_type(
    caller: Operator, db: DbDep, metrics: MetricsDep, key: KeyPath, body: DeviceTypeChanges
) -> DeviceType:
    changes: dict[str, Any] = body.model_dump(exclude_unset=True)
    if changes.get("name", "") is None:
        raise ProblemError("invalid_request", "body.name: may not be null")
    async with rs.refusals(), db.transaction() as conn:
        before = await rs.device_type(conn, key, lock=True)
        if before is None:
            raise unknown_type(key)
        if changes:
            await rs.update_device_type(conn, key, changes)
        after = await rs.device_type(conn, key)
        assert after is not None
        await audit(conn, caller.name, "device_type.update", f"device_type:{key}",
                    before=before.public(), after=after.public())  # fmt: skip
    metrics.changes.labels(action="device_type.update").inc()
    return DeviceType(**after.public())


@router.delete(
    "/{key}",
    status_code=204,
    response_class=Response,
    responses=PROBLEMS.responses(*AUTH_REASONS, "unknown_device_type", "in_use", "invalid_request"),
    summary="Delete a device type (admin); refused while templates or devices are of it",
)
async def delete_device_type(
    caller: Admin, db: DbDep, metrics: MetricsDep, key: KeyPath
) -> Response:
    async with rs.refusals(), db.transaction() as conn:
        before = await rs.device_type(conn, key, lock=True)
        if before is None:
            raise unknown_type(key)
        templates, devices = await rs.device_type_uses(conn, before.id)
        if templates or devices:
            raise ProblemError(
                "in_use", f"{templates} template(s) and {devices} device(s) are of this type.",
                context={"device_type": key},
            )  # fmt: skip
        await rs.delete_device_type(conn, before.id)
        await audit(conn, caller.name, "device_type.delete", f"device_type:{key}",
                    before=before.public(), after=None)  # fmt: skip
    metrics.changes.labels(action="device_type.delete").inc()
    return Response(status_code=204)

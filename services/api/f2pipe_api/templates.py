"""/v1/templates: how a kind of device sends its values, with its datapoints nested in the
body. List (filter by device type or frame format, search, paginated), read, create, replace
(PUT: the datapoints given are the template's datapoints after it), delete (refused while a
device uses the template).

Every body is checked before it reaches the database (`check_spec`, `check_type_fit`): each
frame datapoint's decoding is a `DecodingSpec` (the shared model the processor decodes with,
so its rules are stated once), it must fit the frame, and frame and field datapoints must
match the template's frame format and its device type's component. /v1/decode checks an
inline template with the same `check_spec`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from f2pipe_api import registry_store as rs
from f2pipe_api.deps import AUTH_REASONS, Admin, DbDep, Limit, MetricsDep, Offset, Operator, Viewer
from f2pipe_api.device_types import Description, Key, KeyPath, Name
from f2pipe_api.problems import PROBLEMS
from f2pipe_api.store import audit
from f2pipe_shared.decoding import ByteOrder, Encoding, FrameFormat
from f2pipe_shared.payloads import state_fields
from f2pipe_shared.problems import ProblemError
from f2pipe_shared.registry import Datapoint, Template
from f2pipe_shared.topics import COMPONENT_RULES

# The data bytes a frame can carry when the template names no register count: a Modbus RTU
# read answers at most 125 registers (250 bytes); a raw frame is at most an RTU ADU (256).
MAX_DATA_BYTES = {FrameFormat.MODBUS_RTU: 250, FrameFormat.RAW: 256}
MAX_DATAPOINTS = 64
DATAPOINT_KEY = "^[a-z0-9]+([_-][a-z0-9]+)*$"
FIELD_PATTERN = "^[a-z0-9]+(-[a-z0-9]+)*$"
KIND_OF = {rule.stem: rule.kind for rule in COMPONENT_RULES}
BODY_REASONS = ("bad_datapoint", "frame_overflow", "form_mismatch", "unknown_reference",
                "invalid_request", "constraint_violation")  # fmt: skip

router = APIRouter(prefix="/v1/templates", tags=["templates"])


class DatapointBody(BaseModel):
    """One datapoint: a number in the frame (offset, encoding, …) or a boolean JSON field."""

    model_config = ConfigDict(extra="forbid")

    key: Annotated[str, Field(pattern=DATAPOINT_KEY, max_length=64, examples=["temperature"])]
    label: Annotated[str, Field(min_length=1, max_length=200, examples=["Temperature"])]
    unit: Annotated[str, Field(max_length=32, examples=["°C"])] | None = None
    offset: Annotated[int, Field(ge=0, le=255)] | None = Field(
        None, description="first byte: of the data (modbus_rtu) or of the frame (raw)"
    )
    length: Annotated[int, Field(ge=1, le=4)] | None = Field(
        None, description="bytes; follows from the encoding when left out"
    )
    encoding: Encoding | None = None
    byte_order: ByteOrder = ByteOrder.BIG
    decimals: Annotated[int, Field(ge=0, le=9)] | None = Field(
        None, description="value = number / 10^decimals; 0 when left out"
    )
    field: Annotated[str, Field(pattern=FIELD_PATTERN, max_length=64)] | None = Field(
        None, description="the JSON field of a state (door-sensor-1, status)"
    )
    chart_min: Annotated[float, Field(allow_inf_nan=False)] | None = None
    chart_max: Annotated[float, Field(allow_inf_nan=False)] | None = None
    chart_type: Literal["line", "bar", "gauge", "stat", "state"] | None = None
    chart_color: Annotated[str, Field(pattern="^#[0-9a-f]{6}$", examples=["#e05d44"])] | None = None
    sort_order: Annotated[int, Field(ge=-32768, le=32767)] | None = Field(
        None, description="the datapoints' order; their position in the list when left out"
    )


class TemplateSpec(BaseModel):
    """What decoding needs of a template (an inline template of /v1/decode is just this)."""

    model_config = ConfigDict(extra="forbid")

    frame_format: FrameFormat | None = Field(
        None, description="modbus_rtu or raw; null for devices that send JSON fields"
    )
    verify_crc: bool = Field(False, description="check the Modbus CRC (modbus_rtu only)")
    modbus_address: Annotated[int, Field(ge=1, le=247)] | None = None
    modbus_function: Annotated[int, Field(ge=1, le=127)] | None = None
    modbus_register: Annotated[int, Field(ge=0, le=65535)] | None = None
    modbus_register_count: Annotated[int, Field(
        ge=1, le=125, description="registers polled: frame datapoints must fit 2 bytes each"
    )] | None = None  # fmt: skip
    datapoints: Annotated[list[DatapointBody], Field(max_length=MAX_DATAPOINTS)] = []


class TemplateBody(TemplateSpec):
    device_type: Key = Field(description="the key of the template's device type")
    name: Name
    description: Description | None = None


class NewTemplate(TemplateBody):
    key: Key = Field(examples=["environmental-sensor-v1"])

    model_config = ConfigDict(
        json_schema_extra={"examples": [{
            "key": "environmental-sensor-v2", "device_type": "environmental-sensor",
            "name": "Temperature and humidity", "frame_format": "modbus_rtu",
            "verify_crc": True, "modbus_register_count": 2,
            "datapoints": [
                {"key": "temperature", "label": "Temperature", "unit": "°C", "offset": 0,
                 "encoding": "int16", "decimals": 2},
                {"key": "humidity", "label": "Relative humidity", "unit": "%", "offset": 2,
                 "encoding": "uint16", "decimals": 2},
            ],
        }]}
    )  # fmt: skip


class DatapointOut(BaseModel):
    id: int = Field(description="the datapoint id readings carry")
    key: str
    label: str
    unit: str | None
    offset: int | None
    length: int | None
    encoding: Encoding | None
    byte_order: ByteOrder
    decimals: int | None
    field: str | None
    chart_min: float | None
    chart_max: float | None
    chart_type: str | None
    chart_color: str | None
    sort_order: int


class TemplateOut(BaseModel):
    id: int
    key: str
    device_type: str
    name: str
    description: str | None
    frame_format: FrameFormat | None
    verify_crc: bool
    modbus_address: int | None
    modbus_function: int | None
    modbus_register: int | None
    modbus_register_count: int | None
    created_at: datetime
    devices: int = Field(description="how many devices use it")
    datapoints: list[DatapointOut]


class TemplatePage(BaseModel):
    total: int = Field(description="how many templates match, over all pages")
    limit: int
    offset: int
    items: list[TemplateOut]


# -- checks ---------------------------------------------------------------------------------


def _bad(index: int, rule: str) -> ProblemError:
    return ProblemError("bad_datapoint", f"datapoints[{index}]: {rule}")


def _row(index: int, dp: DatapointBody) -> dict[str, Any]:
    """The datapoint's columns, its frame decoding checked by `DecodingSpec` (via the shared
    read model), length and decimals filled in as the processor reads them."""
    row = dp.model_dump(mode="json")
    if row["sort_order"] is None:
        row["sort_order"] = index + 1
    frame = [dp.offset, dp.length, dp.encoding, dp.decimals]
    if dp.field is not None:
        if any(v is not None for v in frame):
            raise _bad(index, "a field datapoint has no offset, length, encoding or decimals")
        return row
    if dp.offset is None or dp.encoding is None:
        raise _bad(index, "needs either field, or offset and encoding")
    try:
        spec = _datapoint(index, dp).spec
    except ValidationError as exc:  # its messages name the rule, not the value
        raise _bad(index, "; ".join(e["msg"] for e in exc.errors())) from None
    assert spec is not None
    return {**row, "length": spec.length, "decimals": spec.decimals}


def _datapoint(index: int, dp: DatapointBody) -> Datapoint:
    return Datapoint.from_columns(
        index + 1, dp.key, unit=dp.unit, offset=dp.offset, length=dp.length,
        encoding=None if dp.encoding is None else dp.encoding.value,
        byte_order=dp.byte_order.value, decimals=dp.decimals, field=dp.field,
        chart_min=dp.chart_min, chart_max=dp.chart_max,
    )  # fmt: skip


def check_spec(spec: TemplateSpec) -> list[dict[str, Any]]:
    """The datapoints' rows, or a problem naming the first rule the template breaks."""
    keys = [dp.key for dp in spec.datapoints]
    if len(set(keys)) != len(keys):
        raise ProblemError("bad_datapoint", "Two datapoints have the same key.")
    rows = [_row(i, dp) for i, dp in enumerate(spec.datapoints)]
    _check_form(spec, rows)
    _check_fit(spec, rows)
    return rows


def _check_form(spec: TemplateSpec, rows: list[dict[str, Any]]) -> None:
    modbus = spec.frame_format is FrameFormat.MODBUS_RTU
    hints = (spec.modbus_address, spec.modbus_function, spec.modbus_register,
             spec.modbus_register_count)  # fmt: skip
    if not modbus and (spec.verify_crc or any(h is not None for h in hints)):
        raise ProblemError("form_mismatch", "verify_crc and modbus_* need frame_format modbus_rtu.")
    for i, row in enumerate(rows):
        if (row["field"] is None) != (spec.frame_format is not None):
            raise ProblemError(
                "form_mismatch",
                f"datapoints[{i}]: a template with a frame_format has frame datapoints only "
                "(offset, encoding), one without has field datapoints only.",
            )


def _check_fit(spec: TemplateSpec, rows: list[dict[str, Any]]) -> None:
    if spec.frame_format is None:
        return
    size = MAX_DATA_BYTES[spec.frame_format]
    if spec.modbus_register_count is not None:
        size = 2 * spec.modbus_register_count
    for i, row in enumerate(rows):
        end = row["offset"] + row["length"]
        if end > size:
            raise ProblemError(
                "frame_overflow",
                f"datapoints[{i}] ends at byte {end}; the frame carries {size} data bytes.",
            )


def check_type_fit(spec: TemplateSpec, device_type: rs.DeviceType) -> None:
    """A sensor's template reads a frame; the others read the boolean fields their payload
    carries (f2pipe_shared.payloads); a controller has no template."""
    if device_type.component is None:
        raise ProblemError("form_mismatch", "A controller type has no templates.")
    kind = KIND_OF[device_type.component]
    if (device_type.component == "sensor") != (spec.frame_format is not None):
        raise ProblemError(
            "form_mismatch", "A sensor's template has a frame_format; no other type's has one."
        )
    fields = state_fields(kind)
    for i, dp in enumerate(spec.datapoints):
        if dp.field is not None and dp.field not in fields:
            allowed = ", ".join(sorted(fields)) or "none"
            raise ProblemError(
                "form_mismatch",
                f"datapoints[{i}]: a {device_type.component} sends no such field "
                f"(its fields: {allowed}).",
            )


def to_template(spec: TemplateSpec, key: str = "inline", template_id: int = 0) -> Template:
    """The shared read model of a checked spec: what the processor would decode with."""
    return Template(
        id=template_id, key=key, frame_format=spec.frame_format, verify_crc=spec.verify_crc,
        modbus_register_count=spec.modbus_register_count,
        datapoints=tuple(_datapoint(i, dp) for i, dp in enumerate(spec.datapoints)),
    )  # fmt: skip


async def _checked(conn: rs.Connection, body: TemplateBody) -> tuple[int, dict[str, Any]]:
    """The type's id and the values to write."""
    rows = check_spec(body)
    found = await rs.device_type(conn, body.device_type)
    if found is None:
        raise ProblemError("unknown_reference", "body.device_type: no device type with this key")
    check_type_fit(body, found)
    return found.id, {**body.model_dump(mode="json"), "datapoints": rows}


def unknown_template(key: str) -> ProblemError:
    return ProblemError("unknown_template", "No template with this key.",
                        context={"template": key})  # fmt: skip


# -- routes ---------------------------------------------------------------------------------


@router.get(
    "",
    response_model=TemplatePage,
    responses=PROBLEMS.responses(*AUTH_REASONS, "invalid_request"),
    summary="List templates with their datapoints (viewer): filter by device type or format",
)
async def list_templates(
    caller: Viewer,
    db: DbDep,
    *,
    device_type: Annotated[str | None, Query(max_length=64)] = None,
    frame_format: FrameFormat | None = None,
    q: Annotated[str | None, Query(max_length=64, description="part of the key or name")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> TemplatePage:
    async with db.connection() as conn:
        total, rows = await rs.list_templates(
            conn, device_type=device_type, search=q, limit=limit, offset=offset,
            frame_format=None if frame_format is None else frame_format.value,
        )  # fmt: skip
    items = [TemplateOut(**r) for r in rows]
    return TemplatePage(total=total, limit=limit, offset=offset, items=items)


@router.get(
    "/{key}",
    response_model=TemplateOut,
    responses=PROBLEMS.responses(*AUTH_REASONS, "unknown_template", "invalid_request"),
    summary="One template with its datapoints (viewer)",
)
async def get_template(caller: Viewer, db: DbDep, key: KeyPath) -> TemplateOut:
    async with db.connection() as conn:
        found = await rs.template(conn, key)
    if found is None:
        raise unknown_template(key)
    return TemplateOut(**found)


@router.post(
    "",
    status_code=201,
    response_model=TemplateOut,
    responses=PROBLEMS.responses(*AUTH_REASONS, "key_taken", *BODY_REASONS),
    summary="Create a template with its datapoints (operator)",
)
async def create_template(
    caller: Operator, db: DbDep, metrics: MetricsDep, body: NewTemplate
) -> TemplateOut:
    async with rs.refusals(), db.transaction() as conn:
        type_id, values = await _checked(conn, body)
        created = await rs.insert_template(conn, body.key, type_id, values)
        if created is None:
            raise ProblemError("key_taken", "A template with this key exists.")
        await audit(conn, caller.name, "template.create", f"template:{body.key}",
                    before=None, after=created)  # fmt: skip
    metrics.changes.labels(action="template.create").inc()
    return TemplateOut(**created)


@router.put(
    "/{key}",
    response_model=TemplateOut,
    responses=PROBLEMS.responses(*AUTH_REASONS, "unknown_template", "in_use", *BODY_REASONS),
    summary="Replace a template and its datapoints (operator); the processor follows within 5 s",
)
async def replace_template(
    caller: Operator, db: DbDep, metrics: MetricsDep, key: KeyPath, body: TemplateBody
) -> TemplateOut:
    async with rs.refusals(), db.transaction() as conn:
        before = await rs.template(conn, key, lock=True)
        if before is None:
            raise unknown_template(key)
        type_id, values = await _checked(conn, body)
        if before["devices"] and body.device_type != before["device_type"]:
            raise ProblemError("in_use", f"{before['devices']} device(s) use this template: "
                               "its device type cannot change.")  # fmt: skip
        await rs.update_template(conn, before["id"], type_id, values)
        after = await rs.template(conn, key)
        assert after is not None
        await audit(conn, caller.name, "template.update", f"template:{key}",
                    before=before, after=after)  # fmt: skip
    metrics.changes.labels(action="template.update").inc()
    return TemplateOut(**after)


@router.delete(
    "/{key}",
    status_code=204,
    response_class=Response,
    responses=PROBLEMS.responses(*AUTH_REASONS, "unknown_template", "in_use", "invalid_request"),
    summary="Delete a template and its datapoints (admin); refused while devices use it",
)
async def delete_template(caller: Admin, db: DbDep, metrics: MetricsDep, key: KeyPath) -> Response:
    async with rs.refusals(), db.transaction() as conn:
        before = await rs.template(conn, key, lock=True)
        if before is None:
            raise unknown_template(key)
        if before["devices"]:
            raise ProblemError("in_use", f"{before['devices']} device(s) use this template.",
                               context={"template": key})  # fmt: skip
        await rs.delete_template(conn, before["id"])
        await audit(conn, caller.name, "template.delete", f"template:{key}",
                    before=before, after=None)  # fmt: skip
    metrics.changes.labels(action="template.delete").inc()
    return Response(status_code=204)

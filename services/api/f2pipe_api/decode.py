"""/v1/decode: try a decoder. A frame (hex, as the sensor sends it) and a template (by key, or
inline) -> every frame datapoint's value, or the dead-letter reason and detail the processor
would give that frame. Both answer with `f2pipe_shared.framedecoder`, and a stored template is
read with the processor's own query (`f2pipe_shared.registry`), so the two cannot disagree.
Changes nothing."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from f2pipe_api import registry_store as rs
from f2pipe_api.deps import AUTH_REASONS, DbDep, Viewer
from f2pipe_api.device_types import Key
from f2pipe_api.problems import PROBLEMS
from f2pipe_api.templates import TemplateSpec, check_spec, to_template
from f2pipe_shared.decoding import FrameError
from f2pipe_shared.framedecoder import decode_frame
from f2pipe_shared.problems import ProblemError
from f2pipe_shared.registry import Template, fetch_templates_async

# Far more than a frame of 256 bytes written with a space between bytes.
MAX_FRAME_CHARS = 2048
FrameReason = Literal["bad_hex", "short_frame", "crc_mismatch", "bad_frame"]

router = APIRouter(tags=["decode"])


class DecodeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [
            {"frame": "01 03 06 08 34 10 68 02 58 14 7F", "template": "environmental-sensor-v1"},
        ]},
    )  # fmt: skip

    frame: Annotated[str, Field(max_length=MAX_FRAME_CHARS)] = Field(
        description="hex bytes as the sensor's `data`; spaces allowed"
    )
    template: Key | TemplateSpec = Field(
        description="a template's key, or a template inline (frame_format, datapoints, …)"
    )


class Value(BaseModel):
    key: str = Field(examples=["temperature"])
    unit: str | None = Field(examples=["°C"])
    value: float | None = Field(description="null when a float32 holds NaN or an infinity")


class DeadLetter(BaseModel):
    reason: FrameReason = Field(description="the dead-letter reason the processor would give")
    detail: str = Field(description="the dead letter's detail, as the processor writes it")


class Decoded(BaseModel):
    template: str = Field(description="the template's key (`inline` for an inline one)")
    ok: bool = Field(description="the frame decodes: `values` holds every frame datapoint")
    values: list[Value]
    dead_letter: DeadLetter | None = Field(description="why not, when it does not decode")


async def _stored(db: DbDep, key: str) -> Template:
    async with db.connection() as conn:
        found = await rs.template_id(conn, key)
        templates = {} if found is None else await fetch_templates_async(conn, [found])
    if found is None or found not in templates:
        raise ProblemError("unknown_reference", "template: no template with this key")
    return templates[found]


@router.post(
    "/v1/decode",
    response_model=Decoded,
    responses=PROBLEMS.responses(
        *AUTH_REASONS,
        "unknown_reference",
        "no_frame",
        "bad_datapoint",
        "frame_overflow",
        "form_mismatch",
        "invalid_request",
    ),
    summary="Try a decoder (viewer): a frame and a template -> values, or the dead letter",
)
async def decode(caller: Viewer, db: DbDep, *, body: DecodeRequest) -> Decoded:
    if isinstance(body.template, str):
        template = await _stored(db, body.template)
    else:
        check_spec(body.template)
        template = to_template(body.template)
    try:
        decoded = decode_frame(body.frame, template)
    except FrameError as exc:
        letter = DeadLetter(reason=exc.reason, detail=str(exc))
        return Decoded(template=template.key, ok=False, values=[], dead_letter=letter)
    if decoded is None:
        raise ProblemError("no_frame", "The template has no frame datapoints: the processor "
                           "dead-letters a sensor frame with it (unmapped_position).")  # fmt: skip
    values = [Value(key=dp.key, unit=dp.unit, value=v if math.isfinite(v) else None)
              for dp, v in decoded]  # fmt: skip
    return Decoded(template=template.key, ok=True, values=values, dead_letter=None)

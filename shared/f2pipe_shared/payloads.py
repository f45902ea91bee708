"""Payload models for every component of the F2 protocol, and ``parse_payload``.

Device messages (``stat``/``tele``) ignore fields they do not know, so that new firmware adding
a field does not dead-letter every message; commands (``cmnd``), which we write ourselves,
forbid them, so a typo fails here instead of at the device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import Annotated, ClassVar, Literal, TypeAlias

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    RootModel,
    Strict,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

from f2pipe_shared.decoding import parse_hex_frame
from f2pipe_shared.timestamps import format_device_timestamp, parse_device_timestamp
from f2pipe_shared.topics import ComponentKind, Topic

READER_DATA_MAX_CHARS = 1023


def _validate_timestamp(value: object) -> datetime:
    if isinstance(value, str):
        return parse_device_timestamp(value)
    # Python callers may pass a datetime; it must say which instant it means.
    if isinstance(value, datetime) and value.utcoffset() is not None:
        return value.astimezone(UTC)
    raise ValueError("expected a device timestamp string or a timezone-aware datetime")


DeviceTimestamp = Annotated[
    datetime,
    PlainValidator(_validate_timestamp, json_schema_input_type=str),
    PlainSerializer(format_device_timestamp, return_type=str, when_used="json"),
]


class PayloadError(ValueError):
    """A payload that does not fit its topic; ``reason`` is the dead-letter reason."""

    reason: ClassVar[str] = "bad_payload"


class InvalidJson(PayloadError):
    reason: ClassVar[str] = "invalid_json"


class SchemaViolation(PayloadError):
    reason: ClassVar[str] = "schema_violation"

    def __init__(self, message: str, field: str | None) -> None:
        self.field = field  # first offending field, wire name; None: the payload as a whole
        super().__init__(message)


class _WireModel(BaseModel):
    # Wire names ("door-sensor-1") in JSON, Python names in code; both are accepted.
    model_config = ConfigDict(
        frozen=True,
        strict=True,  # no coercion: "yes" or 1 is not a boolean, "5" is not a number
        validate_by_alias=True,
        validate_by_name=True,
        serialize_by_alias=True,
    )


class _DeviceMessage(_WireModel):
    model_config = ConfigDict(extra="ignore")

    timestamp: DeviceTimestamp


class SensorFrame(_DeviceMessage):
    """``tele .../sensor-<n>``: one raw RS-485 frame as hex bytes."""

    # Left a plain string: bad hex is a decoding failure (reason bad_hex), not a schema one.
    data: str

    def frame(self) -> bytes:
        return parse_hex_frame(self.data)


class DoorSensors(_DeviceMessage):
    door_sensor_1: bool = Field(alias="door-sensor-1")
    door_sensor_2: bool = Field(alias="door-sensor-2")


class ExitButtons(_DeviceMessage):
    exit_button_1: bool = Field(alias="exit-button-1")
    exit_button_2: bool = Field(alias="exit-button-2")


class Status(_DeviceMessage):
    """State of a strike, a siren or a motion sensor."""

    status: bool


class ReaderScan(_DeviceMessage):
    """What a QR/NFC reader read."""

    data: Annotated[str, Field(max_length=READER_DATA_MAX_CHARS)]


def _exact_int(value: object) -> object:
    # Enum and Literal lookups compare with ==, so even strict mode lets true and 1.0 in as 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


_EXACT_INT = BeforeValidator(_exact_int)
# Lax enums, so Python code may pass 2 as well as PowerFlag.TOGGLE; _EXACT_INT keeps bools out.
_LAX = Strict(False)


class PowerFlag(IntEnum):
    UNPOWERED = 0
    POWERED = 1  # 12 V
    TOGGLE = 2  # for `period` seconds


class ReaderFeedback(IntEnum):
    SUCCESS = 1
    FAIL_1 = 2
    FAIL_2 = 3


class StrikeCommand(_WireModel):
    model_config = ConfigDict(extra="forbid")

    power_flag: Annotated[PowerFlag, _LAX, _EXACT_INT] = Field(alias="power-flag")
    period: Annotated[int, Field(ge=0, le=255)] | None = Field(
        default=None, exclude_if=lambda period: period is None
    )

    @model_validator(mode="after")
    def _toggle_needs_period(self) -> StrikeCommand:
        # A toggle without a duration leaves the device to guess: refuse to send one.
        if self.power_flag is PowerFlag.TOGGLE and self.period is None:
            raise ValueError("power-flag 2 (toggle) needs a period (seconds, 0..255)")
        return self


class SirenCommand(RootModel[Annotated[Literal[0, 1], _EXACT_INT]]):
    """``1`` switches the siren on, ``0`` off."""

    model_config = ConfigDict(frozen=True, strict=True)

    @property
    def on(self) -> bool:
        return self.root == 1


class ReaderSignal(RootModel[Annotated[ReaderFeedback, _LAX, _EXACT_INT]]):
    """Light feedback for the person at a reader: ``1`` success, ``2``/``3`` failures."""

    model_config = ConfigDict(frozen=True, strict=True)


@dataclass(frozen=True, slots=True)
class StateRequest:
    """An empty ``cmnd`` payload: the device should report its state."""


REPORT_STATE = StateRequest()

DeviceMessage: TypeAlias = SensorFrame | DoorSensors | ExitButtons | Status | ReaderScan
Command: TypeAlias = StrikeCommand | SirenCommand | ReaderSignal | StateRequest
Payload: TypeAlias = DeviceMessage | Command

_MESSAGE_MODELS: dict[ComponentKind, type[DeviceMessage]] = {
    ComponentKind.SENSOR: SensorFrame,
    ComponentKind.DOOR_SENSORS: DoorSensors,
    ComponentKind.EXIT_BUTTONS: ExitButtons,
    ComponentKind.STRIKE: Status,
    ComponentKind.SIREN: Status,
    ComponentKind.MOTION_SENSOR: Status,
    ComponentKind.READER: ReaderScan,
}
_COMMAND_MODELS: dict[ComponentKind, type[StrikeCommand | SirenCommand | ReaderSignal]] = {
    ComponentKind.STRIKE: StrikeCommand,
    ComponentKind.SIREN: SirenCommand,
    ComponentKind.READER: ReaderSignal,
}
# The protocol gives "empty payload = report your state" to these commands only.
_STATE_REQUEST_KINDS = frozenset({ComponentKind.STRIKE, ComponentKind.SIREN})


def state_fields(kind: ComponentKind) -> frozenset[str]:
    """The boolean fields (wire names) a device of ``kind`` sends: what a template's field
    datapoints may read (the api refuses a template naming any other)."""
    model = _MESSAGE_MODELS[kind]
    return frozenset(
        info.alias or name for name, info in model.model_fields.items() if info.annotation is bool
    )


def parse_payload(topic: Topic, payload: bytes) -> Payload:
    """Validate ``payload`` against the model its (already parsed) topic calls for."""
    if topic.kind == "cmnd":
        if not payload and topic.component_kind in _STATE_REQUEST_KINDS:
            return REPORT_STATE
        return _validate(_COMMAND_MODELS[topic.component_kind], payload)
    return _validate(_MESSAGE_MODELS[topic.component_kind], payload)


# The fast path's bounds. Under 402 bytes no JSON nests deeper than the model's parser allows
# (200 levels, then invalid_json), where json.loads would accept it.
SENSOR_FAST_MAX_BYTES = 400


def sensor_frame_fields(payload: bytes) -> tuple[str, str] | None:
    """The ``timestamp`` and ``data`` strings of a sensor frame payload, without the model: the
    processor's fast path for its most frequent message (the model costs more than the rest of
    the message's parsing). None for anything it is not sure the model accepts with these very
    values: then the model decides, and its error is the one given.

    What it leaves to the model: non-UTF-8 bytes and BOMs (json.loads of bytes would guess
    UTF-16/32), ``\\u`` escapes (json.loads takes lone surrogates the model refuses), larger
    payloads (nesting), and anything but an object with string ``timestamp`` and ``data``.
    The timestamp's own check is the caller's (``EpochParser``)."""
    if len(payload) > SENSOR_FAST_MAX_BYTES or b"\\u" in payload:
        return None
    try:
        doc = json.loads(payload.decode())  # NaN, Infinity: the model's parser takes them too
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        return None
    if type(doc) is not dict:
        return None
    timestamp, data = doc.get("timestamp"), doc.get("data")
    if type(timestamp) is not str or type(data) is not str:
        return None
    return timestamp, data


def encode_payload(payload: Payload) -> bytes:
    """The wire form of a payload: compact JSON, or nothing for a state request."""
    if isinstance(payload, StateRequest):
        return b""
    return payload.model_dump_json().encode()


def _validate(
    model: type[DeviceMessage] | type[StrikeCommand | SirenCommand | ReaderSignal],
    payload: bytes,
) -> Payload:
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        raise _payload_error(model.__name__, exc.errors(include_url=False)) from None


def _payload_error(model: str, errors: list[ErrorDetails]) -> PayloadError:
    if errors[0]["type"] == "json_invalid":
        return InvalidJson(f"payload is not valid JSON: {errors[0]['msg']}")
    details = "; ".join(f"{_where(e)}: {e['msg']}" for e in errors)
    first = errors[0]["loc"]
    field = ".".join(str(part) for part in first) if first else None
    return SchemaViolation(f"not a valid {model} payload: {details}", field)


def _where(error: ErrorDetails) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    return f"field {loc!r}" if loc else "payload"

"""The registry read model without a server: rows -> templates, and the processor's forms."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from f2pipe_processor.registry import (
    CompiledTemplate,
    TemplateRow,
    pack_template,
    unpack_template,
)
from f2pipe_shared.decoding import (
    ByteOrder,
    DecodingSpec,
    Encoding,
    FrameFormat,
    build_modbus_response,
    encode_value,
    frame_data,
)
from f2pipe_shared.registry import Datapoint, Template, templates_from_rows

NO_POINT = (None,) * 11


def head(
    template_id: int,
    key: str,
    frame_format: str | None = None,
    verify_crc: bool = False,
    address: int | None = None,
    function: int | None = None,
    registers: int | None = None,
) -> tuple[Any, ...]:
    return (template_id, key, frame_format, verify_crc, address, function, registers)


# Rows as the templates query returns them: one per datapoint, ordered by template.
ROWS: list[tuple[Any, ...]] = [
    (*head(1, "env-v1", "modbus_rtu", True, 1, 3, 3),
     11, "temperature", "°C", 0, 2, "int16", "big", 2, None, -20.0, 50.0),
    (*head(1, "env-v1", "modbus_rtu", True, 1, 3, 3),
     12, "humidity", "%", 2, None, "uint16", "little", 0, None, None, None),
    (*head(2, "power-v1", "modbus_rtu", True, 2, None, None),
     21, "voltage", "V", 0, 4, "float32", "word_swapped", 1, None, 0.0, 260.0),
    (*head(3, "doors-v1"), 31, "door-sensor-1", None, None, None, None, "big", None,
     "door-sensor-1", 0.0, 1.0),
    (*head(3, "doors-v1"), 32, "door-sensor-2", None, None, None, None, "big", None,
     "door-sensor-2", 0.0, 1.0),
    (*head(4, "reader-v1"), *NO_POINT),  # a template without datapoints
    (*head(5, "raw-v1", "raw"), 51, "level", "mm", 1, 1, "uint8", None, None, None, None, None),
]  # fmt: skip


def test_rows_become_templates_with_their_datapoints_in_order() -> None:
    templates = templates_from_rows(ROWS)
    assert list(templates) == [1, 2, 3, 4, 5]
    env = templates[1]
    assert (env.key, env.frame_format, env.verify_crc) == ("env-v1", FrameFormat.MODBUS_RTU, True)
    assert (env.modbus_address, env.modbus_function, env.modbus_register_count) == (1, 3, 3)
    assert [dp.key for dp in env.datapoints] == ["temperature", "humidity"]
    assert env.frame_points == env.datapoints
    assert env.field_points == ()
    temperature = env.datapoints[0]
    assert temperature == Datapoint(
        11,
        "temperature",
        "°C",
        DecodingSpec(offset=0, encoding=Encoding.INT16, decimals=2),
        chart_min=-20.0,
        chart_max=50.0,
    )
    humidity = env.datapoints[1].spec
    assert humidity is not None
    assert (humidity.length, humidity.byte_order) == (2, ByteOrder.LITTLE)  # length derived
    assert env.data_length == 6  # three registers polled


def test_missing_hints_take_the_defaults_and_field_points_have_no_spec() -> None:
    templates = templates_from_rows(ROWS)
    power = templates[2]
    assert (power.modbus_address, power.modbus_function) == (2, 3)  # function: the default
    assert power.modbus_register_count is None
    assert power.data_length == 4  # what the datapoints need
    doors = templates[3]
    assert doors.frame_format is None
    assert not doors.verify_crc
    assert (doors.modbus_address, doors.modbus_function) == (1, 3)
    assert doors.frame_points == ()
    assert [(dp.field, dp.spec) for dp in doors.field_points] == [
        ("door-sensor-1", None),
        ("door-sensor-2", None),
    ]
    assert templates[4].datapoints == ()
    assert templates[4].data_length == 0
    level = templates[5].frame_points[0].spec
    assert level == DecodingSpec(offset=1, encoding=Encoding.UINT8)  # NULLs: big, 0 decimals
    assert templates[5].frame_format is FrameFormat.RAW


def test_a_datapoint_that_cannot_decode_is_refused() -> None:
    with pytest.raises(ValueError, match="word_swapped needs a 32-bit encoding"):
        Datapoint.from_columns(1, "x", offset=0, encoding="int16", byte_order="word_swapped")
    with pytest.raises(ValueError, match="does not match"):
        Datapoint.from_columns(1, "x", offset=0, length=4, encoding="int16")


def test_templates_are_plain_frozen_values() -> None:
    env = templates_from_rows(ROWS)[1]
    assert env == templates_from_rows(ROWS)[1]
    assert hash(env) == hash(templates_from_rows(ROWS)[1])
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.key = "other"  # type: ignore[misc]
    fewer = dataclasses.replace(env, datapoints=env.datapoints[:1])
    assert [dp.key for dp in fewer.frame_points] == ["temperature"]  # derived again
    built = Template(7, "t", datapoints=(Datapoint(1, "status", field="status"),))
    assert built.frame_points == ()
    assert built.field_points == built.datapoints


# --- the processor's forms: the Redis row and the compiled template -------------------------------


def test_the_redis_row_keeps_what_decoding_needs() -> None:
    templates = templates_from_rows(ROWS)
    assert pack_template(templates[1]) == (
        1,
        "env-v1",
        "modbus_rtu",
        True,
        [
            (11, "temperature", 0, 2, "int16", "big", 2, None),
            (12, "humidity", 2, 2, "uint16", "little", 0, None),
        ],
    )
    assert pack_template(templates[3])[4][0] == (
        31, "door-sensor-1", None, None, None, "big", None, "door-sensor-1"
    )  # fmt: skip
    for template in templates.values():
        row = pack_template(template)
        # msgpack gives lists back, not tuples.
        as_lists: list[Any] = [*row[:4], [list(p) for p in row[4]]]
        back = unpack_template(as_lists)
        assert pack_template(back) == row
        assert [dp.spec for dp in back.datapoints] == [dp.spec for dp in template.datapoints]
        assert [dp.field for dp in back.datapoints] == [dp.field for dp in template.datapoints]


def test_compiled_from_the_row_or_the_template_decodes_alike() -> None:
    templates = templates_from_rows(ROWS)
    for template in templates.values():
        row: TemplateRow = pack_template(template)
        a, b = CompiledTemplate.compile(template), CompiledTemplate.from_row(row)
        assert (a.id, a.key, a.frame_format, a.verify_crc) == (b.id, b.key, b.frame_format,
                                                               b.verify_crc)  # fmt: skip
        assert (a.frame_points, a.field_points, a.keys) == (b.frame_points, b.field_points, b.keys)
        assert (a.decode is None) == (b.decode is None) == (not template.frame_points)
    env = CompiledTemplate.compile(templates[1])
    assert env.frame_points == (11, 12)
    assert env.keys == {11: "temperature", 12: "humidity"}
    data = bytearray(6)
    for dp, value in zip(templates[1].frame_points, (21.5, 4200.0), strict=True):
        assert dp.spec is not None
        data[dp.spec.offset : dp.spec.end] = encode_value(dp.spec, value)
    frame = build_modbus_response(1, bytes(data))
    assert env.decode is not None
    assert env.frame_format is not None
    assert env.decode(frame_data(frame, env.frame_format, verify_crc=True)) == [21.5, 4200.0]
    doors = CompiledTemplate.compile(templates[3])
    assert doors.decode is None
    assert doors.field_points == ((31, "door_sensor_1"), (32, "door_sensor_2"))
    assert doors.keys == {31: "door-sensor-1", 32: "door-sensor-2"}

import math
import struct
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from f2pipe_shared.decoding import (
    BadHexError,
    ByteOrder,
    CrcMismatchError,
    DecodingSpec,
    Encoding,
    FrameError,
    FrameFormat,
    FrameFormatError,
    ShortFrameError,
    build_modbus_response,
    compile_decoder,
    compile_template,
    encode_value,
    format_hex_frame,
    frame_data,
    modbus_crc16,
    modbus_data,
    parse_hex_frame,
)

# (size in bytes, signed) of each integer encoding, written out independently of the module.
INTEGERS = {
    Encoding.INT8: (1, True),
    Encoding.UINT8: (1, False),
    Encoding.INT16: (2, True),
    Encoding.UINT16: (2, False),
    Encoding.INT32: (4, True),
    Encoding.UINT32: (4, False),
}

ENVIRONMENTAL = [
    DecodingSpec(offset=0, encoding=Encoding.INT16, decimals=2),  # temperature, degC
    DecodingSpec(offset=2, encoding=Encoding.UINT16, decimals=2),  # humidity, %RH
    DecodingSpec(offset=4, encoding=Encoding.UINT16),  # CO2, ppm
]
# Hand-written: 23.45 degC = 2345 = 0x0929, 45.67 % = 4567 = 0x11D7, 612 ppm = 0x0264.
ENVIRONMENTAL_FRAME = "01 03 06 09 29 11 D7 02 64 C9 A5"


def _power_specs(order: ByteOrder) -> list[DecodingSpec]:
    return [  # voltage V, current A, power W
        DecodingSpec(offset=o, encoding=Encoding.FLOAT32, byte_order=order) for o in (0, 4, 8)
    ]


# 230.5 V = 0x43668000, 4.25 A = 0x40880000, 979.625 W = 0x4474E800 (IEEE 754 single).
POWER_FRAME_BIG = "01 03 0C 43 66 80 00 40 88 00 00 44 74 E8 00 67 F8"
POWER_FRAME_WORD_SWAPPED = "01 03 0C 80 00 43 66 00 00 40 88 E8 00 44 74 08 2F"


def _orders_for(size: int) -> list[ByteOrder]:
    return list(ByteOrder) if size == 4 else [ByteOrder.BIG, ByteOrder.LITTLE]


def _reference_bytes(raw: int, size: int, signed: bool, order: ByteOrder) -> bytes:
    big = raw.to_bytes(size, "big", signed=signed)
    if order is ByteOrder.LITTLE:
        return big[::-1]
    if order is ByteOrder.WORD_SWAPPED:
        return big[2:] + big[:2]
    return big


@st.composite
def integer_cases(draw: st.DrawFn) -> tuple[DecodingSpec, int]:
    encoding = draw(st.sampled_from(sorted(INTEGERS)))
    size, signed = INTEGERS[encoding]
    bits = size * 8
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    spec = DecodingSpec(
        offset=draw(st.integers(0, 8)),
        encoding=encoding,
        byte_order=draw(st.sampled_from(_orders_for(size))),
        decimals=draw(st.integers(0, 9)),
    )
    return spec, draw(st.integers(low, high))


@given(integer_cases(), st.binary(min_size=12, max_size=12))
def test_integers_encode_then_decode_exactly_after_scaling(
    case: tuple[DecodingSpec, int], filler: bytes
) -> None:
    spec, raw = case
    size, signed = INTEGERS[spec.encoding]
    value = raw / 10**spec.decimals
    encoded = encode_value(spec, value)
    frame = filler[: spec.offset] + encoded + filler[spec.offset :]

    assert encoded == _reference_bytes(raw, size, signed, spec.byte_order)
    assert compile_decoder(spec)(frame) == value


@given(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.sampled_from(list(ByteOrder)),
    st.integers(0, 8),
)
def test_float32_without_decimals_round_trips_exactly(
    value: float, order: ByteOrder, offset: int
) -> None:
    spec = DecodingSpec(offset=offset, encoding=Encoding.FLOAT32, byte_order=order)
    frame = bytes(offset) + encode_value(spec, value)

    assert compile_decoder(spec)(frame) == value
    assert _reference_bytes(
        int.from_bytes(struct.pack(">f", value)), 4, False, order
    ) == encode_value(spec, value)


@given(
    # Bounded so value * 10**9 stays a normal float32 (no overflow, no subnormal precision loss).
    st.floats(width=32, min_value=-(2.0**90), max_value=2.0**90).filter(
        lambda v: v == 0 or abs(v) >= 2.0**-90
    ),
    st.sampled_from(list(ByteOrder)),
    st.integers(1, 9),
)
def test_float32_with_decimals_round_trips_within_float32_precision(
    value: float, order: ByteOrder, decimals: int
) -> None:
    spec = DecodingSpec(offset=0, encoding=Encoding.FLOAT32, byte_order=order, decimals=decimals)

    decoded = compile_decoder(spec)(encode_value(spec, value))

    assert math.isclose(decoded, value, rel_tol=2**-23)


def test_float32_nan_decodes_as_nan() -> None:
    spec = DecodingSpec(offset=0, encoding=Encoding.FLOAT32)

    assert math.isnan(compile_decoder(spec)(bytes.fromhex("7FC00000")))


@pytest.mark.parametrize("encoding", sorted(INTEGERS))
def test_encode_rejects_integers_out_of_range(encoding: Encoding) -> None:
    size, signed = INTEGERS[encoding]
    high = 2 ** (size * 8 - (1 if signed else 0)) - 1
    low = -(2 ** (size * 8 - 1)) if signed else 0
    spec = DecodingSpec(offset=0, encoding=encoding)

    for outside in (high + 1, low - 1):
        with pytest.raises(ValueError, match="range"):
            encode_value(spec, outside)


def test_encode_rejects_scaled_value_out_of_range() -> None:
    spec = DecodingSpec(offset=0, encoding=Encoding.INT16, decimals=2)

    assert encode_value(spec, 327.67) == b"\x7f\xff"
    with pytest.raises(ValueError, match="range"):
        encode_value(spec, 327.68)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_encode_rejects_non_finite_integers(value: float) -> None:
    with pytest.raises(ValueError, match="cannot be encoded"):
        encode_value(DecodingSpec(offset=0, encoding=Encoding.UINT16), value)


def test_encode_rejects_float32_overflow() -> None:
    with pytest.raises(ValueError, match="float32"):
        encode_value(DecodingSpec(offset=0, encoding=Encoding.FLOAT32), 1e39)


def test_crc_check_value() -> None:
    assert modbus_crc16(b"123456789") == 0x4B37


def test_crc_of_a_known_modbus_request() -> None:
    # "01 03 00 00 00 0A C5 CD": read 10 holding registers from address 1.
    assert modbus_crc16(bytes.fromhex("01030000000A")).to_bytes(2, "little") == b"\xc5\xcd"


def test_crc_of_nothing_is_the_initial_value() -> None:
    assert modbus_crc16(b"") == 0xFFFF


@given(st.integers(0, 255), st.binary(max_size=255), st.sampled_from([3, 4]))
def test_built_response_passes_crc_and_yields_its_data(
    address: int, data: bytes, function: int
) -> None:
    frame = build_modbus_response(address, data, function)

    assert frame[:3] == bytes((address, function, len(data)))
    assert bytes(modbus_data(frame, verify_crc=True)) == data


@given(st.binary(min_size=1, max_size=64), st.data())
def test_flipped_address_data_or_crc_byte_fails_crc(data: bytes, draw: st.DataObject) -> None:
    frame = bytearray(build_modbus_response(1, data))
    # Not the function or byte count: flipping those is caught earlier, as a bad frame.
    index = draw.draw(st.sampled_from([0, *range(3, len(frame))]))
    frame[index] ^= draw.draw(st.integers(1, 255))

    with pytest.raises(CrcMismatchError) as info:
        modbus_data(bytes(frame), verify_crc=True)

    assert info.value.actual == int.from_bytes(frame[-2:], "little")
    assert info.value.expected == modbus_crc16(frame[:-2])
    assert info.value.expected != info.value.actual


@given(st.binary(min_size=1, max_size=64), st.data())
def test_any_flipped_byte_is_detected(data: bytes, draw: st.DataObject) -> None:
    frame = bytearray(build_modbus_response(1, data))
    frame[draw.draw(st.integers(0, len(frame) - 1))] ^= draw.draw(st.integers(1, 255))

    with pytest.raises(FrameError):
        modbus_data(bytes(frame), verify_crc=True)


def test_crc_is_not_checked_when_not_asked() -> None:
    frame = bytearray(build_modbus_response(1, b"\x00\x2a"))
    frame[-1] ^= 0xFF

    assert bytes(modbus_data(bytes(frame), verify_crc=False)) == b"\x00\x2a"


def test_environmental_sensor_frame_decodes() -> None:
    decode = compile_template(ENVIRONMENTAL)

    values = decode(modbus_data(parse_hex_frame(ENVIRONMENTAL_FRAME), verify_crc=True))

    assert values == [23.45, 45.67, 612.0]


def test_environmental_sensor_negative_temperature() -> None:
    frame = build_modbus_response(2, struct.pack(">hHH", -550, 9876, 415))

    assert compile_template(ENVIRONMENTAL)(modbus_data(frame)) == [-5.5, 98.76, 415.0]


@pytest.mark.parametrize(
    ("frame", "order"),
    [(POWER_FRAME_BIG, ByteOrder.BIG), (POWER_FRAME_WORD_SWAPPED, ByteOrder.WORD_SWAPPED)],
)
def test_power_monitor_float32_frame_decodes(frame: str, order: ByteOrder) -> None:
    data = modbus_data(parse_hex_frame(frame), verify_crc=True)

    assert compile_template(_power_specs(order))(data) == [230.5, 4.25, 979.625]


def test_word_swapped_read_as_big_gives_a_different_value() -> None:
    data = modbus_data(parse_hex_frame(POWER_FRAME_WORD_SWAPPED), verify_crc=True)

    assert compile_template(_power_specs(ByteOrder.BIG))(data)[0] != 230.5


def test_little_endian_int16() -> None:
    spec = DecodingSpec(offset=1, encoding=Encoding.INT16, byte_order=ByteOrder.LITTLE)

    assert compile_decoder(spec)(b"\x00\x18\xfc") == -1000.0


def test_frame_data_for_both_formats() -> None:
    frame = parse_hex_frame(ENVIRONMENTAL_FRAME)

    assert bytes(frame_data(frame, FrameFormat.MODBUS_RTU)) == frame[3:-2]
    assert frame_data(frame, FrameFormat.RAW) is frame


def test_raw_frame_offsets_count_from_the_frame_start() -> None:
    spec = DecodingSpec(offset=0, encoding=Encoding.UINT8)

    assert compile_decoder(spec)(frame_data(b"\x07\x08", FrameFormat.RAW)) == 7.0


def test_decoding_past_the_end_names_offset_and_length() -> None:
    spec = DecodingSpec(offset=10, encoding=Encoding.UINT32)

    with pytest.raises(ShortFrameError, match=r"offset 10 needs 14 bytes.* has 12") as info:
        compile_decoder(spec)(bytes(12))

    assert info.value.reason == "short_frame"


def test_word_swapped_decoding_past_the_end_is_short_frame() -> None:
    spec = DecodingSpec(offset=2, encoding=Encoding.INT32, byte_order=ByteOrder.WORD_SWAPPED)

    with pytest.raises(ShortFrameError, match="offset 2"):
        compile_decoder(spec)(bytes(5))


def test_template_names_the_first_datapoint_that_does_not_fit() -> None:
    with pytest.raises(ShortFrameError, match=r"offset 2 needs 4 bytes.* has 3"):
        compile_template(ENVIRONMENTAL)(b"\x09\x29\x11")


def test_empty_template_decodes_nothing() -> None:
    assert compile_template([])(b"") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("01 03 0C", b"\x01\x03\x0c"),
        ("01030c", b"\x01\x03\x0c"),
        ("01  03\t0C", b"\x01\x03\x0c"),
        ("", b""),
    ],
)
def test_parse_hex_frame_accepts_spaced_or_packed_hex(text: str, expected: bytes) -> None:
    assert parse_hex_frame(text) == expected


@pytest.mark.parametrize("text", ["0G", "1 3 C", "01 0", "0x01", "01,03", "\uff10\uff11"])
def test_parse_hex_frame_rejects_non_hex(text: str) -> None:
    with pytest.raises(BadHexError, match="not hex") as info:
        parse_hex_frame(text)

    assert info.value.reason == "bad_hex"


def test_format_hex_frame_is_the_device_form() -> None:
    assert format_hex_frame(parse_hex_frame(ENVIRONMENTAL_FRAME.lower())) == ENVIRONMENTAL_FRAME


@pytest.mark.parametrize(
    ("text", "error", "fragment"),
    [
        ("01 83 02 C0 F1", FrameFormatError, "exception code 2"),
        ("01 06 00 01 00 03 98 0B", FrameFormatError, "not a read response"),
        ("01 03 04 09 29 11 D7 02 64 C9 A5", FrameFormatError, "byte count 4"),
        ("01 03 08 09 29 11 D7 02 64 C9 A5", ShortFrameError, "byte count 8"),
        ("01 03 06 09 29", ShortFrameError, "byte count 6"),
        ("01 03 00 FF", ShortFrameError, "at least 5"),
        ("", ShortFrameError, "0 bytes"),
    ],
)
def test_modbus_frame_errors(text: str, error: type[FrameError], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        modbus_data(parse_hex_frame(text), verify_crc=True)


def test_frame_error_reasons_and_hierarchy() -> None:
    reasons = {
        BadHexError: "bad_hex",
        ShortFrameError: "short_frame",
        CrcMismatchError: "crc_mismatch",
        FrameFormatError: "bad_frame",
    }
    for error, reason in reasons.items():
        assert issubclass(error, FrameError)
        assert issubclass(error, ValueError)
        assert error.reason == reason


@pytest.mark.parametrize(
    ("address", "data", "function"), [(256, b"", 3), (-1, b"", 3), (1, bytes(256), 3), (1, b"", 0)]
)
def test_build_modbus_response_rejects_what_a_frame_cannot_hold(
    address: int, data: bytes, function: int
) -> None:
    with pytest.raises(ValueError, match="cannot frame"):
        build_modbus_response(address, data, function)


@pytest.mark.parametrize(("encoding", "length"), [(e, s) for e, (s, _) in INTEGERS.items()])
def test_spec_derives_length_from_encoding(encoding: Encoding, length: int) -> None:
    assert DecodingSpec(offset=0, encoding=encoding).length == length
    assert DecodingSpec.model_validate({"offset": 0, "encoding": encoding, "length": None}).length


def test_spec_from_a_database_row_ignores_other_columns() -> None:
    row = {"id": 7, "name": "temperature", "offset": 0, "length": 2, "encoding": "int16"}

    spec = DecodingSpec.model_validate(row)

    assert spec == DecodingSpec(offset=0, length=2, encoding=Encoding.INT16)
    assert (spec.byte_order, spec.decimals) == (ByteOrder.BIG, 0)


def test_spec_from_an_object_with_attributes() -> None:
    row = SimpleNamespace(offset=4, length=4, encoding="float32", byte_order="little", decimals=1)

    assert DecodingSpec.model_validate(row).end == 8


def test_spec_is_hashable_for_caching_compiled_decoders() -> None:
    a = DecodingSpec(offset=0, encoding=Encoding.INT16)

    assert {a: 1}[DecodingSpec(offset=0, length=2, encoding=Encoding.INT16)] == 1


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"offset": 0, "encoding": "int16", "length": 4}, "does not match int16"),
        ({"offset": 0, "encoding": "int16", "byte_order": "word_swapped"}, "32-bit"),
        ({"offset": 0, "encoding": "uint8", "byte_order": "word_swapped"}, "32-bit"),
        ({"offset": -1, "encoding": "int16"}, "offset"),
        ({"offset": 0, "encoding": "int16", "decimals": 10}, "decimals"),
        ({"offset": 0, "encoding": "int16", "decimals": -1}, "decimals"),
        ({"offset": 0, "encoding": "int64"}, "encoding"),
        ({"offset": 0, "encoding": "int16", "byte_order": "middle"}, "byte_order"),
    ],
)
def test_spec_rejects_inconsistent_fields(fields: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        DecodingSpec.model_validate(fields)

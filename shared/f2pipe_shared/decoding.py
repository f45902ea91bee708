"""Sensor frames: hex parsing, Modbus RTU framing and CRC, and datapoint decoding.

A datapoint's ``DecodingSpec`` (the same fields as its database columns) says where its value
sits in a frame. ``compile_decoder`` turns a spec into a closure over a precompiled
``struct.Struct`` once, so the processor pays only an unpack and a division per value.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Annotated, Any, ClassVar, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, model_validator

ByteData: TypeAlias = bytes | bytearray | memoryview
Decoder: TypeAlias = Callable[[ByteData], float]
TemplateDecoder: TypeAlias = Callable[[ByteData], list[float]]


class FrameError(ValueError):
    """A frame that cannot be decoded; ``reason`` is the dead-letter reason."""

    reason: ClassVar[str] = "bad_frame"


class BadHexError(FrameError):
    reason: ClassVar[str] = "bad_hex"


class ShortFrameError(FrameError):
    reason: ClassVar[str] = "short_frame"


class FrameFormatError(FrameError):
    reason: ClassVar[str] = "bad_frame"


class CrcMismatchError(FrameError):
    reason: ClassVar[str] = "crc_mismatch"

    def __init__(self, expected: int, actual: int) -> None:
        self.expected = expected  # computed over the frame
        self.actual = actual  # carried by the frame
        super().__init__(f"CRC mismatch: frame carries 0x{actual:04X}, computed 0x{expected:04X}")


class Encoding(StrEnum):
    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"


class ByteOrder(StrEnum):
    BIG = "big"  # ABCD
    LITTLE = "little"  # DCBA
    WORD_SWAPPED = "word_swapped"  # CDAB: big-endian 16-bit registers, low word first


class FrameFormat(StrEnum):
    MODBUS_RTU = "modbus_rtu"  # offsets count from the first data byte (frame byte 3)
    RAW = "raw"  # offsets count from the frame start; no header, no CRC


_STRUCT_CODES: dict[Encoding, str] = {
    Encoding.INT8: "b",
    Encoding.UINT8: "B",
    Encoding.INT16: "h",
    Encoding.UINT16: "H",
    Encoding.INT32: "i",
    Encoding.UINT32: "I",
    Encoding.FLOAT32: "f",
}
ENCODING_SIZES: dict[Encoding, int] = {e: struct.calcsize(c) for e, c in _STRUCT_CODES.items()}
_WORDS = struct.Struct(">HH")


class DecodingSpec(BaseModel):
    """Where and how one datapoint's value sits in a frame (field names = DB columns)."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    offset: Annotated[int, Field(ge=0)]
    # Derived from the encoding when omitted or NULL (_derive_length); the default only
    # survives when the encoding is invalid, which then is the one error reported.
    length: int = 0
    encoding: Encoding
    byte_order: ByteOrder = ByteOrder.BIG
    decimals: Annotated[int, Field(ge=0, le=9)] = 0

    @model_validator(mode="before")
    @classmethod
    def _derive_length(cls, data: Any) -> Any:
        # The encoding alone fixes the length, so a template may leave it out (or NULL).
        if isinstance(data, dict) and data.get("length") is None:
            try:
                return {**data, "length": ENCODING_SIZES[Encoding(data["encoding"])]}
            except (KeyError, ValueError):
                pass  # an unknown encoding gets its own error from field validation
        return data

    @model_validator(mode="after")
    def _check_consistent(self) -> DecodingSpec:
        size = ENCODING_SIZES[self.encoding]
        if self.length != size:
            raise ValueError(f"length {self.length} does not match {self.encoding} ({size} bytes)")
        if self.byte_order is ByteOrder.WORD_SWAPPED and size != 4:
            raise ValueError(f"word_swapped needs a 32-bit encoding, not {self.encoding}")
        return self

    @property
    def end(self) -> int:
        """One past the datapoint's last byte: the data length it needs."""
        return self.offset + self.length


def compile_decoder(spec: DecodingSpec) -> Decoder:
    """A function decoding ``spec``'s value (scaled by 10**-decimals) from frame data."""
    offset, end = spec.offset, spec.end
    scale: int = 10**spec.decimals
    if spec.byte_order is ByteOrder.WORD_SWAPPED:
        return _swapped_decoder(_value_struct(spec, ">"), offset, scale, end)
    prefix = "<" if spec.byte_order is ByteOrder.LITTLE else ">"
    unpack_from = _value_struct(spec, prefix).unpack_from

    def decode(data: ByteData) -> float:
        try:
            raw: int | float = unpack_from(data, offset)[0]
        except struct.error:
            raise _past_end(offset, end, len(data)) from None
        return raw / scale  # int / int is correctly rounded, unlike raw * 0.01

    return decode


def compile_template(specs: Sequence[DecodingSpec]) -> TemplateDecoder:
    """A function decoding every datapoint of a template, in order, from one frame's data."""
    decoders = [compile_decoder(spec) for spec in specs]
    # One length check up front names the first datapoint that does not fit.
    longest = max(specs, key=lambda s: s.end, default=None)
    need = 0 if longest is None else longest.end

    def decode(data: ByteData) -> list[float]:
        if len(data) < need:
            first = next(s for s in specs if s.end > len(data))
            raise _past_end(first.offset, first.end, len(data))
        return [d(data) for d in decoders]

    return decode


def encode_value(spec: DecodingSpec, value: float) -> bytes:
    """The bytes ``spec`` decodes to ``value`` (integers rounded); ValueError if out of range."""
    prefix = "<" if spec.byte_order is ByteOrder.LITTLE else ">"
    packer = _value_struct(spec, prefix)
    raw: int | float = value * 10**spec.decimals
    if spec.encoding is not Encoding.FLOAT32:
        raw = _checked_int(spec.encoding, raw)
    try:
        packed = packer.pack(raw)
    except (OverflowError, struct.error) as exc:
        raise ValueError(f"{value!r} does not fit {spec.encoding}: {exc}") from None
    return packed[2:] + packed[:2] if spec.byte_order is ByteOrder.WORD_SWAPPED else packed


def parse_hex_frame(s: str) -> bytes:
    """Bytes from hex such as ``"01 03 0C 09 C4"`` or ``"01030C09C4"``; BadHexError if not hex."""
    try:
        return bytes.fromhex(s)
    except (ValueError, TypeError) as exc:
        shown = repr(s) if len(repr(s)) <= 80 else f"{repr(s)[:77]}..."
        raise BadHexError(f"frame is not hex bytes ({exc}): {shown}") from None


def format_hex_frame(frame: ByteData) -> str:
    """The device's wire form of a frame: uppercase hex bytes separated by spaces."""
    return bytes(frame).hex(" ").upper()


def frame_data(frame: ByteData, frame_format: FrameFormat, *, verify_crc: bool = True) -> ByteData:
    """The bytes a template's offsets count from, for either frame format."""
    if frame_format is FrameFormat.MODBUS_RTU:
        return modbus_data(frame, verify_crc=verify_crc)
    return frame


def _make_crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _make_crc_table()

# Read coils/inputs/holding/input registers: the responses that carry a byte count.
_READ_FUNCTIONS = frozenset({1, 2, 3, 4})
_MIN_RESPONSE = 5  # address, function, byte count (or exception code), CRC low, CRC high


def modbus_crc16(data: ByteData) -> int:
    """CRC-16/MODBUS (init 0xFFFF, reflected polynomial 0xA001)."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def build_modbus_response(address: int, data: bytes, function: int = 3) -> bytes:
    """A Modbus RTU read response carrying ``data`` (what a sensor would send)."""
    if not 0 <= address <= 255 or not 1 <= function <= 127 or len(data) > 255:
        raise ValueError(
            f"cannot frame address {address}, function {function}, {len(data)} data bytes "
            "(each must fit a byte; function 1..127)"
        )
    body = bytes((address, function, len(data))) + data
    return body + modbus_crc16(body).to_bytes(2, "little")


def modbus_data(frame: ByteData, verify_crc: bool = True) -> memoryview:
    """The data bytes of a Modbus RTU read response, after checking its header and CRC."""
    size = len(frame)
    if size >= 3 and frame[1] & 0x80:
        raise FrameFormatError(
            f"Modbus exception response: function 0x{frame[1] & 0x7F:02X}, "
            f"exception code {frame[2]}"
        )
    if size < _MIN_RESPONSE:
        raise ShortFrameError(f"frame has {size} bytes; a Modbus RTU response has at least 5")
    if frame[1] not in _READ_FUNCTIONS:
        raise FrameFormatError(f"function 0x{frame[1]:02X} is not a read response (1..4)")
    _check_byte_count(frame[2], size)
    if verify_crc:
        _check_crc(frame)
    return memoryview(frame)[3 : size - 2]


def _check_byte_count(count: int, size: int) -> None:
    expected = count + _MIN_RESPONSE
    if size < expected:
        raise ShortFrameError(f"byte count {count} means a frame of {expected} bytes, got {size}")
    if size > expected:
        raise FrameFormatError(
            f"byte count {count} does not match the frame: {size} bytes, expected {expected}"
        )


def _check_crc(frame: ByteData) -> None:
    size = len(frame)
    actual = frame[size - 2] | frame[size - 1] << 8  # the CRC travels low byte first
    expected = modbus_crc16(memoryview(frame)[: size - 2])
    if actual != expected:
        raise CrcMismatchError(expected, actual)


def _value_struct(spec: DecodingSpec, prefix: str) -> struct.Struct:
    return struct.Struct(prefix + _STRUCT_CODES[spec.encoding])


def _swapped_decoder(value: struct.Struct, offset: int, scale: int, end: int) -> Decoder:
    unpack_words, pack_words, unpack_value = _WORDS.unpack_from, _WORDS.pack, value.unpack

    def decode(data: ByteData) -> float:
        try:
            low, high = unpack_words(data, offset)
        except struct.error:
            raise _past_end(offset, end, len(data)) from None
        raw: int | float = unpack_value(pack_words(high, low))[0]
        return raw / scale

    return decode


def _checked_int(encoding: Encoding, scaled: float) -> int:
    if not math.isfinite(scaled):
        raise ValueError(f"{scaled!r} cannot be encoded as {encoding}")
    raw = round(scaled)
    bits = ENCODING_SIZES[encoding] * 8
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    if encoding in (Encoding.UINT8, Encoding.UINT16, Encoding.UINT32):
        low, high = 0, (1 << bits) - 1
    if not low <= raw <= high:
        raise ValueError(f"{scaled!r} (scaled) is outside the {encoding} range {low}..{high}")
    return raw


def _past_end(offset: int, end: int, size: int) -> ShortFrameError:
    return ShortFrameError(
        f"datapoint at offset {offset} needs {end} bytes of frame data, frame data has {size}"
    )

"""The records passed between services, defined once.

`raw-iot-data` (bridge -> processor) and `processed-iot-data` (processor -> sink) carry
batches: a Faust worker pays per Kafka record, so one record per MQTT message would cap the
pipeline (docs/architecture.md). Both framings are msgpack arrays led by a format version,
built from plain tuples so the hot loops never touch Pydantic.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgpack

RAW_BATCH_V1 = 1
PROCESSED_BATCH_V1 = 1


class FramingError(ValueError):
    """A Kafka record is not a batch in the framing it claims (dead-letter reason bad_batch)."""

    reason = "bad_batch"


class RawMessage(NamedTuple):
    """One MQTT message as the bridge received it: topic, payload bytes unchanged, when."""

    topic: str
    payload: bytes
    received_at_us: int  # microseconds since the Unix epoch, UTC


class Reading(NamedTuple):
    """One decoded value: the row `telemetry.readings` stores."""

    timestamp_us: int  # the device's timestamp, microseconds since the Unix epoch, UTC
    device_id: int  # the sensor device's id, not the controller's
    datapoint_id: int
    value: float


class Event(NamedTuple):
    """A non-numeric happening (reader scan, door opened…): the row `telemetry.events` stores."""

    timestamp_us: int
    device_id: int
    kind: str
    data: dict[str, Any]


class ProcessedBatch(NamedTuple):
    """What the processor made of one raw record, and where that record came from."""

    source_partition: int
    source_offset: int
    readings: list[Reading]
    events: list[Event]


def partition_for_device(device: str, partitions: int) -> int:
    """The raw-iot-data partition of a device (`f2-<mac>`): stable across processes and
    restarts (unlike Python's hash()), so each device's messages stay in order."""
    return zlib.crc32(device.encode()) % partitions


def encode_raw_batch(messages: Sequence[RawMessage]) -> bytes:
    packed: bytes = msgpack.packb([RAW_BATCH_V1, [tuple(m) for m in messages]], use_bin_type=True)
    return packed


def decode_raw_batch(data: bytes) -> list[RawMessage]:
    items = _unpack(data, RAW_BATCH_V1, 2)[1]
    try:
        messages = [RawMessage(*item) for item in items]
    except TypeError as exc:
        raise FramingError(
            f"raw batch item is not [topic, payload, received_at_us]: {exc}"
        ) from None
    for m in messages:
        if not (
            type(m.topic) is str and type(m.payload) is bytes and type(m.received_at_us) is int
        ):
            raise FramingError(f"raw batch item has wrong types: {m!r:.200}")
    return messages


def encode_processed_batch(batch: ProcessedBatch) -> bytes:
    packed: bytes = msgpack.packb(
        [
            PROCESSED_BATCH_V1,
            batch.source_partition,
            batch.source_offset,
            [tuple(r) for r in batch.readings],
            [tuple(e) for e in batch.events],
        ],
        use_bin_type=True,
    )
    return packed


def decode_processed_batch(data: bytes) -> ProcessedBatch:
    _, partition, offset, readings, events = _unpack(data, PROCESSED_BATCH_V1, 5)
    try:
        return ProcessedBatch(
            partition,
            offset,
            [Reading(*r) for r in readings],
            [Event(*e) for e in events],
        )
    except TypeError as exc:
        raise FramingError(f"processed batch row has the wrong shape: {exc}") from None


def _unpack(data: bytes, version: int, length: int) -> list[Any]:
    try:
        frame = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise FramingError(f"not a msgpack batch: {exc}") from None
    if not isinstance(frame, list) or len(frame) != length:
        raise FramingError(f"batch is not a {length}-element array")
    if frame[0] != version:
        raise FramingError(f"unknown batch format version {frame[0]!r} (expected {version})")
    return frame

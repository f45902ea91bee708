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
# v2 adds the controllers' last-seen times (connectivity); written only when there are some,
# and v1 records (already in Kafka, or from an older processor) still decode.
PROCESSED_BATCH_V2 = 2


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


class Seen(NamedTuple):
    """A controller heard from: its registry device id, and when the bridge last received one
    of its messages (µs since the epoch). The sink keeps it in telemetry.controller_status."""

    device_id: int
    last_seen_us: int


class ProcessedBatch(NamedTuple):
    """What the processor made of one raw record, and where that record came from.

    ``seen``: controllers' last-seen times, reported at most every few seconds per controller
    (not per message: one database write per message would cost the sink its throughput).
    A batch the connectivity timer makes (offline events) has ``source_offset`` -1.
    """

    source_partition: int
    source_offset: int
    readings: list[Reading]
    events: list[Event]
    seen: tuple[Seen, ...] = ()


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
    frame = [
        PROCESSED_BATCH_V2 if batch.seen else PROCESSED_BATCH_V1,
        batch.source_partition,
        batch.source_offset,
        # msgpack packs a tuple subclass (the NamedTuples) as the plain array: no copy needed.
        batch.readings,
        batch.events,
    ]
    if batch.seen:
        frame.append([tuple(s) for s in batch.seen])
    packed: bytes = msgpack.packb(frame, use_bin_type=True)
    return packed


def decode_processed_batch(data: bytes) -> ProcessedBatch:
    frame = _unpack_any(data, {PROCESSED_BATCH_V1: 5, PROCESSED_BATCH_V2: 6})
    partition, offset, readings, events = frame[1:5]
    try:
        seen = tuple(Seen(*s) for s in frame[5]) if len(frame) == 6 else ()
        return ProcessedBatch(
            partition,
            offset,
            [Reading(*r) for r in readings],
            [Event(*e) for e in events],
            seen,
        )
    except TypeError as exc:
        raise FramingError(f"processed batch row has the wrong shape: {exc}") from None


def _unpack(data: bytes, version: int, length: int) -> list[Any]:
    return _unpack_any(data, {version: length})


def _unpack_any(data: bytes, lengths: dict[int, int]) -> list[Any]:
    """The frame, if it is one of ``lengths``' versions (version -> array length)."""
    try:
        frame = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise FramingError(f"not a msgpack batch: {exc}") from None
    if not isinstance(frame, list) or not frame:
        raise FramingError(f"batch is not a {min(lengths.values())}-element array")
    length = lengths.get(frame[0]) if type(frame[0]) is int else None
    if length is None:
        if len(frame) not in lengths.values():
            raise FramingError(f"batch is not a {min(lengths.values())}-element array")
        expected = " or ".join(map(str, lengths))
        raise FramingError(f"unknown batch format version {frame[0]!r} (expected {expected})")
    if len(frame) != length:
        raise FramingError(f"batch is not a {length}-element array")
    return frame

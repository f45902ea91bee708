"""Messages as the devices of a registry would send them, with the output they must give.

For tests and the benchmark: every device on a pin, every template, frames built with the
shared encoder (``encode_value`` + ``build_modbus_response``) so decoding is checked against
an independent writer, not against itself.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg

from f2pipe_processor.registry import DatapointRow, TemplateRow
from f2pipe_shared.decoding import (
    ENCODING_SIZES,
    DecodingSpec,
    Encoding,
    build_modbus_response,
    encode_value,
    format_hex_frame,
)
from f2pipe_shared.records import Event, RawMessage, Reading
from f2pipe_shared.timestamps import format_device_timestamp, from_epoch_us

_FLEET_SQL = """
SELECT l.controller_mac, l.connector, l.mode, l.component, l.device_id, l.template_id
FROM registry.device_locations AS l
WHERE l.pin_id IS NOT NULL
ORDER BY l.controller_mac, l.connector, l.component
"""

_TEMPLATES_SQL = """
SELECT t.id, t.key, t.frame_format, t.verify_crc, t.modbus_address,
       dp.id, dp.key, dp."offset", dp.length, dp.encoding, dp.byte_order, dp.decimals, dp.field
FROM registry.device_templates AS t
LEFT JOIN registry.datapoints AS dp ON dp.template_id = t.id
ORDER BY t.id, dp.sort_order, dp.id
"""

_FIELDS = {
    "door-sensors": ("door-sensor-1", "door-sensor-2"),
    "exit-buttons": ("exit-button-1", "exit-button-2"),
}


@dataclass(frozen=True)
class SampleTemplate:
    row: TemplateRow
    modbus_address: int | None


@dataclass(frozen=True)
class Slot:
    """A device on a pin: what its topic is and how it encodes."""

    mac: str
    connector: str
    mode: str
    component: str
    device_id: int
    template: SampleTemplate | None

    @property
    def stem(self) -> str:
        return self.component.rsplit("-", 1)[0] if self.component[-1].isdigit() else self.component

    def topic(self) -> str:
        kind = "tele" if self.stem in ("sensor", "reader") else "stat"
        return f"{kind}/f2-{self.mac}/{self.mode}/{self.connector}/{self.component}"


class Sample(NamedTuple):
    message: RawMessage
    readings: list[Reading]
    events: list[Event]


def load_fleet(conninfo: str) -> list[Slot]:
    """Every device on a pin of the registry at ``conninfo``, with its template."""
    with psycopg.connect(conninfo) as conn:
        templates: dict[int, tuple[list[Any], int | None]] = {}
        for tid, key, fmt, crc, address, *point in conn.execute(_TEMPLATES_SQL).fetchall():
            row, _ = templates.setdefault(tid, ([tid, key, fmt, crc, []], address))
            if point[0] is not None:
                row[4].append(tuple(point))
        slots = []
        for mac, connector, mode, component, device_id, template_id in conn.execute(
            _FLEET_SQL
        ).fetchall():
            found = templates.get(template_id) if template_id is not None else None
            template = None
            if found is not None:
                template = SampleTemplate(tuple(found[0]), found[1])
            slots.append(Slot(mac, connector, mode, component, device_id, template))
    return slots


def make_sample(slot: Slot, ts_us: int, rng: random.Random) -> Sample:
    """One message from ``slot``'s device, and the readings and events it must become."""
    stamp = format_device_timestamp(from_epoch_us(ts_us))
    stem = slot.stem
    points: list[DatapointRow] = list(slot.template.row[4]) if slot.template else []
    readings: list[Reading] = []
    events: list[Event] = []
    body: dict[str, Any] = {"timestamp": stamp}
    if stem == "sensor":
        assert slot.template is not None, f"sensor {slot.device_id} without template"
        data = bytearray()
        for dp_id, _key, offset, length, encoding, byte_order, decimals, _field in points:
            spec = DecodingSpec(
                offset=offset,
                length=length,
                encoding=encoding,
                byte_order=byte_order,
                decimals=decimals,
            )
            value = _sample_value(spec, rng)
            encoded = encode_value(spec, value)
            end = spec.offset + len(encoded)
            data.extend(b"\x00" * max(0, end - len(data)))
            data[spec.offset : end] = encoded
            readings.append(Reading(ts_us, slot.device_id, dp_id, value))
        frame = build_modbus_response(slot.template.modbus_address or 1, bytes(data))
        body["data"] = format_hex_frame(frame)
    elif stem == "reader":
        body["data"] = f"{rng.getrandbits(56):014X}"
        events.append(Event(ts_us, slot.device_id, "scan", {"data": body["data"]}))
    else:
        for name in _FIELDS.get(stem, ("status",)):
            body[name] = rng.random() < 0.5
        fields = {k: v for k, v in body.items() if k != "timestamp"}
        events.append(Event(ts_us, slot.device_id, "state", fields))
        for dp_id, _key, *_spec, field in points:
            if field in fields:
                readings.append(Reading(ts_us, slot.device_id, dp_id, float(fields[field])))
    payload = json.dumps(body, separators=(",", ":")).encode()
    return Sample(RawMessage(slot.topic(), payload, ts_us), readings, events)


def _sample_value(spec: DecodingSpec, rng: random.Random) -> float:
    """A value ``spec`` carries exactly: what the decoder must give back bit for bit."""
    scale: int = 10**spec.decimals
    if spec.encoding is Encoding.FLOAT32:
        # A float32 of the value times the scale, divided back: exactly what decoding does.
        raw: float = struct.unpack(">f", struct.pack(">f", rng.uniform(-1000, 1000) * scale))[0]
        return raw / scale
    bits = ENCODING_SIZES[spec.encoding] * 8
    if spec.encoding.value.startswith("u"):
        low, high = 0, (1 << bits) - 1
    else:
        low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return rng.randint(low, high) / scale


def samples(
    slots: Sequence[Slot], start_us: int, rng: random.Random, step_us: int = 1000
) -> Iterator[Sample]:
    """An endless stream cycling through ``slots``, timestamps ``step_us`` apart."""
    ts = start_us
    while True:
        for slot in slots:
            yield make_sample(slot, ts, rng)
            ts += step_us

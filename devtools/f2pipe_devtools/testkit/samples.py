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

from f2pipe_shared.decoding import (
    ENCODING_SIZES,
    DecodingSpec,
    Encoding,
    build_modbus_response,
    encode_value,
    format_hex_frame,
)
from f2pipe_shared.records import Event, RawMessage, Reading
from f2pipe_shared.registry import Template, fetch_fleet
from f2pipe_shared.timestamps import format_device_timestamp, from_epoch_us

_FIELDS = {
    "door-sensors": ("door-sensor-1", "door-sensor-2"),
    "exit-buttons": ("exit-button-1", "exit-button-2"),
}


@dataclass(frozen=True)
class Slot:
    """A device on a pin: what its topic is and how it encodes."""

    mac: str
    connector: str
    mode: str
    component: str
    device_id: int
    template: Template | None

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
        fleet = fetch_fleet(conn)
    slots = []
    for loc in fleet.locations:
        template = None if loc.template_id is None else fleet.templates.get(loc.template_id)
        where = (loc.controller_mac, loc.connector, loc.mode, loc.component)
        slots.append(Slot(*where, loc.device_id, template))
    return slots


def make_sample(slot: Slot, ts_us: int, rng: random.Random) -> Sample:
    """One message from ``slot``'s device, and the readings and events it must become."""
    stamp = format_device_timestamp(from_epoch_us(ts_us))
    stem = slot.stem
    template = slot.template
    readings: list[Reading] = []
    events: list[Event] = []
    body: dict[str, Any] = {"timestamp": stamp}
    if stem == "sensor":
        assert template is not None, f"sensor {slot.device_id} without template"
        data = bytearray()
        for point in template.frame_points:
            spec = point.spec
            assert spec is not None
            value = _sample_value(spec, rng)
            encoded = encode_value(spec, value)
            end = spec.offset + len(encoded)
            data.extend(b"\x00" * max(0, end - len(data)))
            data[spec.offset : end] = encoded
            readings.append(Reading(ts_us, slot.device_id, point.id, value))
        frame = build_modbus_response(template.modbus_address, bytes(data))
        body["data"] = format_hex_frame(frame)
    elif stem == "reader":
        body["data"] = f"{rng.getrandbits(56):014X}"
        events.append(Event(ts_us, slot.device_id, "scan", {"data": body["data"]}))
    else:
        for name in _FIELDS.get(stem, ("status",)):
            body[name] = rng.random() < 0.5
        fields = {k: v for k, v in body.items() if k != "timestamp"}
        events.append(Event(ts_us, slot.device_id, "state", fields))
        for point in template.field_points if template is not None else ():
            if point.field in fields:
                value = float(fields[point.field])
                readings.append(Reading(ts_us, slot.device_id, point.id, value))
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

"""The per-message work, as plain Python loops over a batch (no Faust, no I/O).

Two passes around the batched lookup: ``parse_messages`` checks topic, payload and timestamp
and names what must be looked up; ``decode_messages`` turns each message into readings and
events with the resolved device and template. A message that fails becomes a ``Rejected``
(the dead-letter reason and why); the rest of the batch goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, cast

from f2pipe_processor.registry import CompiledTemplate, Location, Resolved, Unresolved
from f2pipe_shared.deadletters import Reason
from f2pipe_shared.decoding import FrameError
from f2pipe_shared.payloads import (
    DeviceMessage,
    PayloadError,
    ReaderScan,
    SensorFrame,
    parse_payload,
    sensor_frame_fields,
)
from f2pipe_shared.records import Event, RawMessage, Reading
from f2pipe_shared.timestamps import (
    EpochParser,
    format_device_timestamp,
    from_epoch_us,
    to_epoch_us,
)
from f2pipe_shared.topics import ComponentKind, Topic, TopicError, parse_topic

log = logging.getLogger(__name__)

_COMMAND = "cmnd topics go to devices, not into the pipeline (only stat and tele are ingested)"

# Device id -> datapoint id -> (timestamp, value, datapoint key): the newest of a batch.
LatestValues = dict[int, dict[int, tuple[int, float, str]]]


class Parsed(NamedTuple):
    """A message whose topic, payload and timestamp are valid."""

    position: int  # in the batch: dead letters keep the batch's order
    message: RawMessage
    topic: Topic
    payload: DeviceMessage | None  # None: a sensor frame read by the fast path (`frame` only)
    timestamp_us: int
    frame: str | None  # a sensor frame's hex


# A Reading built without NamedTuple's Python-level __new__: three per message on average.
_reading = tuple.__new__


class Rejected(NamedTuple):
    """A message for the dead-letter topic."""

    position: int
    message: RawMessage
    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class TimestampWindow:
    """Device timestamps outside [earliest_us, latest_us] are implausible."""

    earliest_us: int
    latest_us: int

    @classmethod
    def around(cls, now_us: int, max_future_s: float, max_age_s: float) -> TimestampWindow:
        return cls(now_us - int(max_age_s * 1e6), now_us + int(max_future_s * 1e6))


@dataclass(slots=True)
class Parse:
    parsed: list[Parsed] = field(default_factory=list)
    topics: dict[str, Topic] = field(default_factory=dict)  # distinct topics to resolve
    rejected: list[Rejected] = field(default_factory=list)


@dataclass(slots=True)
class Decoded:
    readings: list[Reading] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    latest: LatestValues = field(default_factory=dict)


def parse_messages(messages: Sequence[RawMessage], window: TimestampWindow) -> Parse:
    out = Parse()
    parsed, topics, rejected = out.parsed, out.topics, out.rejected
    earliest, latest = window.earliest_us, window.latest_us
    epochs, sensor = EpochParser(), ComponentKind.SENSOR
    for index, message in enumerate(messages):
        try:
            topic = parse_topic(message.topic)
            if topic.kind == "cmnd":
                rejected.append(Rejected(index, message, Reason.bad_topic, _COMMAND))
                continue
            # Resolved even if the payload fails: a message proves its controller online.
            topics[message.topic] = topic
            fast = sensor_frame_fields(message.payload) if topic.component_kind is sensor else None
            payload: DeviceMessage | None = None
            frame: str | None = None
            if fast is not None:
                frame = fast[1]
                try:
                    ts = epochs.epoch_us(fast[0])
                except ValueError:
                    fast = None  # the model says what is wrong with it
            if fast is None:
                # A stat/tele topic always gets a device message model, never a command.
                payload = cast(DeviceMessage, parse_payload(topic, message.payload))
                ts = to_epoch_us(payload.timestamp)
                frame = payload.data if isinstance(payload, SensorFrame) else None
            if ts > latest or ts < earliest:
                rejected.append(_implausible(index, message, ts, window))
                continue
        except TopicError as exc:
            rejected.append(Rejected(index, message, Reason.bad_topic, str(exc)))
            continue
        except PayloadError as exc:
            rejected.append(Rejected(index, message, Reason(exc.reason), str(exc)))
            continue
        except Exception as exc:  # a bug must cost one message, not the agent
            rejected.append(_unexpected(index, message, exc))
            continue
        parsed.append(Parsed(index, message, topic, payload, ts, frame))
    return out


def decode_messages(
    parsed: Sequence[Parsed], locations: dict[str, Resolved], templates: dict[int, CompiledTemplate]
) -> Decoded:
    out = Decoded()
    readings, events, rejected, latest = out.readings, out.events, out.rejected, out.latest
    sensor = ComponentKind.SENSOR
    for item in parsed:
        index, message = item.position, item.message
        location = locations[message.topic]
        if isinstance(location, Unresolved):
            rejected.append(Rejected(index, message, location.reason, location.detail))
            continue
        device = location.device_id
        template = templates.get(location.template_id) if location.template_id is not None else None
        ts = item.timestamp_us
        try:
            if item.topic.component_kind is sensor:
                if template is None or template.frame is None:
                    rejected.append(_no_frame_template(item, location, template))
                    continue
                values = template.frame(item.frame)  # type: ignore[arg-type]
                newest = latest.setdefault(device, {})
                keys = template.keys
                for dp, value in zip(template.frame_points, values, strict=True):
                    readings.append(_reading(Reading, (ts, device, dp, value)))
                    current = newest.get(dp)  # _keep_newest, inlined: per reading
                    if current is None or current[0] <= ts:
                        newest[dp] = (ts, value, keys[dp])
            else:
                events.append(_event(item, device))
                if template is not None and template.field_points:
                    _state_readings(item, device, template, readings, latest)
        except FrameError as exc:
            rejected.append(Rejected(index, message, Reason(exc.reason), str(exc)))
        except Exception as exc:  # a bug must cost one message, not the agent
            rejected.append(_unexpected(index, message, exc))
    return out


class Heard(NamedTuple):
    """A controller in one raw record: its id, and its messages' first and last received time."""

    controller_id: int
    first_us: int
    last_us: int


def heard_in(
    messages: Sequence[RawMessage], topics: Mapping[str, Topic], locations: Mapping[str, Resolved]
) -> dict[str, Heard]:
    """MAC -> Heard for every registered controller with a message in the record."""
    spans: dict[str, list[int]] = {}  # mac -> [controller id, first, last]: mutable, cheap
    for message in messages:
        location = locations.get(message.topic)
        if location is None or location.controller_id is None:
            continue  # a bad topic, a command, an unknown MAC
        mac = topics[message.topic].mac
        received = message.received_at_us
        span = spans.get(mac)
        if span is None:
            spans[mac] = [location.controller_id, received, received]
        elif received > span[2]:
            span[2] = received
        elif received < span[1]:
            span[1] = received
    return {mac: Heard(*span) for mac, span in spans.items()}


def _keep_newest(
    values: dict[int, tuple[int, float, str]], dp: int, ts: int, value: float, key: str
) -> None:
    current = values.get(dp)
    if current is None or current[0] <= ts:
        values[dp] = (ts, value, key)


def _event(item: Parsed, device: int) -> Event:
    payload = item.payload
    assert payload is not None  # only sensor frames take the fast path
    if isinstance(payload, ReaderScan):
        return Event(item.timestamp_us, device, "scan", {"data": payload.data})
    # Door sensors, exit buttons, strikes, sirens, motion sensors: the booleans as sent.
    fields = payload.model_dump(mode="json", by_alias=True, exclude={"timestamp"})
    return Event(item.timestamp_us, device, "state", fields)


def _state_readings(
    item: Parsed,
    device: int,
    template: CompiledTemplate,
    readings: list[Reading],
    latest: LatestValues,
) -> None:
    newest = latest.setdefault(device, {})
    for dp, attribute in template.field_points:
        state = getattr(item.payload, attribute, None)
        if type(state) is bool:  # a field this payload does not carry is no reading
            value = 1.0 if state else 0.0
            readings.append(Reading(item.timestamp_us, device, dp, value))
            _keep_newest(newest, dp, item.timestamp_us, value, template.keys[dp])


def _implausible(index: int, message: RawMessage, ts: int, window: TimestampWindow) -> Rejected:
    shown = _format_us(ts)
    if ts > window.latest_us:
        ahead = (ts - window.latest_us) / 1e6
        detail = f"timestamp {shown} is in the future: {ahead:,.0f} s past the allowed skew"
    else:
        detail = f"timestamp {shown} is older than the retention (earliest accepted: "
        detail += f"{_format_us(window.earliest_us)})"
    return Rejected(index, message, Reason.timestamp_implausible, detail)


def _format_us(us: int) -> str:
    return format_device_timestamp(from_epoch_us(us))


def _no_frame_template(
    item: Parsed, location: Location, template: CompiledTemplate | None
) -> Rejected:
    what = "no template" if template is None else f"template {template.key!r} decodes no frame"
    return Rejected(
        item.position,
        item.message,
        Reason.unmapped_position,
        f"device {location.device_id} on {item.topic.connector}/{item.topic.component} "
        f"has {what}: nothing to decode the frame with",
    )


def _unexpected(index: int, message: RawMessage, exc: Exception) -> Rejected:
    log.exception("unexpected error on one message; dead-lettered",
                  extra={"mqtt_topic": message.topic[:200]})  # fmt: skip
    return Rejected(
        index, message, Reason.invalid_record, f"unexpected {type(exc).__name__}: {exc}"
    )

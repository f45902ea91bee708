"""One simulated F2 Smart Controller: its sensors, inputs and outputs, and its commands.

What it publishes is built here, independent of MQTT (a ``MessageOutlet`` takes the
messages, ``Timers`` schedule them), so the behaviour can be tested with a fake clock:

- sensors (``sensor-<n>``): a Modbus RTU frame every publish interval, from ``SensorModel``;
- door sensors, exit buttons, motion sensors: state changes at random, realistic intervals
  (a door opens, stays open a few seconds, closes; a button is pressed and released; motion
  starts and stops), each change published with the whole state of the component;
- readers: scans of a small set of badges (NFC UIDs) and now and then a visitor's QR code;
- strikes and sirens: outputs switched by commands, their state published on every change
  and when asked with an empty payload; a strike toggled with ``power-flag`` 2 reverts after
  ``period`` seconds;
- reader success signals: light feedback only (the protocol has no topic to answer on).

Timestamps are the wall clock (strictly increasing per topic), or, in load mode with a start
time, a virtual clock: the n-th message of a topic is stamped start + n x publish interval.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from datetime import datetime
from typing import TypeAlias

from f2pipe_shared.decoding import format_hex_frame
from f2pipe_shared.payloads import (
    REPORT_STATE,
    DoorSensors,
    ExitButtons,
    PayloadError,
    PowerFlag,
    ReaderScan,
    ReaderSignal,
    SensorFrame,
    SirenCommand,
    Status,
    StrikeCommand,
    encode_payload,
    parse_payload,
)
from f2pipe_shared.timestamps import format_device_timestamp, from_epoch_us
from f2pipe_shared.topics import ComponentKind, Topic, TopicError, make_topic, parse_topic
from f2pipe_simulator.messages import CommandOutcome, Message
from f2pipe_simulator.ports import Cancellable, MessageOutlet, Timers
from f2pipe_simulator.registry import Component, ControllerSpec
from f2pipe_simulator.sensors import SensorModel

# Message and CommandOutcome are what a controller produces: importable from here too.
__all__ = ["CommandOutcome", "Controller", "Message", "Stamper"]

READER_SIGNALS = {1: "success", 2: "fail_1", 3: "fail_2"}


# What a state change publishes: the payload, the state (None for scans), the scanned data.
Change: TypeAlias = tuple[bytes, dict[str, bool] | None, str | None]


class Stamper:
    """Device timestamps: the wall clock strictly increasing per topic, or a virtual clock."""

    __slots__ = ("_clock", "_last", "_start", "_step")

    def __init__(
        self, clock: Callable[[], int], *, start_us: int | None = None, step_us: int = 0
    ) -> None:
        self._clock = clock
        self._start = start_us
        self._step = step_us
        self._last: dict[str, int] = {}

    def stamp(self, topic: str, *, virtual: bool = True) -> datetime:
        if self._start is not None and virtual:
            n = self._last.get(topic, -1) + 1
            self._last[topic] = n
            return from_epoch_us(self._start + n * self._step)
        us = max(self._clock(), self._last.get(topic, 0) + 1)
        self._last[topic] = us
        return from_epoch_us(us)


# --- event sources -----------------------------------------------------------------------------


class _Source:
    """A component whose state changes on its own; ``change`` makes the next change."""

    __slots__ = ("component", "topic")

    def __init__(self, component: Component, topic: str) -> None:
        self.component = component
        self.topic = topic

    def change(self, rng: random.Random, ts: datetime) -> Change:
        raise NotImplementedError

    def delay(self, rng: random.Random, mean: float) -> float:
        """Seconds until the next change, given the state now."""
        raise NotImplementedError


class _DoorPair(_Source):
    __slots__ = ("open",)

    def __init__(self, component: Component, topic: str) -> None:
        super().__init__(component, topic)
        self.open = [False, False]

    def change(self, rng: random.Random, ts: datetime) -> Change:
        if any(self.open):
            self.open = [False, False]  # the door swings shut
        else:
            self.open[0 if rng.random() < 0.75 else 1] = True
        state = {"door-sensor-1": self.open[0], "door-sensor-2": self.open[1]}
        model = DoorSensors(timestamp=ts, door_sensor_1=self.open[0], door_sensor_2=self.open[1])
        return encode_payload(model), state, None

    def delay(self, rng: random.Random, mean: float) -> float:
        if any(self.open):  # someone walks through; now and then the door is held open
            return rng.uniform(60, 180) if rng.random() < 0.05 else rng.uniform(3, 20)
        return rng.expovariate(1 / mean)


class _ExitButtons(_Source):
    __slots__ = ("pressed",)

    def __init__(self, component: Component, topic: str) -> None:
        super().__init__(component, topic)
        self.pressed = [False, False]

    def change(self, rng: random.Random, ts: datetime) -> Change:
        if any(self.pressed):
            self.pressed = [False, False]
        else:
            self.pressed[0 if rng.random() < 0.7 else 1] = True
        state = {"exit-button-1": self.pressed[0], "exit-button-2": self.pressed[1]}
        model = ExitButtons(
            timestamp=ts, exit_button_1=self.pressed[0], exit_button_2=self.pressed[1]
        )
        return encode_payload(model), state, None

    def delay(self, rng: random.Random, mean: float) -> float:
        return rng.uniform(0.2, 1.0) if any(self.pressed) else rng.expovariate(1 / (2 * mean))


class _Motion(_Source):
    __slots__ = ("active",)

    def __init__(self, component: Component, topic: str) -> None:
        super().__init__(component, topic)
        self.active = False

    def change(self, rng: random.Random, ts: datetime) -> Change:
        self.active = not self.active
        return (
            encode_payload(Status(timestamp=ts, status=self.active)),
            {"status": self.active},
            None,
        )

    def delay(self, rng: random.Random, mean: float) -> float:
        return rng.uniform(10, 120) if self.active else rng.expovariate(2 / mean)


class _Reader(_Source):
    __slots__ = ("badges",)

    def __init__(self, component: Component, topic: str, rng: random.Random) -> None:
        super().__init__(component, topic)
        # The people who use this door: 7-byte NFC UIDs (ISO 14443 double size) and a few 4-byte.
        self.badges = [
            rng.randbytes(7 if rng.random() < 0.8 else 4).hex().upper() for _ in range(12)
        ]

    def change(self, rng: random.Random, ts: datetime) -> Change:
        if rng.random() < 0.1:
            data = f"F2-VISITOR-{rng.randbytes(6).hex().upper()}"  # a QR code from an invitation
        else:
            data = rng.choice(self.badges)
        return encode_payload(ReaderScan(timestamp=ts, data=data)), None, data

    def delay(self, rng: random.Random, mean: float) -> float:
        return rng.expovariate(1 / mean)


# --- the controller ----------------------------------------------------------------------------


class _Sensor:
    __slots__ = ("component", "model", "topic")

    def __init__(self, component: Component, topic: str, model: SensorModel) -> None:
        self.component = component
        self.topic = topic
        self.model = model


class Controller:
    """A controller's behaviour; ``outlet`` publishes what it says, ``timers`` schedule it."""

    def __init__(
        self,
        spec: ControllerSpec,
        *,
        outlet: MessageOutlet,
        timers: Timers,
        stamper: Stamper,
        rng: random.Random,
        publish_interval: float,
        event_interval: float,
        t0: float = 0.0,
    ) -> None:
        self.spec = spec
        self.mac = spec.mac
        self.outlet = outlet
        self.timers = timers
        self.stamper = stamper
        self.rng = rng
        self.publish_interval = publish_interval
        self.event_interval = event_interval
        self.sensors: list[_Sensor] = []
        self.sources: list[_Source] = []
        self._by_location = {(c.connector, c.name): c for c in spec.components}
        for component in spec.components:
            if component.kind is ComponentKind.SENSOR and component.template is not None:
                topic = self._topic("tele", component)
                self.sensors.append(
                    _Sensor(component, topic, SensorModel(component.template, rng, t0))
                )
            elif component.kind is ComponentKind.DOOR_SENSORS:
                self.sources.append(_DoorPair(component, self._topic("stat", component)))
            elif component.kind is ComponentKind.EXIT_BUTTONS:
                self.sources.append(_ExitButtons(component, self._topic("stat", component)))
            elif component.kind is ComponentKind.MOTION_SENSOR:
                self.sources.append(_Motion(component, self._topic("stat", component)))
            elif component.kind is ComponentKind.READER:
                self.sources.append(_Reader(component, self._topic("tele", component), rng))
        self.outputs: dict[tuple[str, str], bool] = {}  # strikes and sirens: powered / sounding
        self.reader_signals: dict[tuple[str, str], int] = {}  # last light feedback per reader
        self._handles: dict[object, Cancellable] = {}
        self._next_sensor = 0
        self._running = False  # behaving on its own (normal mode), not fed by a load run

    def _topic(self, kind: str, component: Component) -> str:
        return make_topic(kind, self.mac, component.connector, component.name).format()

    # --- messages ---------------------------------------------------------------------------

    def sensor_message(self, sensor: _Sensor) -> Message:
        ts = self.stamper.stamp(sensor.topic)
        frame, readings = sensor.model.reading(self.publish_interval)
        payload = encode_payload(SensorFrame(timestamp=ts, data=format_hex_frame(frame)))
        return Message(
            ComponentKind.SENSOR,
            self.mac,
            sensor.component,
            sensor.topic,
            payload,
            format_device_timestamp(ts),
            readings,
        )

    def source_message(self, source: _Source) -> Message:
        ts = self.stamper.stamp(source.topic)
        payload, state, data = source.change(self.rng, ts)
        return Message(
            source.component.kind,
            self.mac,
            source.component,
            source.topic,
            payload,
            format_device_timestamp(ts),
            _state_readings(source.component, state),
            state,
            data,
        )

    def load_message(self, event_share: float) -> Message | None:
        """The next message of a load run: an event with probability ``event_share``."""
        if self.sources and (not self.sensors or self.rng.random() < event_share):
            return self.source_message(self.rng.choice(self.sources))
        if not self.sensors:
            return None
        sensor = self.sensors[self._next_sensor]
        self._next_sensor = (self._next_sensor + 1) % len(self.sensors)
        return self.sensor_message(sensor)

    @property
    def publishes(self) -> bool:
        return bool(self.sensors or self.sources)

    # --- running on its own (normal mode) ----------------------------------------------------

    def start(self) -> None:
        """Schedule every sensor (at a random phase) and every event source."""
        self._running = True
        now = self.timers.time()
        for sensor in self.sensors:
            self._schedule_sensor(sensor, now + self.rng.uniform(0, self.publish_interval))
        for source in self.sources:
            self._schedule_source(source)

    def stop(self) -> None:
        self._running = False
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()

    def _schedule_sensor(self, sensor: _Sensor, when: float) -> None:
        def tick() -> None:
            # The next one first (a fixed cadence, no drift), so nothing can break the chain.
            self._schedule_sensor(sensor, max(when + self.publish_interval, self.timers.time()))
            self.outlet.publish(self.sensor_message(sensor))

        self._handles[sensor] = self.timers.call_at(when, tick)

    def _schedule_source(self, source: _Source, delay: float | None = None) -> None:
        if delay is None:
            delay = source.delay(self.rng, self.event_interval)
        self._handles[source] = self.timers.call_at(
            self.timers.time() + delay, lambda: self._fire(source)
        )

    def _fire(self, source: _Source) -> None:
        message = self.source_message(source)  # the change first: the next delay depends on it
        self._schedule_source(source)
        self.outlet.publish(message)
        # Someone pressed the exit button: most of the time the door opens a moment later.
        if isinstance(source, _ExitButtons) and any(source.pressed):
            self._maybe_open_door(source.component.connector, 0.7)

    def _maybe_open_door(self, connector: str, probability: float) -> None:
        door = next(
            (
                s
                for s in self.sources
                if isinstance(s, _DoorPair) and s.component.connector == connector
            ),
            None,
        )
        if not self._running or door is None or any(door.open):
            return
        if self.rng.random() < probability:
            handle = self._handles.pop(door, None)
            if handle is not None:
                handle.cancel()
            self._schedule_source(door, self.rng.uniform(1.0, 4.0))

    # --- commands ----------------------------------------------------------------------------

    def handle_command(self, topic_name: str, payload: bytes) -> CommandOutcome:
        """Act on a ``cmnd/…`` message the way a controller does; answer on ``stat/…``."""
        try:
            topic = parse_topic(topic_name)
            command = parse_payload(topic, payload)
        except (TopicError, PayloadError) as exc:
            kind = "unknown"
            with contextlib.suppress(TopicError):
                kind = parse_topic(topic_name).component_kind.value
            return CommandOutcome("invalid", kind, str(exc))
        kind, name = topic.component_kind.value, topic.component
        if topic.kind != "cmnd" or topic.mac != self.mac:
            return CommandOutcome("ignored", kind, f"{name}: not a command for this controller")
        if self.spec.connectors.get(topic.connector) != topic.mode:
            mode = self.spec.connectors.get(topic.connector, "no such connector")
            return CommandOutcome("wrong_mode", kind, f"{name}: {topic.connector} is {mode}")
        return self._execute(topic, command)

    def _execute(self, topic: Topic, command: object) -> CommandOutcome:
        kind, name = topic.component_kind.value, topic.component
        key = (topic.connector, name)
        if isinstance(command, ReaderSignal):
            self.reader_signals[key] = int(command.root)
            return CommandOutcome("signalled", kind, READER_SIGNALS[int(command.root)])
        if command is REPORT_STATE:
            self._answer(topic, self.outputs.get(key, False))
            return CommandOutcome("reported", kind, name, answers=1)
        self._cancel_revert(key)
        if isinstance(command, SirenCommand):
            self._answer(topic, command.on)
            return CommandOutcome("answered", kind, f"{name} {'on' if command.on else 'off'}", 1)
        if not isinstance(command, StrikeCommand):
            return CommandOutcome("ignored", kind, f"{name}: not a command this controller takes")
        if command.power_flag is PowerFlag.TOGGLE:
            return self._toggle(topic, command.period or 0)
        powered = command.power_flag is PowerFlag.POWERED
        self._answer(topic, powered)
        return CommandOutcome(
            "answered", kind, f"{name} {'powered' if powered else 'unpowered'}", 1
        )

    def _toggle(self, topic: Topic, period: int) -> CommandOutcome:
        key = (topic.connector, topic.component)
        before = self.outputs.get(key, False)
        self._answer(topic, not before)

        def revert() -> None:
            self._handles.pop(("revert", key), None)
            self._answer(topic, before)

        self._handles[("revert", key)] = self.timers.call_at(self.timers.time() + period, revert)
        if not before:  # the strike released the door: someone is likely to walk through
            self._maybe_open_door(topic.connector, 0.8)
        return CommandOutcome(
            "answered", topic.component_kind.value, f"{topic.component} toggled for {period} s", 1
        )

    def _cancel_revert(self, key: tuple[str, str]) -> None:
        handle = self._handles.pop(("revert", key), None)
        if handle is not None:
            handle.cancel()

    def _answer(self, command: Topic, status: bool) -> None:
        key = (command.connector, command.component)
        self.outputs[key] = status
        component = self._by_location.get(key) or Component(
            command.connector,
            command.mode,
            command.component,
            command.component_kind,
            command.index,
        )
        topic = make_topic("stat", self.mac, command.connector, command.component).format()
        ts = self.stamper.stamp(topic, virtual=False)
        state = {"status": status}
        self.outlet.publish(
            Message(
                command.component_kind,
                self.mac,
                component,
                topic,
                encode_payload(Status(timestamp=ts, status=status)),
                format_device_timestamp(ts),
                _state_readings(component, state),
                state,
            )
        )


def _state_readings(component: Component, state: dict[str, bool] | None) -> dict[str, float]:
    """The readings the pipeline stores for a state message: 1/0 per field datapoint."""
    if state is None or component.template is None:
        return {}
    return {
        dp.key: 1.0 if state[dp.field] else 0.0
        for dp in component.template.field_points
        if dp.field is not None and dp.field in state
    }

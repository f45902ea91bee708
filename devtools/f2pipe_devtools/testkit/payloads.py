"""Example payloads: one valid (topic, payload) of every topic type, for the docs' tests."""

from __future__ import annotations

from datetime import UTC, datetime

from f2pipe_shared.decoding import build_modbus_response, format_hex_frame
from f2pipe_shared.payloads import (
    REPORT_STATE,
    DoorSensors,
    ExitButtons,
    Payload,
    PowerFlag,
    ReaderFeedback,
    ReaderScan,
    ReaderSignal,
    SensorFrame,
    SirenCommand,
    Status,
    StrikeCommand,
    encode_payload,
)
from f2pipe_shared.topics import Topic, make_topic


def payload_examples(mac: str = "e4fd45f654be") -> list[tuple[Topic, bytes]]:
    """One valid (topic, payload) of every topic type of every component, for docs and tests."""
    ts = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    # 23.45 degC, 45.67 %RH, 612 ppm as the "environmental sensor" template encodes them.
    env_frame = build_modbus_response(1, bytes.fromhex("0929 11D7 0264"))
    examples: list[tuple[str, str, Payload]] = [
        ("stat", "strike-1", Status(timestamp=ts, status=True)),
        ("cmnd", "strike-1", StrikeCommand(power_flag=PowerFlag.TOGGLE, period=120)),
        ("cmnd", "strike-2", StrikeCommand(power_flag=PowerFlag.POWERED)),
        ("cmnd", "strike-1", REPORT_STATE),
        (
            "stat",
            "door-sensors",
            DoorSensors(timestamp=ts, door_sensor_1=True, door_sensor_2=False),
        ),
        (
            "stat",
            "exit-buttons",
            ExitButtons(timestamp=ts, exit_button_1=True, exit_button_2=False),
        ),
        ("tele", "reader-1", ReaderScan(timestamp=ts, data="04A23B1C5D6E80")),
        ("stat", "siren-1", Status(timestamp=ts, status=False)),
        ("cmnd", "siren-1", SirenCommand(1)),
        ("cmnd", "siren-2", REPORT_STATE),
        ("stat", "motion-sensor-3", Status(timestamp=ts, status=True)),
        ("tele", "sensor-1", SensorFrame(timestamp=ts, data=format_hex_frame(env_frame))),
    ]
    topics = [make_topic(kind, mac, "J1", component) for kind, component, _ in examples]
    pairs = [(topic, encode_payload(p)) for topic, (_, _, p) in zip(topics, examples, strict=True)]
    success = make_topic("cmnd", mac, "J1", "reader-1", "success")
    return [*pairs, (success, encode_payload(ReaderSignal(ReaderFeedback.SUCCESS)))]

"""Example payloads: one valid (topic, payload) of every topic type, for the docs' tests."""

from __future__ import annotations

from datetime import UTC, datetime

from f2pipe_shared import payloads as p
from f2pipe_shared.decoding import build_modbus_response, format_hex_frame
from f2pipe_shared.topics import Topic, make_topic


def payload_examples(mac: str = "e4fd45f654be") -> list[tuple[Topic, bytes]]:
    """One valid (topic, payload) of every topic type of every component, for docs and tests."""
    ts = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    # 23.45 degC, 45.67 %RH, 612 ppm as the "environmental sensor" template encodes them.
    env_frame = build_modbus_response(1, bytes.fromhex("0929 11D7 0264"))
    examples: list[tuple[str, str, p.Payload]] = [
        ("stat", "strike-1", p.Status(timestamp=ts, status=True)),
        ("cmnd", "strike-1", p.StrikeCommand(power_flag=p.PowerFlag.TOGGLE, period=120)),
        ("cmnd", "strike-2", p.StrikeCommand(power_flag=p.PowerFlag.POWERED)),
        ("cmnd", "strike-1", p.REPORT_STATE),
        (
            "stat",
            "door-sensors",
            p.DoorSensors(timestamp=ts, door_sensor_1=True, door_sensor_2=False),
        ),
        (
            "stat",
            "exit-buttons",
            p.ExitButtons(timestamp=ts, exit_button_1=True, exit_button_2=False),
        ),
        ("tele", "reader-1", p.ReaderScan(timestamp=ts, data="04A23B1C5D6E80")),
        ("stat", "siren-1", p.Status(timestamp=ts, status=False)),
        ("cmnd", "siren-1", p.SirenCommand(1)),
        ("cmnd", "siren-2", p.REPORT_STATE),
        ("stat", "motion-sensor-3", p.Status(timestamp=ts, status=True)),
        ("tele", "sensor-1", p.SensorFrame(timestamp=ts, data=format_hex_frame(env_frame))),
    ]
    topics = [make_topic(kind, mac, "J1", component) for kind, component, _ in examples]
    pairs = [
        (topic, p.encode_payload(payload))
        for topic, (_, _, payload) in zip(topics, examples, strict=True)
    ]
    success = make_topic("cmnd", mac, "J1", "reader-1", "success")
    return [*pairs, (success, p.encode_payload(p.ReaderSignal(p.ReaderFeedback.SUCCESS)))]

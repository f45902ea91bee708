"""The original system's sensor messages (issue 19 item 8): frames built exactly as its
simulators build them, decoded by the shared decoder with the worked example's templates
(docs/data_model.md, "a fleet of the original system's controllers"), give the values its
processor computed. The templates are read from that page, so the page cannot drift.

The generators below reproduce the algorithms of the public repository amoyavt/POC_MQTT
(reference only, nothing copied):

- services/faces2_controllers/simulator.py, ``F2Controller.generate_hex_data``: the bytes
  ``01 03 0C`` then 14 bytes drawn with ``random.randint(16, 99)``, uppercase hex joined by
  spaces; ``F2Controller.publish_sensor_data``: two sensors per connector, connectors 1-4,
  payload ``{"timestamp": datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f"), "data": ...}``
  published with paho's default QoS 0;
- services/f2_simulator/simulator.py, ``F2DeviceSimulator._generate_sensor_hex_data``: 16
  bytes drawn with ``random.randint(0, 255)``, lowercase hex joined by spaces;
- services/stream_processor/processor.py, ``StreamProcessor.extract_value_from_hex``: the
  value is ``length`` bytes at ``offset`` counted from the frame's first byte, read big-endian
  (two's complement for Int8/Int16), divided by 10**decimals; the topic is
  ``tele/f2-<mac>/sensor-mode/J<k>/sensor-<n>`` (its docs/mqtt_topics.md).
"""

from __future__ import annotations

import json
import random
import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from f2pipe_api.templates import TemplateSpec, check_spec, to_template
from f2pipe_shared.decoding import (
    CrcMismatchError,
    FrameError,
    FrameFormat,
    parse_hex_frame,
)
from f2pipe_shared.framedecoder import FrameDecoder
from f2pipe_shared.payloads import SensorFrame, parse_payload
from f2pipe_shared.registry import Template
from f2pipe_shared.topics import TopicError, parse_topic

DOC = Path(__file__).resolve().parents[2] / "docs" / "data_model.md"
SECTION = "## Worked example: a fleet of the original system's controllers"
MACS = ("e4fd45f65401", "e4fd45f65402", "e4fd45f65403", "e4fd45f65404")  # the page's fleet
# The original simulator's own controllers: the demo fleet's first four as well.
ORIGINAL_MACS = ("aabbccddee01", "aabbccddee02", "aabbccddee03", "aabbccddee04")
CONNECTORS = (1, 2, 3, 4)
PINS = (1, 2)
DOC_FRAME = "01 03 0C 00 00 00 08 34 10 68 02 58 00 00 00 5B 18"


# -- the original system, reproduced ---------------------------------------------------------


def faces2_frame(rng: random.Random) -> str:
    """F2Controller.generate_hex_data (services/faces2_controllers/simulator.py)."""
    return " ".join(["01", "03", "0C", *(f"{rng.randint(16, 99):02X}" for _ in range(14))])


def f2_simulator_frame(rng: random.Random) -> str:
    """F2DeviceSimulator._generate_sensor_hex_data (services/f2_simulator/simulator.py)."""
    return " ".join(f"{rng.randint(0, 255):02x}" for _ in range(16))


GENERATORS = {"faces2_controllers": faces2_frame, "f2_simulator": f2_simulator_frame}


def original_topic(mac: str, connector: int, pin: int) -> str:
    return f"tele/f2-{mac}/sensor-mode/J{connector}/sensor-{pin}"


def original_payload(when: datetime, frame: str) -> bytes:
    """publish_sensor_data's payload; `when` stands for its datetime.now() (naive)."""
    return json.dumps({"timestamp": when.strftime("%Y-%m-%d %H:%M:%S.%f"), "data": frame}).encode()


def original_value(frame: str, point: dict[str, Any]) -> float:
    """StreamProcessor.extract_value_from_hex (services/stream_processor/processor.py)."""
    digits = frame.replace(" ", "")
    length = {"int8": 1, "uint8": 1, "int16": 2, "uint16": 2}[point["encoding"]]
    start = point["offset"] * 2
    raw = int(digits[start : start + length * 2], 16)
    if point["encoding"] in ("int8", "int16") and raw >= 1 << (length * 8 - 1):
        raw -= 1 << (length * 8)
    decimals = point.get("decimals", 0)
    return raw / 10**decimals if decimals > 0 else float(raw)


# -- the worked example, read from the page ---------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One `api …` line of the page: method, path (after $API), the -d body or @file."""

    method: str
    path: str
    body: str | None
    content_type: str | None


def section() -> str:
    text = DOC.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return text[start:end]


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", section(), flags=re.DOTALL)


def calls() -> list[Call]:
    """Every api call of the section, in order; a pipe or redirect ends a command."""
    found = []
    for block in shell_blocks():
        for command in _commands(block):
            if command and command[0] == "api":
                found.append(_call(command))
    return found


def _commands(block: str) -> list[list[str]]:
    commands, pending = [], ""
    for line in block.replace("\\\n", " ").splitlines():
        pending += line + "\n"
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # a quoted body spans lines: read on
            continue
        commands.append(words)
        pending = ""
    assert not pending, "an unclosed quote in the example"
    return commands


def _call(words: list[str]) -> Call:
    method, path, body, content_type = "GET", "", None, None
    it = iter(words[1:])
    for word in it:
        if word in ("|", ">", "&&"):
            break
        if word == "-X":
            method = next(it)
        elif word == "-H":
            name, _, value = next(it).partition(": ")
            content_type = value if name.lower() == "content-type" else content_type
        elif word in ("-d", "--data-binary"):
            body = next(it)
        elif word.startswith("$API"):
            path = word.removeprefix("$API")
    return Call(method, path, body, content_type)


def template_bodies() -> dict[str, dict[str, Any]]:
    bodies = [json.loads(c.body) for c in calls() if c.path == "/v1/templates" and c.body]
    return {b["key"]: b for b in bodies}


def template_of(body: dict[str, Any]) -> Template:
    spec = TemplateSpec.model_validate({k: v for k, v in body.items()
                                        if k in TemplateSpec.model_fields})  # fmt: skip
    check_spec(spec)  # what the api checks before it stores the template
    return to_template(spec, key=body["key"])


def decoder_of(body: dict[str, Any]) -> FrameDecoder:
    decoder = FrameDecoder.compile(template_of(body))
    assert decoder is not None
    return decoder


def fleet_pins() -> dict[tuple[int, int], str]:
    """(connector, pin) -> template key, from the import's CSV generator block."""
    block = next(b for b in shell_blocks() if "> legacy-fleet.csv" in b)
    rows = re.findall(r",\$j,sensor-mode,sensor-(\d),([a-z0-9-]+),", block)
    return {(c, int(pin)): key for c in CONNECTORS for pin, key in rows}


# -- tests -------------------------------------------------------------------------------------


def test_the_page_registers_two_raw_templates_on_every_pin_of_four_connectors() -> None:
    bodies = template_bodies()
    assert set(bodies) == {"legacy-env-sensor-v1", "legacy-power-monitor-v1"}
    assert {b["frame_format"] for b in bodies.values()} == {"raw"}
    on_pin = {1: "legacy-env-sensor-v1", 2: "legacy-power-monitor-v1"}
    assert fleet_pins() == {(c, p): on_pin[p] for c in CONNECTORS for p in PINS}
    # The original registry's datapoints (offsets from the frame start), unchanged.
    points = {k: [(p["key"], p["encoding"], p["offset"], p["decimals"]) for p in b["datapoints"]]
              for k, b in bodies.items()}  # fmt: skip
    assert points == {
        "legacy-env-sensor-v1": [("temperature", "int16", 6, 2), ("humidity", "uint16", 8, 2),
                                 ("co2", "uint16", 10, 0)],
        "legacy-power-monitor-v1": [("voltage", "uint16", 0, 1), ("current", "int16", 2, 3)],
    }  # fmt: skip


@pytest.mark.parametrize("generator", sorted(GENERATORS))
def test_original_frames_decode_to_what_the_original_processor_computed(generator: str) -> None:
    rng = random.Random(f"original-{generator}")
    for key, body in template_bodies().items():
        decoder = decoder_of(body)
        for _ in range(500):
            frame = GENERATORS[generator](rng)
            expected = [original_value(frame, p) for p in body["datapoints"]]
            assert decoder(frame) == expected, (key, frame)


def test_the_original_messages_parse_on_every_connector_and_pin() -> None:
    rng = random.Random(3)
    when = datetime(2023, 5, 25, 15, 13, 10, 543400)  # naive, as datetime.now() is
    for mac in (*MACS, *ORIGINAL_MACS):
        for connector in CONNECTORS:
            for pin in PINS:
                topic = parse_topic(original_topic(mac, connector, pin))
                assert (topic.mac, topic.connector, topic.index) == (mac, f"J{connector}", pin)
                frame = faces2_frame(rng)
                payload = parse_payload(topic, original_payload(when, frame))
                assert isinstance(payload, SensorFrame)
                assert payload.frame() == parse_hex_frame(frame)
                # Read as UTC: the original wrote local time without a zone.
                assert payload.timestamp == when.replace(tzinfo=UTC)


def test_the_pages_example_frame_decodes_to_the_values_it_states() -> None:
    assert DOC_FRAME in section()
    env = decoder_of(template_bodies()["legacy-env-sensor-v1"])
    assert env(DOC_FRAME) == [21.0, 42.0, 600.0]
    assert len(parse_hex_frame(DOC_FRAME)) == 17  # 01 03 0C + 14 bytes, as generate_hex_data
    power = decoder_of(template_bodies()["legacy-power-monitor-v1"])
    assert power(DOC_FRAME)[0] == 25.9  # "always reads 25.9 V" with a 01 03 frame


def test_as_modbus_rtu_with_the_crc_check_they_are_dead_lettered() -> None:
    """The issue's starting point: a modbus_rtu template refuses these frames; without the
    CRC check and with offsets 3 lower it reads the 01 03 0C frames alike, not the others."""
    rng = random.Random(19)
    body = template_bodies()["legacy-env-sensor-v1"]
    shifted = {
        **body,
        "frame_format": FrameFormat.MODBUS_RTU.value,
        "datapoints": [{**p, "offset": p["offset"] - 3} for p in body["datapoints"]],
    }
    checked = decoder_of({**shifted, "verify_crc": True})
    unchecked = decoder_of({**shifted, "verify_crc": False})
    raw = decoder_of(body)
    for _ in range(200):
        frame = faces2_frame(rng)
        with pytest.raises(CrcMismatchError):
            checked(frame)
        assert unchecked(frame) == raw(frame)
    refused = 0
    for _ in range(200):
        try:
            unchecked(f2_simulator_frame(rng))
        except FrameError:
            refused += 1
    assert refused == 200


def test_the_page_runs_these_api_calls_in_this_order() -> None:
    assert [(c.method, c.path) for c in calls()] == [
        ("POST", "/v1/device-types"), ("POST", "/v1/device-types"),
        ("POST", "/v1/templates"), ("POST", "/v1/templates"),
        ("POST", "/v1/import?dry_run=true"), ("POST", "/v1/import?dry_run=false"),
        ("POST", "/v1/decode"),
    ]  # fmt: skip
    imports = [c for c in calls() if c.path.startswith("/v1/import")]
    assert {(c.body, c.content_type) for c in imports} == {("@legacy-fleet.csv", "text/csv")}


@pytest.mark.parametrize(
    ("topic", "level"),
    [
        ("cmnd/f2-aabbccddee01/sensor-mode/J1/sensor-1", 1),
        ("stat/f2-aabbccddee01/sensor-mode/J1/sensor-1", 1),
        ("tele/f2-aabbccddee01/sensor-mode/1/sensor-1", 4),
        ("tele/f2-aa:bb:cc:dd:ee:01/sensor-mode/J1/sensor-1", 2),
    ],
)
def test_the_earlier_simulators_topic_shapes_are_bad_topics(topic: str, level: int) -> None:
    """docs/mqtt_topics.md, compatibility: the shapes of earlier versions of its simulators."""
    with pytest.raises(TopicError) as caught:
        parse_topic(topic)
    assert caught.value.level == level


def test_hex_in_either_case_with_or_without_spaces_is_the_same_frame() -> None:
    rng = random.Random(5)
    frame = faces2_frame(rng)
    assert parse_hex_frame(frame.lower()) == parse_hex_frame(frame.replace(" ", ""))

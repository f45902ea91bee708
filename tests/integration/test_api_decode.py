"""POST /v1/decode against the real PostgreSQL: for every template of the seed, good frames and
broken ones, the endpoint answers exactly what the processor's `decode_messages` does (values,
or dead-letter reason and detail); inline templates are checked as templates are."""

from __future__ import annotations

import json
import random
import struct
import time
from typing import Any

import psycopg
import pytest

from f2pipe.seed import seed_demo
from f2pipe_api.tokens import Role
from f2pipe_processor.decoder import TimestampWindow, decode_messages, parse_messages
from f2pipe_processor.registry import CompiledTemplate, Location, Resolved
from f2pipe_shared.decoding import build_modbus_response, encode_value, format_hex_frame
from f2pipe_shared.records import RawMessage
from f2pipe_shared.registry import Template, fetch_templates
from f2pipe_shared.timestamps import format_device_timestamp, from_epoch_us
from tests.integration.apikit import Api, problem

# Not `database`: the registry's tables and queries are the same on either storage engine,
# so the plain-PostgreSQL pass (make test) does not run them again.
pytestmark = pytest.mark.integration

TOPIC = "tele/f2-aabbccddee01/sensor-mode/J3/sensor-1"


@pytest.fixture
def seeded(api: Api) -> dict[str, Template]:
    seed_demo(api.conninfo, 0)  # reference data only: device types, templates, datapoints
    with psycopg.connect(api.conninfo) as conn:
        return {t.key: t for t in fetch_templates(conn).values()}


def processor_answer(hex_frame: str, template: Template) -> dict[str, Any]:
    """What the processor makes of a sensor message carrying `hex_frame` with `template`,
    in the endpoint's shape."""
    now = int(time.time() * 1e6)
    payload = json.dumps({"timestamp": format_device_timestamp(from_epoch_us(now)),
                          "data": hex_frame}).encode()  # fmt: skip
    parse = parse_messages([RawMessage(TOPIC, payload, now)], TimestampWindow(now - 10**6, now))
    assert len(parse.parsed) == 1, parse.rejected
    locations: dict[str, Resolved] = {TOPIC: Location(1, template.id, 1, 1)}
    out = decode_messages(
        parse.parsed, locations, {template.id: CompiledTemplate.compile(template)}
    )
    if out.rejected:
        (rejected,) = out.rejected
        return {"ok": False, "dead_letter": {"reason": rejected.reason.value,
                                             "detail": rejected.detail}}  # fmt: skip
    keys = {dp.id: dp.key for dp in template.datapoints}
    return {"ok": True, "values": [(keys[r.datapoint_id], r.value) for r in out.readings]}


def api_answer(api: Api, hex_frame: str, template: str | dict[str, Any]) -> dict[str, Any]:
    r = api.http.post("/v1/decode", json={"frame": hex_frame, "template": template},
                      headers=api.as_(Role.viewer))  # fmt: skip
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    if not body["ok"]:
        assert body["values"] == []
        return {"ok": False, "dead_letter": body["dead_letter"]}
    assert body["dead_letter"] is None
    return {"ok": True, "values": [(v["key"], v["value"]) for v in body["values"]]}


def good_frame(template: Template, rng: random.Random) -> bytes:
    data = bytearray(2 * (template.modbus_register_count or 0))
    for dp in template.frame_points:
        assert dp.spec is not None
        value = rng.randint(0, 200) / 10**dp.spec.decimals
        data[dp.spec.offset : dp.spec.end] = encode_value(dp.spec, value)
    return build_modbus_response(template.modbus_address, bytes(data))


def frames(template: Template) -> dict[str, str]:
    """Good frames, and one of each way a frame breaks."""
    good = good_frame(template, random.Random(template.id))
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0x5A
    short_data = build_modbus_response(template.modbus_address, good[3:5])
    return {
        "good": format_hex_frame(good),
        "good, no spaces": good.hex(),
        "good, other values": format_hex_frame(good_frame(template, random.Random(99))),
        "bad hex": "01 03 ZZ",
        "odd digits": good.hex()[:-1],
        "empty": "",
        "too short for Modbus": "01 03",
        "crc mismatch": format_hex_frame(bytes(bad_crc)),
        "exception response": "01 83 02 C0 F1",
        "not a read function": format_hex_frame(build_modbus_response(1, b"\x00\x01", 6)),
        "byte count too big": format_hex_frame(good[:2] + bytes([good[2] + 2]) + good[3:]),
        "byte count too small": format_hex_frame(good[:2] + bytes([good[2] - 1]) + good[3:]),
        "too few data bytes": format_hex_frame(short_data),
    }


def test_the_endpoint_agrees_with_the_processor_on_every_seed_template(
    api: Api, seeded: dict[str, Template]
) -> None:
    framed = [t for t in seeded.values() if t.frame_points]
    assert {t.key for t in framed} == {"environmental-sensor-v1", "power-monitor-v1"}
    reasons = set()
    for template in framed:
        for case, hex_frame in frames(template).items():
            expected = processor_answer(hex_frame, template)
            got = api_answer(api, hex_frame, template.key)
            assert got == expected, (template.key, case)
            if not got["ok"]:
                reasons.add(got["dead_letter"]["reason"])
    assert reasons == {"bad_hex", "short_frame", "crc_mismatch", "bad_frame"}


def test_a_template_without_frame_datapoints_decodes_no_frame(
    api: Api, seeded: dict[str, Template]
) -> None:
    for template in seeded.values():
        if template.frame_points:
            continue
        assert CompiledTemplate.compile(template).frame is None  # the processor's side
        answer = processor_answer("01 03 00 B0 44", template)
        assert answer["dead_letter"]["reason"] == "unmapped_position"
        r = api.http.post("/v1/decode", json={"frame": "01 03 00 B0 44", "template": template.key},
                          headers=api.as_(Role.viewer))  # fmt: skip
        problem(r, 422, "no_frame")


def test_the_worked_example_of_the_data_model(api: Api, seeded: dict[str, Template]) -> None:
    body = {"frame": "01 03 06 08 34 10 68 02 58 14 7F", "template": "environmental-sensor-v1"}
    r = api.http.post("/v1/decode", headers=api.as_(Role.viewer), json=body)
    assert r.json() == {
        "template": "environmental-sensor-v1",
        "ok": True,
        "values": [
            {"key": "temperature", "unit": "°C", "value": 21.0},
            {"key": "humidity", "unit": "%", "value": 42.0},
            {"key": "co2", "unit": "ppm", "value": 600.0},
        ],
        "dead_letter": None,
    }


INLINE: dict[str, Any] = {
    "frame_format": "raw",
    "datapoints": [
        {"key": "level", "label": "Level", "unit": "cm", "offset": 0, "encoding": "uint16",
         "decimals": 1},
        {"key": "ratio", "label": "Ratio", "offset": 2, "encoding": "float32",
         "byte_order": "little"},
    ],
}  # fmt: skip


def test_an_inline_template(api: Api) -> None:
    frame = (1234).to_bytes(2, "big") + struct.pack("<f", 0.5)
    got = api_answer(api, frame.hex(" "), INLINE)
    assert got == {"ok": True, "values": [("level", 123.4), ("ratio", 0.5)]}
    nan = (1).to_bytes(2, "big") + struct.pack("<f", float("nan"))
    r = api.http.post("/v1/decode", json={"frame": nan.hex(), "template": INLINE},
                      headers=api.as_(Role.viewer))  # fmt: skip
    assert r.status_code == 200
    assert [v["value"] for v in r.json()["values"]] == [0.1, None]
    short = api_answer(api, "04 D2", INLINE)
    assert short["dead_letter"]["reason"] == "short_frame"


def _inline(**changes: Any) -> dict[str, Any]:
    first = {**INLINE["datapoints"][0], **changes}
    return {**INLINE, "datapoints": [first]}


@pytest.mark.parametrize(
    ("template", "status", "reason"),
    [
        (_inline(offset=255), 422, "frame_overflow"),
        ({**_inline(), "frame_format": "modbus_rtu", "modbus_register_count": 1,
          "datapoints": [_inline(offset=1)["datapoints"][0]]}, 422, "frame_overflow"),
        (_inline(encoding="int24"), 422, "invalid_request"),
        (_inline(byte_order="middle"), 422, "invalid_request"),
        (_inline(length=4), 422, "bad_datapoint"),
        (_inline(byte_order="word_swapped"), 422, "bad_datapoint"),
        (_inline(field="status"), 422, "bad_datapoint"),
        ({**INLINE, "frame_format": None}, 422, "form_mismatch"),
        ({**INLINE, "verify_crc": True}, 422, "form_mismatch"),
        ({**INLINE, "datapoints": []}, 422, "no_frame"),
        ("no-such-template", 422, "unknown_reference"),
        ("Not A Key!", 422, "invalid_request"),
        ({**INLINE, "colour": "red"}, 422, "invalid_request"),
    ],
)  # fmt: skip
def test_a_template_that_cannot_decode_is_refused(
    api: Api, template: Any, status: int, reason: str
) -> None:
    r = api.http.post("/v1/decode", json={"frame": "00 01 02 03 04 05", "template": template},
                      headers=api.as_(Role.viewer))  # fmt: skip
    problem(r, status, reason)


def test_a_frame_too_long_is_refused_and_not_echoed(api: Api) -> None:
    r = api.http.post("/v1/decode", json={"frame": "ab" * 2000, "template": INLINE},
                      headers=api.as_(Role.viewer))  # fmt: skip
    body = problem(r, 422, "invalid_request")
    assert "abab" not in r.text
    assert body["errors"][0]["loc"] == ["body", "frame"]

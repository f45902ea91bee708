"""The worked example of docs/data_model.md ("a fleet of the original system's controllers")
end to end (issue 19 item 8): every command of the page run against the real api on a fresh
registry, then messages built as the original simulators build them, from every connector
and pin of the fleet, through the real processor core (PostgreSQL, Redis): all become
readings with the original processor's values, none is dead-lettered. The same messages
against the demo registry are dead-lettered, as the issue says they were."""

from __future__ import annotations

import csv
import io
import random
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from f2pipe.seed import seed_demo
from f2pipe_api.tokens import Role
from f2pipe_devtools.servers import RedisServer
from f2pipe_shared.deadletters import Reason
from f2pipe_shared.records import RawMessage
from tests.integration.apikit import Api
from tests.integration.test_processor import (  # noqa: F401 (fixture used by name)
    core_for,
    process,
    redis_prefix,
    run,
)
from tests.unit.test_original_devices import (
    CONNECTORS,
    GENERATORS,
    MACS,
    ORIGINAL_MACS,
    PINS,
    Call,
    calls,
    original_payload,
    original_topic,
    original_value,
    shell_blocks,
    template_bodies,
)

pytestmark = [pytest.mark.integration, pytest.mark.database]


def _send(api: Api, call: Call, files: Path) -> Any:
    body = call.body or ""
    content: bytes = (files / body[1:]).read_bytes() if body.startswith("@") else body.encode()
    headers = {**api.as_(Role.operator), "Content-Type": call.content_type or "application/json"}
    return api.http.request(call.method, call.path, content=content, headers=headers)


def _run_the_page(api: Api, files: Path) -> dict[str, Any]:
    """Each command of the section in order; the answers by path (the last of each)."""
    fleet_block = next(b for b in shell_blocks() if "> legacy-fleet.csv" in b)
    subprocess.run(["bash", "-euc", fleet_block], cwd=files, check=True, timeout=30)
    answers: dict[str, Any] = {}
    for call in calls():
        r = _send(api, call, files)
        assert r.status_code in (200, 201), (call, r.text)
        answers[call.path] = r.json()
    return answers


def _pin_devices(api: Api) -> dict[tuple[str, str, str], int]:
    rows = api.sql("SELECT controller_mac, connector, component, device_id "
                   "FROM registry.device_locations WHERE component IS NOT NULL")  # fmt: skip
    return {(mac, connector, component): device for mac, connector, component, device in rows}


def _messages(rng: random.Random, macs: tuple[str, ...] = MACS) -> list[tuple[RawMessage, str]]:
    """One message per pin of the fleet and generator, each with its frame."""
    # Seconds ago in UTC: the processor refuses a timestamp far from now, and f2pipe reads a
    # device timestamp as UTC (the original wrote local time: see mqtt_topics.md).
    when = datetime.now(UTC).replace(tzinfo=None)
    received = int(time.time() * 1e6)
    out = []
    for make in GENERATORS.values():
        for mac in macs:
            for connector in CONNECTORS:
                for pin in PINS:
                    frame = make(rng)
                    topic = original_topic(mac, connector, pin)
                    out.append((RawMessage(topic, original_payload(when, frame), received), frame))
    return out


def test_the_worked_example_registers_the_fleet_and_every_frame_becomes_readings(
    api: Api,
    redis_server: RedisServer,
    redis_prefix: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    answers = _run_the_page(api, tmp_path)
    # The import: the dry run was valid, the apply created the fleet and its claim codes.
    report = answers["/v1/import?dry_run=false"]
    assert report["valid"] is True
    assert report["errors"] == []
    assert report["controllers"] == {"created": 4, "changed": 0, "unchanged": 0}
    assert report["connectors"] == {"created": 16, "changed": 0, "unchanged": 0}
    assert report["pins"] == {"created": 32, "changed": 0, "unchanged": 0}
    codes = list(csv.reader(io.StringIO(report["claim_codes_csv"])))
    assert sorted(row[0] for row in codes[1:]) == list(MACS)
    assert answers["/v1/import?dry_run=true"]["pins"]["created"] == 32
    # The decode call answers what the page says.
    decoded = answers["/v1/decode"]
    assert decoded["ok"] is True
    assert [(v["key"], v["value"]) for v in decoded["values"]] == [
        ("temperature", 21.0), ("humidity", 42.0), ("co2", 600.0)]  # fmt: skip

    devices = _pin_devices(api)
    assert len(devices) == 32
    names = {name for (name,) in api.sql("SELECT name FROM registry.devices WHERE mac IS NULL")}
    assert names == {f"f2-{m}/J{c}/sensor-{p}" for m in MACS for c in CONNECTORS for p in PINS}
    points = {
        key: [p["key"] for p in body["datapoints"]] for key, body in template_bodies().items()
    }
    point_ids = {
        (template, key): dp_id
        for template, key, dp_id in api.sql(
            "SELECT t.key, d.key, d.id FROM registry.datapoints d "
            "JOIN registry.device_templates t ON t.id = d.template_id"
        )
    }
    messages = _messages(random.Random(8))

    async def scenario() -> Any:
        async with core_for(api.conninfo, redis_server.url, redis_prefix) as core:
            return await process(core, [m for m, _ in messages])

    result = run(scenario())
    assert result.dead_letters == []
    expected = []
    for message, frame in messages:
        _, device, _, connector, component = message.topic.split("/")
        template = "legacy-env-sensor-v1" if component == "sensor-1" else "legacy-power-monitor-v1"
        body = template_bodies()[template]
        device_id = devices[(device.removeprefix("f2-"), connector, component)]
        for key, point in zip(points[template], body["datapoints"], strict=True):
            expected.append((device_id, point_ids[(template, key)], original_value(frame, point)))
    got = [(r.device_id, r.datapoint_id, r.value) for r in result.processed.readings]
    assert got == expected
    assert len(got) == 2 * 4 * 4 * (3 + 2)


def test_against_the_demo_registry_they_are_dead_lettered_and_the_page_imports_beside_it(
    api: Api,
    redis_server: RedisServer,
    redis_prefix: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The issue's starting point, pinned: nothing in the demo registry reads the original
    simulator's frames (its MACs are the demo's first four); and the page's fleet does not
    collide with the demo (`make dev`'s registry): its dry run is clean there."""
    seed_demo(api.conninfo, 4)
    fleet_block = next(b for b in shell_blocks() if "> legacy-fleet.csv" in b)
    subprocess.run(["bash", "-euc", fleet_block], cwd=tmp_path, check=True, timeout=30)
    for call in calls():
        if call.path != "/v1/import?dry_run=false":
            assert _send(api, call, tmp_path).status_code in (200, 201)
    dry_run = _send(api, Call("POST", "/v1/import?dry_run=true", "@legacy-fleet.csv",
                              "text/csv"), tmp_path).json()  # fmt: skip
    assert (dry_run["valid"], dry_run["errors"]) == (True, [])
    assert dry_run["pins"]["created"] == 32

    faces2 = [
        m for m, _ in _messages(random.Random(9), ORIGINAL_MACS) if m.payload.count(b'"01 03 0C')
    ]

    async def scenario() -> Any:
        async with core_for(api.conninfo, redis_server.url, redis_prefix) as core:
            return await process(core, faces2)

    result = run(scenario())
    assert result.processed.readings == []
    assert len(result.dead_letters) == len(faces2) == 32
    # J3 and J4 are in sensor mode there, with Modbus templates that check the CRC.
    by_connector = {(d.mqtt_topic.split("/")[3], d.reason) for d in result.dead_letters}
    assert by_connector == {("J1", Reason.unmapped_connector), ("J2", Reason.unmapped_connector),
                            ("J3", Reason.crc_mismatch), ("J4", Reason.crc_mismatch)}  # fmt: skip

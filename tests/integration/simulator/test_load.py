"""`f2pipe simulator --load`: enrolment, the ledger, the shared decoder, a repeated run."""

from __future__ import annotations

import json
import stat
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from f2pipe_devtools.testkit.ledger import read_ledger
from f2pipe_shared.decoding import modbus_data
from f2pipe_shared.payloads import (
    DoorSensors,
    ExitButtons,
    ReaderScan,
    SensorFrame,
    Status,
    parse_payload,
)
from f2pipe_shared.timestamps import format_device_timestamp
from f2pipe_shared.topics import parse_topic
from tests.integration.simkit import Operator, Received, SimStack
from tests.integration.simulator.kit import CONTROLLERS, decoders, published, query, run_load

pytestmark = pytest.mark.integration

MESSAGES = 1500  # the load runs' --count (kit.LOAD)


@dataclass(frozen=True)
class Load:
    ledger: Path
    received: list[Received]  # what the operator got from the run, and nothing else


@pytest.fixture(scope="module")
def first_load(stack: SimStack, state_dir: Path, operator: Operator) -> Load:
    """The module's first load run: it enrols every controller (the tests read its ledger)."""
    ledger = stack.root / "load-1.jsonl"
    start = operator.count()
    run_load(stack, state_dir, ledger)
    operator.wait_for(lambda m: len(m) >= start + MESSAGES)
    time.sleep(0.5)  # anything extra would arrive now
    return Load(ledger, operator.since(start))


def test_a_load_run_enrols_each_controller_with_its_own_key(
    stack: SimStack, state_dir: Path, first_load: Load
) -> None:
    ledger = first_load.ledger

    keys = sorted((state_dir / "devices").glob("*.key"))
    assert len(keys) == CONTROLLERS
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    for key in keys:
        cert = x509.load_pem_x509_certificate(key.with_suffix(".crt").read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == key.stem
    valid = query(
        stack,
        "SELECT count(*) FROM registry.certificates WHERE kind = 'device' AND status = 'valid'",
    )
    assert valid == [(CONTROLLERS,)]

    lines = read_ledger(ledger)
    header, summary = lines[0], lines[-1]
    assert header["type"] == "header"
    assert len(header["controllers"]) == CONTROLLERS
    assert summary["type"] == "summary"
    assert (summary["messages"], summary["unacknowledged"]) == (MESSAGES, 0)
    assert set(summary["published"]) >= {"sensor", "door_sensors", "reader", "motion_sensor"}
    sent = published(ledger)
    assert len(sent) == MESSAGES
    assert {line["mac"] for line in sent} == set(header["controllers"])

    # The operator received exactly these messages: none missing, none extra, none twice.
    assert Counter((r.topic, r.payload) for r in first_load.received) == Counter(
        (line["topic"], line["payload"].encode()) for line in sent
    )


def test_the_shared_decoder_reads_back_every_value_the_ledger_says_was_sent(
    stack: SimStack, first_load: Load
) -> None:
    sent = published(first_load.ledger)
    header = read_ledger(first_load.ledger)[0]
    by_template = decoders(stack)
    locations = {
        (mac, connector, component): (device_id, template_id)
        for mac, connector, component, device_id, template_id in query(
            stack,
            """SELECT controller_mac, connector, component, device_id, template_id
               FROM registry.device_locations WHERE pin_id IS NOT NULL""",
        )
    }
    ids = {
        (template_id, key): dp_id
        for dp_id, template_id, key in query(
            stack, "SELECT id, template_id, key FROM registry.datapoints"
        )
    }
    temperatures = []
    for line in sent:
        topic = parse_topic(line["topic"])
        device_id, template_id = locations[(topic.mac, topic.connector, topic.component)]
        assert (line["device_id"], line["template_id"]) == (device_id, template_id)
        payload = parse_payload(topic, line["payload"].encode())
        assert isinstance(payload, SensorFrame | Status | DoorSensors | ExitButtons | ReaderScan)
        assert format_device_timestamp(payload.timestamp) == line["timestamp"]
        datapoints = header["templates"][str(template_id)]["datapoints"]
        for key in line["readings"]:  # the header maps keys to the registry's datapoint ids
            assert datapoints[key]["id"] == ids[(template_id, key)]
        if line["kind"] != "sensor":
            continue
        assert isinstance(payload, SensorFrame)
        keys, decode = by_template[template_id]
        values = decode(modbus_data(payload.frame(), verify_crc=True))
        assert dict(zip(keys, values, strict=True)) == line["readings"]
        if "temperature" in line["readings"]:
            temperatures.append(line["readings"]["temperature"])
    assert temperatures
    assert all(18 <= t <= 30 for t in temperatures)


def test_a_rerun_reuses_every_certificate_and_repeats_the_same_stream(
    stack: SimStack, state_dir: Path, operator: Operator, first_load: Load
) -> None:
    keys_before = {k.name: k.read_bytes() for k in (state_dir / "devices").glob("*.key")}
    certs_before = query(stack, "SELECT serial FROM registry.certificates ORDER BY serial")
    start = operator.count()
    sim = run_load(stack, state_dir, stack.root / "load-2.jsonl")

    assert query(stack, "SELECT serial FROM registry.certificates ORDER BY serial") == certs_before
    assert {k.name: k.read_bytes() for k in (state_dir / "devices").glob("*.key")} == keys_before
    enrolment = next(
        json.loads(line) for line in sim.log().splitlines() if '"enrolment done"' in line
    )
    assert (enrolment["enrolled"], enrolment["reused"]) == (0, CONTROLLERS)

    def stream(path: Path) -> list[tuple[str, str]]:
        return [(p["topic"], p["payload"]) for p in sorted(published(path), key=lambda p: p["seq"])]

    # Same seed, same virtual start time: the very same messages in the very same order.
    assert stream(stack.root / "load-2.jsonl") == stream(first_load.ledger)
    operator.wait_for(lambda m: len(m) >= start + MESSAGES)

"""`f2pipe simulator` against the real certgen, Mosquitto (production configuration) and a
migrated, seeded registry, with 50 controllers.

One stack for the module, one state directory shared by every run (as an operator's would
be), one operator identity (svc-operator, persistent session) that reads stat/# and tele/#
and sends the commands. The tests run in file order: two load runs (the first enrols, the
second reuses), then one normal-mode simulator for commands, a broker restart and SIGTERM.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from f2pipe_devtools.servers import PostgresServer, free_port
from f2pipe_devtools.testkit.ledger import read_ledger
from f2pipe_shared.decoding import DecodingSpec, compile_template, modbus_data
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
from tests.integration.certgen_harness import metric
from tests.integration.simkit import Operator, Received, SimStack, SimulatorProcess

pytestmark = pytest.mark.integration

CONTROLLERS = 50
SENSORS_PER_CONTROLLER = 5  # the demo layout: J3 sensor-1..3, J4 sensor-1..2
LOAD = ["--load", "--count", "1500", "--seed", "7", "--event-share", "0.2"]
START = ["--start-time", "2024-05-01 00:00:00"]
MAC = "aabbccddee01"


@pytest.fixture(scope="module")
def stack(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimStack]:
    conninfo = postgres_server.create_database(f"simulator_{os.getpid()}")
    started = SimStack.start(tmp_path_factory.mktemp("sim"), conninfo, CONTROLLERS)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def operator(stack: SimStack) -> Iterator[Operator]:
    client = Operator(stack.broker.port, stack.pki).connect()
    yield client
    client.close()


@pytest.fixture(scope="module")
def state_dir(stack: SimStack) -> Path:
    return stack.root / "state"


def query(stack: SimStack, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(stack.conninfo) as conn:
        return conn.execute(sql, params).fetchall()


def run_load(stack: SimStack, state_dir: Path, ledger: Path, *extra: str) -> SimulatorProcess:
    env = stack.simulator_env(state_dir, free_port())
    sim = SimulatorProcess(
        env, [*LOAD, *START, "--ledger", str(ledger), *extra], ledger.with_suffix(".log")
    )
    sim.start()
    assert sim.wait(90) == 0, sim.log()
    return sim


def published(ledger: Path) -> list[dict[str, Any]]:
    return [line for line in read_ledger(ledger) if line["type"] == "publish"]


def decoders(stack: SimStack) -> dict[int, tuple[list[str], Any]]:
    """Template id -> (datapoint keys, shared decoder) from the registry's own rows."""
    rows = query(
        stack,
        """SELECT template_id, key, "offset", length, encoding, byte_order, decimals
           FROM registry.datapoints WHERE encoding IS NOT NULL
           ORDER BY template_id, sort_order, id""",
    )
    specs: dict[int, list[tuple[str, DecodingSpec]]] = {}
    for template_id, key, offset, length, encoding, byte_order, decimals in rows:
        spec = DecodingSpec(
            offset=offset,
            length=length,
            encoding=encoding,
            byte_order=byte_order,
            decimals=decimals,
        )
        specs.setdefault(template_id, []).append((key, spec))
    return {
        t: ([k for k, _ in points], compile_template([s for _, s in points]))
        for t, points in specs.items()
    }


# --- load mode: enrolment, the ledger, the decoder -----------------------------------------------


def test_a_load_run_enrols_each_controller_with_its_own_key(
    stack: SimStack, state_dir: Path, operator: Operator
) -> None:
    ledger = stack.root / "load-1.jsonl"
    start = operator.count()
    run_load(stack, state_dir, ledger)

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
    assert (summary["messages"], summary["unacknowledged"]) == (1500, 0)
    assert set(summary["published"]) >= {"sensor", "door_sensors", "reader", "motion_sensor"}
    sent = published(ledger)
    assert len(sent) == 1500
    assert {line["mac"] for line in sent} == set(header["controllers"])

    # The operator received exactly these messages: none missing, none extra, none twice.
    received = operator.wait_for(lambda m: len(m) >= start + 1500)[start:]
    time.sleep(0.5)  # anything extra would arrive now
    received = operator.since(start)
    assert Counter((r.topic, r.payload) for r in received) == Counter(
        (line["topic"], line["payload"].encode()) for line in sent
    )


def test_the_shared_decoder_reads_back_every_value_the_ledger_says_was_sent(
    stack: SimStack,
) -> None:
    sent = published(stack.root / "load-1.jsonl")
    header = read_ledger(stack.root / "load-1.jsonl")[0]
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
    stack: SimStack, state_dir: Path, operator: Operator
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
    assert stream(stack.root / "load-2.jsonl") == stream(stack.root / "load-1.jsonl")
    operator.wait_for(lambda m: len(m) >= start + 1500)


# --- normal mode ---------------------------------------------------------------------------------


@dataclass
class Running:
    sim: SimulatorProcess
    ledger: Path
    first: int  # the operator's message count when it started


@pytest.fixture(scope="module")
def running(stack: SimStack, state_dir: Path, operator: Operator) -> Iterator[Running]:
    env = stack.simulator_env(
        state_dir,
        free_port(),
        PUBLISH_INTERVAL="1",
        SIMULATOR_EVENT_INTERVAL="10",
        SIMULATOR_RECONNECT_MIN="0.2",
        SIMULATOR_RECONNECT_MAX="2",
    )
    ledger = stack.root / "normal.jsonl"
    sim = SimulatorProcess(env, ["--ledger", str(ledger)], stack.root / "normal.log")
    first = operator.count()
    sim.start()
    try:
        sim.wait_connected(CONTROLLERS)
        yield Running(sim, ledger, first)
    finally:
        sim.kill()


def test_every_sensor_reports_and_doors_readers_and_motion_change(
    running: Running, operator: Operator
) -> None:
    start = operator.count()
    sensor_topics = {
        f"tele/f2-aabbccddee{n:02x}/sensor-mode/{c}/sensor-{p}"
        for n in range(1, CONTROLLERS + 1)
        for c, p in [("J3", 1), ("J3", 2), ("J3", 3), ("J4", 1), ("J4", 2)]
    }

    def seen(messages: list[Received]) -> tuple[set[str], set[str]]:
        topics = {m.topic for m in messages[start:]}
        kinds = {t.rsplit("/", 1)[1].rstrip("0123456789-") for t in topics}
        return topics, kinds

    received = operator.wait_for(
        lambda m: (
            sensor_topics <= seen(m)[0]
            and {"door-sensors", "reader", "motion-sensor"} <= seen(m)[1]
        ),
        timeout=30,
    )
    topics, _ = seen(received)
    assert sensor_topics <= topics
    for message in received[start:]:
        parse_payload(parse_topic(message.topic), message.payload)  # all valid for the pipeline


def status_answers(operator: Operator, start: int, suffix: str) -> list[bool]:
    answers = []
    for message in operator.since(start):
        if message.topic.startswith("stat/") and message.topic.endswith(suffix):
            answers.append(Status.model_validate_json(message.payload).status)
    return answers


def ask(operator: Operator, topic: str, payload: bytes, suffix: str, count: int = 1) -> list[bool]:
    """Send a command; wait for ``count`` state answers on the matching stat topic."""
    start = operator.count()
    operator.command(topic, payload)
    operator.wait_for(lambda _: len(status_answers(operator, start, suffix)) >= count, 10)
    return status_answers(operator, start, suffix)


def test_strike_commands_get_their_documented_answers(running: Running, operator: Operator) -> None:
    strike = f"cmnd/f2-{MAC}/access-control-mode/J1/strike-1"
    answer = f"f2-{MAC}/access-control-mode/J1/strike-1"
    assert ask(operator, strike, b'{"power-flag":1}', answer) == [True]
    assert ask(operator, strike, b'{"power-flag":0}', answer) == [False]
    assert ask(operator, strike, b"", answer) == [False]  # empty payload: report the state
    started = time.monotonic()
    assert ask(operator, strike, b'{"power-flag":2,"period":1}', answer, count=2) == [True, False]
    assert time.monotonic() - started >= 0.9  # toggled for the period, then back
    assert ask(operator, strike, b"", answer) == [False]


def test_siren_commands_get_their_documented_answers(running: Running, operator: Operator) -> None:
    siren = f"cmnd/f2-{MAC}/alarm-mode/J2/siren-1"
    answer = f"f2-{MAC}/alarm-mode/J2/siren-1"
    assert ask(operator, siren, b"1", answer) == [True]
    assert ask(operator, siren, b"", answer) == [True]
    assert ask(operator, siren, b"0", answer) == [False]
    assert ask(operator, siren, b"", answer) == [False]


def test_reader_success_signals_and_bad_commands_are_taken_without_an_answer(
    running: Running, operator: Operator
) -> None:
    reader = f"cmnd/f2-{MAC}/access-control-mode/J1/reader-1/success"
    start = operator.count()
    for payload in (b"1", b"2", b"3", b"4"):
        operator.command(reader, payload)
    operator.command(f"cmnd/f2-{MAC}/access-control-mode/J1/strike-1", b'{"power-flag":2}')
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = running.sim.metrics_text()
        if metric(text, "simulator_commands_total", kind="strike", result="invalid") >= 1:
            break
        time.sleep(0.1)
    for signal in ("success", "fail_1", "fail_2"):
        assert metric(text, "simulator_reader_signals_total", signal=signal) == 1
    assert metric(text, "simulator_commands_total", kind="reader", result="signalled") == 3
    assert metric(text, "simulator_commands_total", kind="reader", result="invalid") == 1
    assert not [
        m
        for m in operator.since(start)
        if m.topic.startswith(f"stat/f2-{MAC}/access-control-mode/J1/strike")
    ]


def test_a_broker_restart_is_survived(
    stack: SimStack, running: Running, operator: Operator
) -> None:
    stack.broker.stop()
    time.sleep(1.0)
    stopped = operator.count()
    stack.broker.start()
    running.sim.wait_connected(CONTROLLERS, timeout=30)
    text = running.sim.metrics_text()
    assert metric(text, "simulator_disconnects_total") >= CONTROLLERS
    # Every controller publishes again, and the operator's session saw it through.
    macs = {f"f2-aabbccddee{n:02x}" for n in range(1, CONTROLLERS + 1)}
    operator.wait_for(
        lambda m: (
            macs <= {r.topic.split("/")[1] for r in m[stopped:] if r.topic.startswith("tele/")}
        ),
        timeout=30,
    )


def test_sigterm_stops_cleanly_and_the_operator_got_everything_in_the_ledger(
    stack: SimStack, running: Running, operator: Operator
) -> None:
    assert running.sim.terminate() == 0
    lines = read_ledger(running.ledger)
    summary = lines[-1]
    assert summary["type"] == "summary"
    assert summary["unacknowledged"] == 0
    sent = {(p["topic"], p["payload"].encode()) for p in lines if p["type"] == "publish"}
    assert summary["messages"] >= len(sent) > CONTROLLERS * SENSORS_PER_CONTROLLER
    commands = [p for p in lines if p["type"] == "command"]
    assert {c["result"] for c in commands} >= {"answered", "reported", "signalled", "invalid"}
    start = running.first
    operator.wait_for(lambda m: sent <= {(r.topic, r.payload) for r in m[start:]}, timeout=15)
    received = {(r.topic, r.payload) for r in operator.since(start)}
    assert sent == received  # at least once: a duplicate after the restart is allowed

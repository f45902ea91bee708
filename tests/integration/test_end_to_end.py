"""The whole pipeline, as `f2pipe dev up --detach` runs it: ledger in, exactly the ledger out.

The simulator's load mode publishes a known stream and writes a ledger of every message the
broker acknowledged; the test waits until the database holds exactly the readings and events
the ledger says (values included), and the dead-letter topic exactly the malformed messages
it injected. The second test kills the bridge, the processor and the sink with SIGKILL in
turn while the simulator publishes (`f2pipe dev` restarts them): still exactly the ledger.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as mqtt
import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from f2pipe.brokerconfig import TEMPLATE
from f2pipe.seed import demo_mac
from f2pipe_certgen.ca import CertificateAuthority
from f2pipe_devtools.dev.ports import Ports
from f2pipe_devtools.dev.procs import Console
from f2pipe_devtools.dev.stack import DevOptions, DevStack
from f2pipe_devtools.servers import free_port
from f2pipe_devtools.testkit.ledger import Row, expected_rows, read_ledger
from f2pipe_devtools.testkit.samples import Slot, load_fleet
from f2pipe_shared.deadletters import DeadLetter
from f2pipe_shared.decoding import build_modbus_response, format_hex_frame
from f2pipe_shared.timestamps import format_device_timestamp, to_epoch_us
from tests.integration.devkit import dev_stack_top
from tests.integration.scalekit import logs_report

CONTROLLERS = 6
INJECTOR = demo_mac(6)  # never simulated: sends the malformed messages


@dataclass
class Stack:
    state_dir: Path
    base: int
    env: dict[str, str]

    @property
    def conninfo(self) -> str:
        passfile = self.state_dir / "postgres" / "pgpass"  # the superuser's password (dev up)
        port = self.env["POSTGRES_PORT"]
        return f"host=127.0.0.1 port={port} user=postgres dbname=f2pipe passfile={passfile}"

    def dev(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "f2pipe", "dev", *args, "--state-dir", str(self.state_dir)],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.state_dir / "state.json").read_text())
        return state

    def log(self, lines: int = 60) -> str:
        text = (self.state_dir / "dev.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def pipeline_log(self) -> str:
        """The bridge's, processor's and sink's errors and last lines (each service's own log
        file): why data stopped, which the stack log's last lines (status, broker) hide."""
        logs = self.state_dir / "logs"
        return logs_report({name: (logs / f"{name}.log").read_text(errors="replace")
                            for name in ("bridge", "processor", "sink")})  # fmt: skip


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    top = dev_stack_top("f2pipe-e2e-")
    state_dir = top / "state"
    base = Ports.free_base()
    stack = Stack(state_dir, base, {})
    up = stack.dev("up", "--detach", "--base-port", str(base), "--controllers",
                   str(CONTROLLERS), "--no-simulator", "--status-interval", "1")  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        # What every process of the stack was given (the same computation), with the
        # simulator's own database login: run_simulator starts one.
        dev = DevStack(DevOptions(state_dir, Ports.from_base(base)), Console())
        stack.env = {**dev.env(), **dev.database_env("simulator")}
        yield stack
    finally:
        down = stack.dev("down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert not (state_dir / "state.json").exists()
        shutil.rmtree(top, ignore_errors=True)


def run_simulator(
    stack: Stack, macs: list[str], ledger: Path, count: int, rate: int
) -> subprocess.Popen[bytes]:
    env = {**stack.env, "METRICS_PORT": str(free_port())}
    argv = [sys.executable, "-m", "f2pipe", "simulator", "--load", "--count", str(count),
            "--rate", str(rate), "--seed", "7", "--ledger", str(ledger)]  # fmt: skip
    for mac in macs:
        argv += ["--mac", mac]
    log = (ledger.parent / "simulator.log").open("ab")
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def stored(stack: Stack, macs: list[str]) -> tuple[list[Row], Counter[tuple[int, int]]]:
    with psycopg.connect(stack.conninfo) as conn:
        devices = [row[0] for row in conn.execute(
            "SELECT device_id FROM registry.device_locations WHERE controller_mac = ANY(%s)",
            (macs,))]  # fmt: skip
        readings = [
            (to_epoch_us(ts), device, datapoint, value)
            for ts, device, datapoint, value in conn.execute(
                "SELECT timestamp, device_id, datapoint_id, value FROM telemetry.readings "
                "WHERE device_id = ANY(%s)", (devices,))
        ]  # fmt: skip
        events = Counter(
            (to_epoch_us(ts), device)
            for ts, device in conn.execute(
                # connectivity transitions are the processor's own events, not the ledger's
                "SELECT timestamp, device_id FROM telemetry.events "
                "WHERE device_id = ANY(%s) AND kind <> 'connectivity'", (devices,))
        )  # fmt: skip
    return readings, events


def wait_for_ledger(stack: Stack, macs: list[str], ledger: Path, timeout: float = 180) -> None:
    lines = read_ledger(ledger)
    assert lines[0]["type"] == "header"
    assert lines[-1]["type"] == "summary"
    expected = expected_rows(lines)
    readings, events = expected.readings, expected.events
    assert expected.published > 0
    deadline = time.monotonic() + timeout
    while True:
        rows, got_events = stored(stack, macs)
        if (set(rows) >= readings and sum(got_events.values()) >= sum(events.values())) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(1)
    time.sleep(3)  # anything late (a duplicate) would land now
    rows, got_events = stored(stack, macs)
    missing_rows = readings - set(rows)
    assert not missing_rows, (
        f"{len(missing_rows)} of {len(readings)} readings missing\n{stack.pipeline_log()}"
    )
    assert len(rows) == len(set(rows)) == len(readings), "readings not in the ledger"
    assert got_events == events


def device_tls(stack: Stack, root: Path, mac: str) -> tuple[str, str, str]:
    ca = CertificateAuthority.load(Path(stack.env["CA_DIR"]))
    issued, key = ca.issue_key_and_certificate(f"f2-{mac}", days=1)
    cert_path, key_path = root / f"{mac}.crt", root / f"{mac}.key"
    cert_path.write_text(issued.pem)
    key_path.write_text(key)
    key_path.chmod(0o600)
    return stack.env["MQTT_CA_FILE"], str(cert_path), str(key_path)


def injector_slot(stack: Stack) -> tuple[Slot, str]:
    """The injector's sensor slot, and a valid hex frame for it."""
    slot = next(s for s in load_fleet(stack.conninfo)
                if s.mac == INJECTOR and s.template and s.template.verify_crc)  # fmt: skip
    assert slot.template is not None
    length = max(dp.spec.end for dp in slot.template.frame_points if dp.spec is not None)
    good = format_hex_frame(build_modbus_response(slot.template.modbus_address or 1, bytes(length)))
    return slot, good


def device_client(stack: Stack, root: Path) -> mqtt.Client:
    """An MQTT client with the injector's own certificate (not yet connected)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"f2-{INJECTOR}")
    ca_file, cert, key = device_tls(stack, root, INJECTOR)
    client.tls_set(
        ca_certs=ca_file, certfile=cert, keyfile=key, tls_version=ssl.PROTOCOL_TLS_CLIENT
    )
    return client


def inject_malformed(stack: Stack, root: Path) -> dict[bytes, str]:
    """Messages the processor must dead-letter, sent by a real device; payload -> reason."""
    slot, good = injector_slot(stack)
    ts = format_device_timestamp(datetime.now(UTC))
    bad_crc = good[:-2] + ("00" if good[-2:] != "00" else "11")
    messages = {
        b"not json {": "invalid_json",
        json.dumps({"data": good}).encode(): "schema_violation",
        json.dumps({"timestamp": ts, "data": "ZZ"}).encode(): "bad_hex",
        json.dumps({"timestamp": ts, "data": "01 03"}).encode(): "short_frame",
        json.dumps({"timestamp": ts, "data": bad_crc}).encode(): "crc_mismatch",
    }
    client = device_client(stack, root)
    client.connect("127.0.0.1", int(stack.env["MQTT_BROKER_PORT"]))
    client.loop_start()
    try:
        for payload in messages:
            client.publish(slot.topic(), payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()  # before loop_stop, which would wait out a 1 s select otherwise
        client.loop_stop()
    return messages


def _letter(message: Message) -> DeadLetter:
    headers = cast(list[tuple[str, bytes | None]], message.headers() or [])
    return DeadLetter.from_kafka(message.value(), headers)


def dead_letters(
    stack: Stack, originals: Collection[bytes], want: int, timeout: float = 60
) -> list[DeadLetter]:
    """The dead letters of these payloads (other tests' letters share the topic): ``want`` of
    them, then 3 s more for any extra."""
    topic = stack.env.get("KAFKA_DEADLETTER_TOPIC", "iot-dead-letter")
    consumer = Consumer({"bootstrap.servers": stack.env["KAFKA_BOOTSTRAP_SERVERS"],
                         "group.id": f"e2e-{time.time_ns()}", "enable.auto.commit": False})  # fmt: skip  # noqa: E501
    # Assigned, not subscribed: joining a new group costs the local broker's rebalance wait.
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    letters: list[DeadLetter] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(letters) < want:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                letters.append(_letter(message))
            letters = [d for d in letters if d.original in originals]
        end = time.monotonic() + 3  # and nothing more
        while time.monotonic() < end:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                letters.append(_letter(message))
            letters = [d for d in letters if d.original in originals]
    finally:
        consumer.close()
    return letters


def test_the_database_holds_exactly_the_ledger_and_the_dead_letters_the_injected(
    stack: Stack, tmp_path: Path
) -> None:
    status = stack.dev("status", timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    for name in ("certgen", "bridge", "processor", "sink"):
        assert f"{name}" in status.stdout
    assert "all healthy" in status.stdout

    macs = [demo_mac(1), demo_mac(2)]
    ledger = tmp_path / "ledger.jsonl"
    simulator = run_simulator(stack, macs, ledger, count=3000, rate=1000)
    injected = inject_malformed(stack, tmp_path)
    assert simulator.wait(120) == 0, (tmp_path / "simulator.log").read_text()[-3000:]
    wait_for_ledger(stack, macs, ledger)

    # The README's first query, as a newcomer runs it against this stack.
    with psycopg.connect(stack.conninfo) as conn:
        rows = conn.execute(readme_query()).fetchall()
    assert len(rows) == 20
    assert all(row[4] and row[5] is not None for row in rows)  # labelled, with a value

    letters = dead_letters(stack, injected, want=len(injected))
    assert {d.original: d.reason.value for d in letters} == injected
    assert len(letters) == len(injected)
    assert {d.mqtt_topic for d in letters} == {letters[0].mqtt_topic}
    assert f"f2-{INJECTOR}" in (letters[0].mqtt_topic or "")


def readme_query() -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    match = re.search(r'psql "host=127\.0\.0\.1 port=25432[^"]*" -c "(.*?)"', readme, re.S)
    assert match is not None, "the README's psql example moved"
    return match[1]


def _pid(stack: Stack, name: str) -> int:
    return int(stack.state()["pids"][name])


def kill_and_wait_restarted(stack: Stack, name: str, timeout: float = 60) -> None:
    old = _pid(stack, name)
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = stack.state()["pids"].get(name)
        if pid not in (None, old):
            return
        time.sleep(0.5)
    raise AssertionError(f"{name} not restarted after kill -9:\n{stack.log()}")


def test_kill_9_of_bridge_processor_and_sink_mid_run_still_exactly_the_ledger(
    stack: Stack, tmp_path: Path
) -> None:
    macs = [demo_mac(3), demo_mac(4), demo_mac(5)]
    ledger = tmp_path / "ledger.jsonl"
    simulator = run_simulator(stack, macs, ledger, count=9000, rate=300)
    for name in ("bridge", "processor", "sink"):
        time.sleep(5)
        assert simulator.poll() is None, "the run ended before every kill"
        kill_and_wait_restarted(stack, name)
    assert simulator.wait(180) == 0, (tmp_path / "simulator.log").read_text()[-3000:]
    wait_for_ledger(stack, macs, ledger)
    log = stack.log(400)
    for name in ("bridge", "processor", "sink"):
        assert f"{name} exited with -9; restarting it" in log


def publish_once(stack: Stack, root: Path, topic: str, payload: bytes, retain: bool) -> str:
    """One QoS 1 publish on a new connection: "acknowledged" or "disconnected" by the broker."""
    client = device_client(stack, root)
    gone = threading.Event()
    client.on_disconnect = lambda *_: gone.set()
    client.connect("127.0.0.1", int(stack.env["MQTT_BROKER_PORT"]))
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=retain)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (info.is_published() or gone.is_set()):
            time.sleep(0.05)
        return "acknowledged" if info.is_published() else "disconnected" if gone.is_set() else "?"
    finally:
        client.disconnect()  # before loop_stop, which would wait out a 1 s select otherwise
        client.loop_stop()


def broker_packet_limit() -> int:
    conf = TEMPLATE.read_text()
    match = re.search(r"^max_packet_size (\d+)$", conf, re.M)
    assert match is not None, "the broker configuration sets no max_packet_size"
    return int(match[1])


def test_no_payload_from_a_device_stops_ingestion_and_a_valid_message_after_is_stored(
    stack: Stack, tmp_path: Path
) -> None:
    pids = {name: _pid(stack, name) for name in ("bridge", "processor", "sink")}
    log_from = (stack.state_dir / "dev.log").stat().st_size
    slot, good = injector_slot(stack)
    limit = broker_packet_limit()
    sizes = [0, 16 * 1024 + 1, 1024 * 1024, limit + 1]
    outcomes = {
        (size, retain): publish_once(stack, tmp_path, slot.topic(), b"{" * size, retain)
        for size in sizes
        for retain in (False, True)
    }
    assert outcomes == {
        (0, False): "acknowledged",  # the processor dead-letters it (invalid_json)
        (16 * 1024 + 1, False): "acknowledged",  # the bridge dead-letters it (oversize)
        (1024 * 1024, False): "disconnected",  # over max_packet_size: never queued
        (limit + 1, False): "disconnected",
        **{(size, True): "disconnected" for size in sizes},  # retain_available false
    }

    # A valid message right after reaches the database, through the same processes.
    stamp = datetime.now(UTC).replace(microsecond=0)
    valid = json.dumps({"timestamp": format_device_timestamp(stamp), "data": good}).encode()
    assert publish_once(stack, tmp_path, slot.topic(), valid, False) == "acknowledged"
    deadline = time.monotonic() + 60
    stored_rows = 0
    while time.monotonic() < deadline and not stored_rows:
        with psycopg.connect(stack.conninfo) as conn:
            row = conn.execute(
                "SELECT count(*) FROM telemetry.readings WHERE device_id = %s AND timestamp = %s",
                (slot.device_id, stamp),
            ).fetchone()
        stored_rows = row[0] if row else 0
        time.sleep(0.5)
    assert stored_rows > 0, stack.log()

    letters = dead_letters(stack, (b"", b"{" * 1024), want=2)
    assert sorted((d.reason.value, d.original_size) for d in letters) == [
        ("invalid_json", None),
        ("oversize", 16 * 1024 + 1),
    ]
    assert {name: _pid(stack, name) for name in pids} == pids, "a service was restarted"
    with (stack.state_dir / "dev.log").open("rb") as log:
        log.seek(log_from)
        assert b"exited with" not in log.read()


def test_the_local_broker_runs_unprivileged_and_cannot_read_the_ca_key(stack: Stack) -> None:
    conf = str(stack.state_dir.resolve() / "broker" / "mosquitto.conf")
    brokers = [
        p for p in Path("/proc").iterdir()
        if p.name.isdigit() and _status(p).get("Name") == "mosquitto" and conf in _cmdline(p)
    ]  # fmt: skip
    assert len(brokers) == 1, brokers
    uid = int(_status(brokers[0])["Uid"].split()[1])  # effective uid
    ca_key = Path(stack.env["CA_DIR"]) / "ca.key"
    assert ca_key.stat().st_mode & 0o077 == 0, "ca.key is readable by others"
    if os.geteuid() == 0:
        assert uid == pwd.getpwnam("mosquitto").pw_uid
        assert ca_key.stat().st_uid != uid
    else:
        assert uid == os.geteuid()  # a developer's own account, never more


def _cmdline(proc: Path) -> list[str]:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _status(proc: Path) -> dict[str, str]:
    try:
        lines = (proc / "status").read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)

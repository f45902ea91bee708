"""The bridge against real Mosquitto and the Kafka-protocol broker, run as a real process."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from f2pipe_devtools.servers import (
    KafkaBroker,
    MissingBinaryError,
    MosquittoServer,
    TcpProxy,
    free_port,
)
from f2pipe_shared.deadletters import PREVIEW_BYTES, Reason, Stage
from f2pipe_shared.records import RawMessage, partition_for_device
from tests.conftest import missing
from tests.integration.bridgekit import (
    BridgeProcess,
    Publisher,
    Topics,
    bridge_env,
    dead_letters,
    raw_messages,
    wait_for,
)
from tests.integration.tlskit import Identity, Pki, SupervisedMosquitto, start_broker

pytestmark = pytest.mark.integration

# What matters for the bridge in the production configuration: persistence, and queues large
# enough that a persistent session's backlog is not dropped while the bridge is away.
BROKER_CONFIG = """listener {port} {host}
allow_anonymous true
max_queued_messages 1000000
max_inflight_messages 5000
"""

BridgeFactory = Callable[..., BridgeProcess]

DEVICES = [f"f2-aabbccddee{i:02x}" for i in range(1, 7)]


def topic_of(device: str, n: int) -> str:
    return f"tele/{device}/sensor-mode/J3/sensor-{n % 6 + 1}"


def payload(device: str, seq: int) -> bytes:
    return json.dumps({"device": device, "seq": seq, "data": "01 03 02 00 01"}).encode()


def seqs(messages: list[tuple[int, RawMessage]]) -> Counter[tuple[str, int]]:
    found: Counter[tuple[str, int]] = Counter()
    for _, m in messages:
        body = json.loads(m.payload)
        found[(body["device"], body["seq"])] += 1
    return found


def collect(
    bootstrap: str,
    topic: str,
    enough: Callable[[Counter[tuple[str, int]]], bool],
    timeout: float,
    what: str,
    idle: float = 2,
) -> Counter[tuple[str, int]]:
    """Read the raw topic again and again until `enough` of (device, seq) -> copies is there."""
    found: Counter[tuple[str, int]] = Counter()

    def complete() -> bool:
        found.clear()
        found.update(seqs(raw_messages(bootstrap, topic, idle=idle)))
        return enough(found)

    wait_for(complete, timeout, what)
    return found


def collect_all(
    bootstrap: str, topic: str, expected: set[tuple[str, int]], timeout: float, what: str
) -> Counter[tuple[str, int]]:
    return collect(bootstrap, topic, lambda found: set(found) >= expected, timeout, what)


def publish_round_robin(
    publisher: Publisher, total: int, *, at: int = -1, then: Callable[[], object] = lambda: None
) -> set[tuple[str, int]]:
    """`total` messages, device after device, and close; at message `at`, once the broker has
    every message so far, `then`. What was published: (device, seq)."""
    for seq in range(total):
        device = DEVICES[seq % len(DEVICES)]
        publisher.publish(topic_of(device, seq), payload(device, seq))
        if seq == at:
            publisher.wait()
            then()
    publisher.close()
    return {(DEVICES[s % len(DEVICES)], s) for s in range(total)}


def publish_seqs(publisher: Publisher, device: str, total: int) -> None:
    for seq in range(total):
        publisher.publish(topic_of(device, seq), payload(device, seq))
    publisher.close()


@dataclass
class Production:
    """A production broker of its own CA, a device of that CA, and the bridge (not started)
    with its service identity."""

    broker: SupervisedMosquitto
    device: Identity
    tls: tuple[str, str, str]  # the device's, for a `Publisher`
    bridge: BridgeProcess

    @classmethod
    def start(cls, root: Path, cn: str, kafka_bootstrap: str, topics: Topics) -> Production:
        pki = Pki.create(root / "pki")
        broker = start_broker(root / "broker", pki)
        device = pki.device(cn)
        identity = pki.service("bridge")
        env = bridge_env(
            broker.port,
            kafka_bootstrap,
            topics,
            "ignored-under-tls",  # the broker takes the client id from the certificate's CN
            MQTT_TLS="true",
            MQTT_BROKER_HOST="localhost",  # a name in the broker certificate's SANs
            MQTT_CA_FILE=str(pki.ca_file),
            BRIDGE_CERT_FILE=str(identity.cert),
            BRIDGE_KEY_FILE=str(identity.key),
        )
        tls = (str(pki.ca_file), str(device.cert), str(device.key))
        return cls(broker, device, tls, BridgeProcess(env, root / "bridge.log"))

    def publisher(self) -> Publisher:
        return Publisher(self.broker.port, self.device.cn, tls=self.tls)


def queued_across_a_broker_restart(
    broker: MosquittoServer,
    bridge: BridgeProcess,
    connect: Callable[[], Publisher],
    device: str,
    total: int,
    kafka_bootstrap: str,
    topics: Topics,
) -> Counter[tuple[str, int]]:
    """Queue `total` messages of `device` at the broker while the bridge is away, restart the
    broker, bring the bridge back: what reaches Kafka."""
    bridge.start()
    bridge.terminate()  # the session now exists at the broker, the bridge is away
    publish_seqs(connect(), device, total)
    broker.stop()  # Mosquitto saves its sessions and queues on a clean stop
    broker.start()
    bridge.start()
    found = collect(
        kafka_bootstrap,
        topics.raw,
        lambda found: len(found) >= total,
        30,
        f"the {total} messages queued before the restart",
        idle=1,
    )
    bridge.terminate()
    return found


@pytest.fixture(scope="module")
def broker(servers_dir: Path) -> Iterator[MosquittoServer]:
    try:
        server = MosquittoServer(Path(tempfile.mkdtemp(dir=servers_dir)), config=BROKER_CONFIG)
    except MissingBinaryError as exc:
        missing(exc)
    with server:
        yield server


@pytest.fixture
def topics() -> Topics:
    return Topics.unique()


@pytest.fixture
def bridge_factory(
    broker: MosquittoServer, kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> Iterator[BridgeFactory]:
    started: list[BridgeProcess] = []

    def make(
        client_id: str = "bridge-test", kafka: str = kafka_bootstrap, **extra: str
    ) -> BridgeProcess:
        env = bridge_env(broker.port, kafka, topics, client_id, **extra)
        process = BridgeProcess(env, tmp_path / f"{client_id}.log")
        started.append(process)
        return process

    yield make
    for process in started:
        if process.proc is not None and process.proc.poll() is None:
            process.kill()


def test_messages_arrive_intact_in_order_per_device(
    broker: MosquittoServer, kafka_bootstrap: str, topics: Topics, bridge_factory: BridgeFactory
) -> None:
    bridge = bridge_factory().start()
    publisher = Publisher(broker.port)
    before_us = time.time_ns() // 1000
    for seq in range(300):
        for device in DEVICES:
            publisher.publish(topic_of(device, seq), payload(device, seq))
    publisher.close()
    messages = raw_messages(kafka_bootstrap, topics.raw, idle=3)
    after_us = time.time_ns() // 1000
    bridge.terminate()

    assert len(messages) == 300 * len(DEVICES)
    per_device: dict[str, list[int]] = defaultdict(list)
    for partition, m in messages:
        body = json.loads(m.payload)
        assert m.topic == topic_of(body["device"], body["seq"])
        assert m.payload == payload(body["device"], body["seq"])  # bytes unchanged
        assert before_us <= m.received_at_us <= after_us
        assert partition == partition_for_device(body["device"], 3)
        per_device[body["device"]].append(body["seq"])
    for device in DEVICES:
        assert per_device[device] == list(range(300)), f"{device} out of order"


def test_kill_9_while_streaming_loses_nothing(
    broker: MosquittoServer, kafka_bootstrap: str, topics: Topics, bridge_factory: BridgeFactory
) -> None:
    bridge = bridge_factory(client_id="bridge-kill").start()
    # Killed mid-stream: some batches unconfirmed, some confirmed but not acked; the rest of
    # the stream waits at the broker in the bridge's persistent session.
    expected = publish_round_robin(Publisher(broker.port), 10_000, at=3_000, then=bridge.kill)
    bridge.start()
    found = collect_all(kafka_bootstrap, topics.raw, expected, 90, "all 10,000 messages in Kafka")
    bridge.terminate()
    assert set(found) == expected  # duplicates are allowed here, loss is not


def test_kafka_unreachable_for_10s_loses_nothing(
    broker: MosquittoServer, topics: Topics, bridge_factory: BridgeFactory, servers_dir: Path
) -> None:
    proxy_port = free_port()
    kafka = KafkaBroker(Path(tempfile.mkdtemp(dir=servers_dir)), advertised_port=proxy_port).start()
    proxy = TcpProxy(kafka.port, port=proxy_port).start()
    bootstrap = f"127.0.0.1:{proxy_port}"
    try:
        bridge = bridge_factory(
            client_id="bridge-outage",
            kafka=bootstrap,
            BRIDGE_MAX_IN_FLIGHT="500",
        ).start()
        outage_started: list[float] = []

        def cut() -> None:
            proxy.cut()
            outage_started.append(time.monotonic())

        total = 3_000
        expected = publish_round_robin(Publisher(broker.port), total, at=1_000, then=cut)
        # The window fills within a second; librdkafka gives a record 300 s (message.timeout.ms).
        time.sleep(max(0.0, 10 - (time.monotonic() - outage_started[0])))
        # While Kafka is away the bridge holds at most its in-flight window; the broker the rest.
        assert bridge.metric("f2pipe_bridge_in_flight") == 500
        assert bridge.metric("f2pipe_bridge_received_total") < total
        proxy.restore()
        found = collect_all(bootstrap, topics.raw, expected, 120, "every message after the outage")
        assert bridge.terminate() == 0
        assert set(found) == expected
    finally:
        proxy.stop()
        kafka.stop()


def test_bad_topics_and_oversize_payloads_are_dead_lettered_once(
    broker: MosquittoServer, kafka_bootstrap: str, topics: Topics, bridge_factory: BridgeFactory
) -> None:
    bridge = bridge_factory(client_id="bridge-dlq", BRIDGE_MAX_PAYLOAD_BYTES="1024").start()
    publisher = Publisher(broker.port)
    publisher.publish("tele/f2-aabbccddee01/sensor-mode/J9/sensor-1", b'{"bad":"connector"}')
    publisher.publish("stat/not-a-device/alarm-mode/J1/siren-1", b"{}")
    publisher.publish(topic_of(DEVICES[0], 1), b"x" * 2048)
    publisher.publish(topic_of(DEVICES[0], 2), payload(DEVICES[0], 2))
    publisher.close()
    wait_for(lambda: bridge.metric("f2pipe_bridge_acknowledged_total") >= 4, 20, "4 acks")
    bridge.terminate()
    # Acknowledged means settled: a restarted bridge must not see (and dead-letter) them again.
    bridge.start()
    time.sleep(2)
    bridge.terminate()

    letters = dead_letters(kafka_bootstrap, topics.dlq)
    by_topic = {letter.mqtt_topic: letter for letter in letters}
    assert len(letters) == 3
    assert all(letter.stage == Stage.bridge for letter in letters)
    bad_connector = by_topic["tele/f2-aabbccddee01/sensor-mode/J9/sensor-1"]
    assert bad_connector.reason == Reason.bad_topic
    assert "level 4 (connector)" in bad_connector.detail
    assert bad_connector.original == b'{"bad":"connector"}'
    assert by_topic["stat/not-a-device/alarm-mode/J1/siren-1"].reason == Reason.bad_topic
    oversize = by_topic[topic_of(DEVICES[0], 1)]
    assert oversize.reason == Reason.oversize
    assert "2048 bytes" in oversize.detail
    assert [m.payload for _, m in raw_messages(kafka_bootstrap, topics.raw)] == [
        payload(DEVICES[0], 2)
    ]


def test_no_payload_size_stops_the_bridge_and_the_next_message_goes_through(
    broker: MosquittoServer, kafka_bootstrap: str, topics: Topics, bridge_factory: BridgeFactory
) -> None:
    # This test broker has no packet limit (production's refuses above 128 KiB), so even a
    # 1 MiB payload reaches the bridge: once, that made the bridge exit for good.
    bridge = bridge_factory(client_id="bridge-sizes").start()
    sizes = [0, 16 * 1024 + 1, 1024 * 1024, 4 * 1024 * 1024]
    payloads = {size: bytes(range(256)) * (size // 256) + b"x" * (size % 256) for size in sizes}
    publisher = Publisher(broker.port)
    for n, size in enumerate(sizes):
        publisher.publish(topic_of(DEVICES[1], n), payloads[size])
    publisher.publish(topic_of(DEVICES[1], 9), payload(DEVICES[1], 9))
    publisher.close()
    wait_for(lambda: bridge.metric("f2pipe_bridge_acknowledged_total") >= 5, 30, "5 acks")
    assert bridge.proc is not None
    assert bridge.proc.poll() is None, "the bridge stopped"
    assert bridge.health()[0] == 200

    letters = {letter.mqtt_topic: letter for letter in dead_letters(kafka_bootstrap, topics.dlq)}
    assert len(letters) == 3
    for n, size in enumerate(sizes[1:], start=1):
        letter = letters[topic_of(DEVICES[1], n)]
        assert letter.reason == Reason.oversize
        assert letter.original == payloads[size][:PREVIEW_BYTES]
        assert letter.original_size == size
        assert letter.original_sha256 == hashlib.sha256(payloads[size]).hexdigest()
    # The empty payload is the processor's to judge (invalid_json); the next message is intact.
    assert [m.payload for _, m in raw_messages(kafka_bootstrap, topics.raw)] == [
        b"",
        payload(DEVICES[1], 9),
    ]
    bridge.terminate()


def test_two_bridges_share_the_load_through_a_shared_group(
    broker: MosquittoServer, kafka_bootstrap: str, topics: Topics, bridge_factory: BridgeFactory
) -> None:
    first = bridge_factory(client_id="bridge-a", BRIDGE_SHARED_GROUP="f2").start()
    second = bridge_factory(client_id="bridge-b", BRIDGE_SHARED_GROUP="f2").start()
    total = 2_000
    publish_round_robin(Publisher(broker.port), total)
    found = collect(
        kafka_bootstrap, topics.raw, lambda f: sum(f.values()) >= total, 60, "2,000 messages"
    )
    produced = [b.metric("f2pipe_bridge_produced_messages_total") for b in (first, second)]
    first.terminate()
    second.terminate()
    assert len(found) == total
    assert set(found.values()) == {1}  # each message lands once per delivery
    assert sum(produced) == total
    assert min(produced) > 0, f"one bridge carried everything: {produced}"


@pytest.mark.parametrize(
    ("client_id", "before", "after", "dropped"),
    [
        # A plain bridge joins a group: its session keeps stat/# and tele/# from its plain days.
        ("bridge-join", {}, {"BRIDGE_SHARED_GROUP": "join"}, ["stat/#", "tele/#"]),
        # A bridge goes back to plain filters: its session keeps the group's (which the broker
        # does not keep over a restart of its own).
        ("bridge-out", {"BRIDGE_SHARED_GROUP": "out"}, {"BRIDGE_FORMER_GROUP": "out"},
         ["$share/out/stat/#", "$share/out/tele/#"]),
    ],
    ids=["joins a group", "leaves its group"],
)  # fmt: skip
def test_a_bridge_whose_filters_changed_bridges_each_message_once(
    broker: MosquittoServer,
    kafka_bootstrap: str,
    topics: Topics,
    bridge_factory: BridgeFactory,
    client_id: str,
    before: dict[str, str],
    after: dict[str, str],
    dropped: list[str],
) -> None:
    # Beside the new filters the old ones would hand it every message twice. Each case its
    # own client id and group: the module's broker keeps every session that ever joined one.
    assert bridge_factory(client_id=client_id, **before).start().terminate() == 0
    bridge = bridge_factory(client_id=client_id, **after).start()
    total = 300
    publish_round_robin(Publisher(broker.port), total)
    wait_for(lambda: bridge.metric("f2pipe_bridge_acknowledged_total") >= total, 30, "acks")
    time.sleep(1)  # a second copy would come right behind the first
    assert bridge.metric("f2pipe_bridge_received_total") == total
    # The broker's UNSUBACK matched to the request that named them (by packet id).
    assert f"MQTT filters dropped from the session filters={dropped}" in bridge.log()
    assert bridge.terminate() == 0
    found = seqs(raw_messages(kafka_bootstrap, topics.raw, idle=2))
    assert len(found) == total
    assert set(found.values()) == {1}


def test_sigterm_flushes_acknowledges_and_exits_0(
    broker: MosquittoServer, kafka_bootstrap: str, topics: Topics, bridge_factory: BridgeFactory
) -> None:
    bridge = bridge_factory(client_id="bridge-term", BRIDGE_BATCH_LINGER_MS="5000").start()
    publish_seqs(Publisher(broker.port), DEVICES[1], 50)
    wait_for(lambda: bridge.metric("f2pipe_bridge_received_total") >= 50, 10, "50 received")
    # The batch is still lingering (5 s): SIGTERM must send it before exiting.
    assert bridge.terminate() == 0
    assert "bridge stopped" in bridge.log()
    found = seqs(raw_messages(kafka_bootstrap, topics.raw, idle=2))
    assert set(found) == {(DEVICES[1], s) for s in range(50)}


def test_bad_setting_stops_start_up_naming_the_variable(
    broker: MosquittoServer, bridge_factory: BridgeFactory
) -> None:
    bridge = bridge_factory(client_id="bridge-bad", BRIDGE_BATCH_MAX_MESSAGES="many").start(
        wait_healthy=False
    )
    assert bridge.proc is not None
    assert bridge.proc.wait(20) == 2
    assert "BRIDGE_BATCH_MAX_MESSAGES='many'" in bridge.log()


def test_bridge_over_mutual_tls_with_its_service_identity(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    production = Production.start(tmp_path, "f2-aabbccddee01", kafka_bootstrap, topics)
    cn, bridge = production.device.cn, production.bridge.start()
    try:
        publisher = production.publisher()
        publisher.publish(topic_of(cn, 1), payload(cn, 1))
        publisher.close()
        wait_for(lambda: bridge.metric("f2pipe_bridge_acknowledged_total") >= 1, 15, "1 ack")
        assert bridge.terminate() == 0
    finally:
        production.broker.stop()
    [(_, message)] = raw_messages(kafka_bootstrap, topics.raw, idle=1)
    assert message.topic == topic_of(cn, 1)
    assert message.payload == payload(cn, 1)


def test_messages_queued_for_the_bridge_survive_a_broker_restart(
    kafka_bootstrap: str, topics: Topics, bridge_factory: BridgeFactory, servers_dir: Path
) -> None:
    # Its own broker: restarting the module's shared one would disturb the other tests.
    broker = MosquittoServer(Path(tempfile.mkdtemp(dir=servers_dir)), config=BROKER_CONFIG)
    broker.start()
    try:
        env = bridge_env(broker.port, kafka_bootstrap, topics, "bridge-restart")
        bridge = BridgeProcess(env, Path(tempfile.mkdtemp(dir=servers_dir)) / "b.log")
        found = queued_across_a_broker_restart(
            broker, bridge, lambda: Publisher(broker.port), DEVICES[2], 500, kafka_bootstrap, topics
        )
    finally:
        broker.stop()
    assert set(found) == {(DEVICES[2], s) for s in range(500)}


def test_queued_messages_survive_a_restart_of_the_production_broker(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    production = Production.start(tmp_path, "f2-aabbccddee03", kafka_bootstrap, topics)
    cn, broker = production.device.cn, production.broker
    try:
        found = queued_across_a_broker_restart(
            broker, production.bridge, production.publisher, cn, 300, kafka_bootstrap, topics
        )
    finally:
        broker.stop()
    assert set(found) == {(cn, s) for s in range(300)}

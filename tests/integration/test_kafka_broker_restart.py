"""The Kafka broker restarted empty under running services, and topics of the wrong size.

Tansu keeps topics in memory: killed and started again it has no topic and no producer id.
Every service must stay up, create the topics again with the configured partition counts
(never the broker's auto-created default), say that records were lost, and carry on.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from f2pipe.migrate import apply_migrations
from f2pipe_devtools.servers import KafkaBroker, MissingBinaryError, MosquittoServer
from f2pipe_devtools.testkit.samples import Sample
from tests.conftest import missing
from tests.integration.bridgekit import (
    BridgeProcess,
    Publisher,
    Topics,
    bridge_env,
    raw_messages,
    wait_for,
)
from tests.integration.test_processor_worker import (
    PARTITIONS,
    TopicReader,
    Worker,
    fleet_stream,
    produce,
    start_worker,  # noqa: F401 (a fixture)
    worker_env,  # noqa: F401 (a fixture)
)
from tests.integration.test_sink import (
    Stack,
    assert_exactly,
    batch,
    count,
    make_readings,
    wait_until,
)

pytestmark = pytest.mark.integration

DEVICE = "f2-aabbccddee01"


def topic_partitions(bootstrap: str, names: list[str]) -> dict[str, int]:
    """name -> partitions of the topics the broker has."""
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    return {n: len(t.partitions) for n, t in metadata.topics.items() if n in names}


def all_topics(tansu: Tansu) -> set[str]:
    return set(AdminClient({"bootstrap.servers": tansu.bootstrap}).list_topics(timeout=10).topics)


def labelled_metric(port: int, name: str, **labels: str) -> float:
    wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[1])
    return 0.0


def publish(port: int, first: int, count: int) -> set[int]:
    publisher = Publisher(port, client_id=f"restart-publisher-{first}")
    for seq in range(first, first + count):
        body = json.dumps({"device": DEVICE, "seq": seq}).encode()
        publisher.publish(f"tele/{DEVICE}/sensor-mode/J3/sensor-1", body)
    publisher.close()
    return set(range(first, first + count))


def seqs_in(bootstrap: str, topic: str) -> set[int]:
    return {json.loads(m.payload)["seq"] for _, m in raw_messages(bootstrap, topic, idle=1)}


class Tansu:
    """A broker of the test's own that can be restarted empty on the same port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        try:
            self.server = KafkaBroker(root / "0").start()
        except MissingBinaryError as exc:
            missing(exc)

    @property
    def bootstrap(self) -> str:
        return self.server.bootstrap_servers

    def restart_empty(self) -> None:
        self.server.stop()
        self.generation += 1
        self.server = KafkaBroker(self.root / str(self.generation), port=self.server.port).start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def tansu(servers_dir: Path) -> Iterator[Tansu]:
    broker = Tansu(Path(tempfile.mkdtemp(dir=servers_dir)))
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto(servers_dir: Path) -> Iterator[MosquittoServer]:
    try:
        server = MosquittoServer(
            Path(tempfile.mkdtemp(dir=servers_dir)),
            config="listener {port} {host}\nallow_anonymous true\nmax_queued_messages 100000\n",
        )
    except MissingBinaryError as exc:
        missing(exc)
    with server:
        yield server


def test_bridge_survives_the_broker_restarting_empty(
    tansu: Tansu, mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    topics = Topics.unique()
    env = bridge_env(mosquitto.port, tansu.bootstrap, topics, "bridge-kafka-restart")
    bridge = BridgeProcess(env, tmp_path / "bridge.log").start()
    try:
        before = publish(mosquitto.port, 0, 200)
        wait_for(lambda: seqs_in(tansu.bootstrap, topics.raw) >= before, 60, "the first 200")

        tansu.restart_empty()
        time.sleep(1)  # the bridge notices while nothing is sent, too
        after = publish(mosquitto.port, 1000, 200)
        wait_for(
            lambda: seqs_in(tansu.bootstrap, topics.raw) >= after,
            90,
            f"the 200 published after the restart:\n{bridge.log()}",
        )
        assert bridge.proc is not None
        assert bridge.proc.poll() is None, bridge.log()
        # Created again with KAFKA_RAW_PARTITIONS=3 (bridge_env), not Tansu's default of 4.
        assert topic_partitions(tansu.bootstrap, [topics.raw, topics.dlq]) == {
            topics.raw: 3,
            topics.dlq: 6,
        }
        lost = "f2pipe_bridge_kafka_topics_lost_total"
        assert labelled_metric(bridge.metrics_port, lost, topic=topics.raw) >= 1
        assert "Kafka lost topic(s)" in bridge.log()
        assert bridge.terminate() == 0
    finally:
        if bridge.proc is not None and bridge.proc.poll() is None:
            bridge.kill()


def test_bridge_refuses_a_raw_topic_of_another_partition_count(
    tansu: Tansu, mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    topics = Topics.unique()
    admin = AdminClient({"bootstrap.servers": tansu.bootstrap})
    for future in admin.create_topics([NewTopic(topics.raw, 4, 1)]).values():
        future.result(10)
    env = bridge_env(mosquitto.port, tansu.bootstrap, topics, "bridge-wrong-partitions")
    bridge = BridgeProcess(env, tmp_path / "bridge.log").start(wait_healthy=False)
    assert bridge.proc is not None
    assert bridge.proc.wait(60) == 2
    assert f"topic {topics.raw} has 4 partitions, configured 3 (KAFKA_RAW_PARTITIONS)" in (
        bridge.log()
    )


def test_sink_survives_the_broker_restarting_empty(
    tansu: Tansu, pg_conninfo: str, tmp_path: Path
) -> None:
    apply_migrations(pg_conninfo)
    stack = Stack(tansu.bootstrap, pg_conninfo, tmp_path)
    stack.create_topics()
    no_auto_create = {"allow.auto.create.topics": False}
    try:
        proc = stack.start()
        first = make_readings(100)
        stack.produce([(0, batch(first)), (1, b"\x93garbage")], **no_auto_create)
        wait_until(lambda: count(pg_conninfo) == 100, 30, "the first readings", proc)
        assert len(stack.dead_letters(1)) == 1

        tansu.restart_empty()
        names = [stack.topic, stack.dlq]
        wanted = {stack.topic: stack.partitions, stack.dlq: stack.partitions}
        wait_until(
            lambda: topic_partitions(tansu.bootstrap, names) == wanted,
            30,
            "the sink to create its topics again with KAFKA_PROCESSED_PARTITIONS",
            proc,
        )
        second = make_readings(100)
        stack.produce([(2, batch(second)), (0, b"\x93more garbage")], **no_auto_create)
        wait_until(lambda: count(pg_conninfo) == 200, 60, "the readings after the restart", proc)
        letters = stack.dead_letters(1, timeout=60)
        assert [letter.original for _, letter in letters] == [b"\x93more garbage"]
        assert proc.poll() is None
        lost = "f2pipe_sink_kafka_topics_lost_total"
        assert labelled_metric(stack.port, lost, topic=stack.topic) >= 1
        assert_exactly(pg_conninfo, first + second)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, stack.logs()
    finally:
        for started in stack.procs:
            if started.poll() is None:
                started.kill()
                started.wait(10)


@pytest.fixture
def kafka_bootstrap(tansu: Tansu) -> str:
    """This module's broker for the fixtures of test_processor_worker (worker_env)."""
    return tansu.bootstrap


@pytest.mark.usefixtures("worker_env", "start_worker")
def test_processor_survives_the_broker_restarting_empty(
    tansu: Tansu, request: pytest.FixtureRequest
) -> None:
    env: dict[str, str] = request.getfixturevalue("worker_env")
    start: Callable[[str], Worker] = request.getfixturevalue("start_worker")
    raw, processed = env["KAFKA_RAW_TOPIC"], env["KAFKA_PROCESSED_TOPIC"]
    _, stream = fleet_stream(env, seconds_ago=60, seed=11)
    worker = start("processor")

    def processed_all(samples: list[Sample], what: str) -> None:
        reader = TopicReader(tansu.bootstrap, processed)
        expected = {
            (r.timestamp_us, r.device_id, r.datapoint_id) for s in samples for r in s.readings
        }
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and expected - reader.readings().keys():
                assert worker.proc is not None
                assert worker.proc.poll() is None, worker.tail()
                reader.poll(0.5)
            assert not expected - reader.readings().keys(), f"{what}:\n{worker.tail()}"
        finally:
            reader.close()

    producer = Producer({"bootstrap.servers": tansu.bootstrap, "allow.auto.create.topics": False})
    before = [next(stream) for _ in range(60)]
    produce(producer, raw, before)
    assert producer.flush(30) == 0
    processed_all(before, "the readings before the restart")
    # Faust's own topics, created after the processor's topic watch started, are new, not
    # lost: no false alarm on a first start.
    lost = "f2pipe_processor_kafka_topics_lost_total"
    port, leader = int(env["METRICS_PORT"]), f"{env['PROCESSOR_APP_ID']}-__assignor-__leader"
    assert "Kafka lost topic(s)" not in worker.log.read_text(), worker.tail()
    assert labelled_metric(port, lost, topic=leader) == 0

    tansu.restart_empty()
    names = [raw, processed, env["KAFKA_DEADLETTER_TOPIC"]]
    wanted = dict.fromkeys(names, PARTITIONS)
    wait_for(
        lambda: topic_partitions(tansu.bootstrap, names) == wanted,
        60,
        f"the topics again, with {PARTITIONS} partitions each",
    )
    after = [next(stream) for _ in range(60)]
    producer = Producer({"bootstrap.servers": tansu.bootstrap, "allow.auto.create.topics": False})
    produce(producer, raw, after)
    assert producer.flush(30) == 0
    processed_all(after, "the readings after the restart")
    assert topic_partitions(tansu.bootstrap, names) == wanted
    # Faust's own topics come back as Faust declared them, not with the broker's count: no
    # client of the processor creates a topic by naming it (faust_adapter).
    app_id = env["PROCESSOR_APP_ID"]
    faust_topics = {n: c for n, c in topic_partitions(tansu.bootstrap, list(all_topics(tansu)))
                    .items() if n.startswith(app_id)}  # fmt: skip
    changelogs = {n: c for n, c in faust_topics.items() if n.endswith("-changelog")}
    assert changelogs, faust_topics
    assert set(changelogs.values()) == {PARTITIONS}, faust_topics
    assert faust_topics.get(f"{app_id}-__assignor-__leader") == 1, faust_topics
    assert labelled_metric(port, lost, topic=raw) >= 1  # a real loss is still one
    assert worker.stop() == 0


@pytest.mark.usefixtures("worker_env")
def test_processor_refuses_a_raw_topic_of_another_partition_count(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    env = {**request.getfixturevalue("worker_env"), "KAFKA_RAW_PARTITIONS": "4"}
    with (tmp_path / "processor.log").open("wb") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "f2pipe", "processor"],
            env=env, stdout=log, stderr=subprocess.STDOUT, timeout=60, check=False,
        )  # fmt: skip
    output = (tmp_path / "processor.log").read_text()
    assert proc.returncode == 2, output
    raw = env["KAFKA_RAW_TOPIC"]
    assert f"topic {raw} has {PARTITIONS} partitions, configured 4 (KAFKA_RAW_PARTITIONS)" in output

"""`f2pipe processor` as a real process: Faust worker, kill -9, /latest, /healthz, /metrics."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from f2pipe.migrate import apply_migrations
from f2pipe.seed import seed_demo
from f2pipe_devtools.env import kafka_env, postgres_env, redis_env, service_env
from f2pipe_devtools.servers import RedisServer, free_port
from f2pipe_devtools.testkit.samples import Sample, Slot, load_fleet, samples
from f2pipe_shared.deadletters import PREVIEW_BYTES, DeadLetter, Reason
from f2pipe_shared.records import ProcessedBatch, decode_processed_batch, encode_raw_batch
from tests.integration.certgen_harness import metric

pytestmark = pytest.mark.integration

PARTITIONS = 3
ReadingKey = tuple[int, int, int]  # timestamp_us, device id, datapoint id


@pytest.fixture
def worker_env(
    pg_conninfo: str, redis_server: RedisServer, kafka_bootstrap: str, tmp_path: Path
) -> dict[str, str]:
    apply_migrations(pg_conninfo)
    seed_demo(pg_conninfo, 8)
    suffix = uuid.uuid4().hex[:8]
    # Every topic exists with PARTITIONS before any client touches it: a producer or a
    # reader racing the worker's own creation must not auto-create one with the broker's
    # default count (the reader reads partitions 0..PARTITIONS-1 only).
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    names = [f"raw-{suffix}", f"processed-{suffix}", f"dlq-{suffix}"]
    futures = admin.create_topics([NewTopic(n, num_partitions=PARTITIONS) for n in names])
    for future in futures.values():
        future.result(30)
    return service_env(
        postgres_env(pg_conninfo),
        redis_env(redis_server.host, redis_server.port, redis_server.password),
        kafka_env(
            kafka_bootstrap,
            raw=f"raw-{suffix}",
            processed=f"processed-{suffix}",
            dead_letters=f"dlq-{suffix}",
            partitions=PARTITIONS,
        ),
        PROCESSOR_APP_ID=f"processor-{suffix}",
        PROCESSOR_REDIS_PREFIX=f"test:{suffix}:",
        PROCESSOR_DATA_DIR=str(tmp_path / "faust"),
        PROCESSOR_COMMIT_INTERVAL_SECONDS="0.5",
        METRICS_HOST="127.0.0.1",
        METRICS_PORT=str(free_port()),
        LOG_FORMAT="text",
        CONNINFO=pg_conninfo,
    )


class Worker:
    """One `python -m f2pipe processor` process (or ``command``), its log in a file."""

    def __init__(self, env: dict[str, str], log: Path, command: list[str] | None = None) -> None:
        self.env = env
        self.log = log
        self.command = command or [sys.executable, "-m", "f2pipe", "processor"]
        self.base = f"http://127.0.0.1:{env['METRICS_PORT']}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_within: float = 60) -> Worker:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.tail()
            status, _ = self.get("/healthz")
            if status == 200:
                return self
            time.sleep(0.2)
        raise AssertionError(f"processor not healthy within {ready_within} s:\n{self.tail()}")

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as response:
                body = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read().decode(), exc.code
        except OSError:
            return 0, None
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"no exit within 30 s of SIGTERM:\n{self.tail()}") from None
        return self.proc.returncode

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def start_worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Starts a worker on `worker_env`, its log in <name>.log; kills what a test left running."""
    started: list[Worker] = []

    def start(name: str, command: list[str] | None = None) -> Worker:
        worker = Worker(worker_env, tmp_path / f"{name}.log", command)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(10)


class TopicReader:
    """Reads every partition of a topic from the start, incrementally."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
            }
        )
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        self.batches: list[ProcessedBatch] = []

    def poll(self, seconds: float = 0.5) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for message in self.consumer.consume(500, 0.1):
                value = message.value()
                if message.error() is None and value is not None:
                    self.batches.append(decode_processed_batch(value))

    def readings(self) -> dict[ReadingKey, float]:
        return {
            (r.timestamp_us, r.device_id, r.datapoint_id): r.value
            for batch in self.batches
            for r in batch.readings
        }

    def close(self) -> None:
        self.consumer.close()


def partition_of(sample: Sample) -> int:
    """The bridge's rule: a stable hash of the MAC, so a device stays on one partition."""
    mac = sample.message.topic.split("/")[1]
    return zlib.crc32(mac.encode()) % PARTITIONS


def fleet_stream(
    env: dict[str, str], *, seconds_ago: int, seed: int
) -> tuple[list[Slot], Iterator[Sample]]:
    """The seeded fleet, and samples of it from `seconds_ago` on, 100 µs apart."""
    fleet = load_fleet(env["CONNINFO"])
    start_us = int(time.time() * 1e6) - seconds_ago * 1_000_000
    return fleet, samples(fleet, start_us, random.Random(seed), step_us=100)


def produce(producer: Producer, topic: str, batch: list[Sample]) -> None:
    by_partition: dict[int, list[Sample]] = {}
    for sample in batch:
        by_partition.setdefault(partition_of(sample), []).append(sample)
    for partition, group in by_partition.items():
        value = encode_raw_batch([s.message for s in group])
        producer.produce(topic, value=value, partition=partition)
    producer.poll(0)


def test_kill_9_mid_stream_loses_no_reading_and_latest_is_served(
    worker_env: dict[str, str], start_worker: Callable[[str], Worker]
) -> None:
    env = worker_env
    fleet, stream = fleet_stream(env, seconds_ago=120, seed=11)
    producer = Producer({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"], "linger.ms": 5})
    sent: list[Sample] = []
    stop_sending = threading.Event()

    def send_steadily() -> None:
        # Keeps going while the processor is killed and restarted: mid-stream means that.
        while not stop_sending.is_set():
            batch = [next(stream) for _ in range(60)]
            produce(producer, env["KAFKA_RAW_TOPIC"], batch)
            sent.extend(batch)
            time.sleep(0.03)
        producer.flush(10)

    first = start_worker("processor-1")
    sender = threading.Thread(target=send_steadily, daemon=True)
    sender.start()
    reader = TopicReader(env["KAFKA_BOOTSTRAP_SERVERS"], env["KAFKA_PROCESSED_TOPIC"])
    try:
        deadline = time.monotonic() + 30
        while len(reader.batches) < 30 and time.monotonic() < deadline:
            reader.poll(0.2)
        assert len(reader.batches) >= 30, first.tail()
        first.kill()  # SIGKILL: no commit, no flush, nothing graceful
        killed_at = len(sent)
        time.sleep(1.0)

        second = start_worker("processor-2")
        time.sleep(2.0)
        stop_sending.set()
        sender.join(15)
        assert len(sent) > killed_at  # messages arrived while no processor ran

        expected = {
            (r.timestamp_us, r.device_id, r.datapoint_id): r.value for s in sent for r in s.readings
        }
        deadline = time.monotonic() + 60
        missing = expected.keys() - reader.readings().keys()
        while missing and time.monotonic() < deadline:
            reader.poll(0.5)
            missing = expected.keys() - reader.readings().keys()
        processed = env["KAFKA_PROCESSED_TOPIC"]
        per_partition = {p: reader.consumer.get_watermark_offsets(TopicPartition(processed, p), 5)
                         for p in range(PARTITIONS)}  # fmt: skip
        assert not missing, (f"{len(missing)} of {len(expected)} readings missing "
                             f"(processed watermarks {per_partition}):\n{first.tail()}\n"
                             f"{second.tail()}")  # fmt: skip
        got = reader.readings()
        assert all(got[k] == v for k, v in expected.items())
        total_readings = sum(len(b.readings) for b in reader.batches)
        assert total_readings >= len(expected)  # at least once (duplicates after the kill)

        # /latest/<device_id>: the newest value of every datapoint of a device.
        device = next(s for s in fleet if s.stem == "sensor")
        newest: dict[int, tuple[int, float]] = {}
        for sample in sent:
            for r in sample.readings:
                if r.device_id == device.device_id:
                    newest[r.datapoint_id] = (r.timestamp_us, r.value)
        status, body = second.get(f"/latest/{device.device_id}")
        assert status == 200, body
        served = {p["datapoint_id"]: (p["timestamp_us"], p["value"]) for p in body["datapoints"]}
        assert served == newest
        frame_keys = {"temperature", "humidity", "co2", "voltage", "current", "power"}
        assert {p["key"] for p in body["datapoints"]} <= frame_keys
        assert second.get("/latest/999999999")[0] == 404
        assert second.get("/latest/abc")[0] == 400
        # None of Faust's own views: cluster URLs, table data, its index.
        for path in ("/router/", "/router/topics", "/table/", "/table/latest/1/", "/"):
            assert second.get(path)[0] == 404, path

        status, health = second.get("/healthz")
        assert status == 200
        assert health["status"] == "ok"
        assert health["listener"] == "listening"
        status, text = second.get("/metrics")
        assert status == 200
        assert "f2pipe_processor_readings_total" in text
        assert 'f2pipe_processor_cache_lookups_total{layer="memory",result="hit"}' in text
        assert "f2pipe_processor_faust_" in text  # Faust's own sensor
        # The restart bug of faust_adapter.py was prevented, not merely caught.
        assert "f2pipe_processor_skipped_by_faust_total 0.0" in text
        assert second.stop() == 0
    finally:
        stop_sending.set()
        reader.close()


def test_a_raw_record_too_large_to_dead_letter_whole_does_not_stop_the_worker(
    worker_env: dict[str, str], start_worker: Callable[[str], Worker]
) -> None:
    env = worker_env
    _, stream = fleet_stream(env, seconds_ago=60, seed=5)
    good = [next(stream) for _ in range(40)]
    poison = bytes(range(256)) * 4100  # 1,049,600 bytes: over Kafka's default record limit
    producer = Producer(
        {"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"], "message.max.bytes": 2_000_000}
    )
    for partition in range(PARTITIONS):
        producer.produce(env["KAFKA_RAW_TOPIC"], value=poison, partition=partition)
    produce(producer, env["KAFKA_RAW_TOPIC"], good)
    assert producer.flush(30) == 0

    worker = start_worker("processor")
    reader = TopicReader(env["KAFKA_BOOTSTRAP_SERVERS"], env["KAFKA_PROCESSED_TOPIC"])
    letters = Consumer({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"],
                        "group.id": f"dlq-{uuid.uuid4().hex[:6]}"})  # fmt: skip
    letters.assign([TopicPartition(env["KAFKA_DEADLETTER_TOPIC"], p, 0) for p in range(PARTITIONS)])
    try:
        expected = {(r.timestamp_us, r.device_id, r.datapoint_id) for s in good for r in s.readings}
        found: list[DeadLetter] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            len(found) < PARTITIONS or expected - reader.readings().keys()
        ):
            reader.poll(0.2)
            for m in letters.consume(100, 0.2):
                if m.error() is None:
                    headers = cast(list[tuple[str, bytes | None]], m.headers() or [])
                    found.append(DeadLetter.from_kafka(m.value(), headers))
        assert not expected - reader.readings().keys(), worker.tail()
        assert [d.reason for d in found] == [Reason.bad_batch] * PARTITIONS
        for letter in found:
            assert letter.original == poison[:PREVIEW_BYTES]
            assert letter.original_size == len(poison)
            assert letter.original_sha256 == hashlib.sha256(poison).hexdigest()
        assert worker.proc is not None
        assert worker.proc.poll() is None
        assert worker.get("/healthz")[0] == 200
        assert worker.stop() == 0
    finally:
        reader.close()
        letters.close()


def worker_group(env: dict[str, str]) -> Consumer:
    """A client of the worker's consumer group that never joins it: its committed offsets."""
    return Consumer(
        {
            "bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"],
            "group.id": env["PROCESSOR_APP_ID"],
            "enable.auto.commit": False,
        }
    )


def committed(group: Consumer, topic: str) -> dict[int, int]:
    tps = group.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], 10)
    return {tp.partition: tp.offset for tp in tps}


def test_a_raw_topic_written_in_transactions_is_committed_past_its_markers(
    worker_env: dict[str, str], start_worker: Callable[[str], Worker]
) -> None:
    """A transactional writer (a mirror, an exactly-once job) leaves a commit marker after
    each transaction: an offset no consumer is handed. The worker sees a hole there, reads it
    again, finds it empty again and commits past it. It used to leave every such hole
    uncommitted for a restart that could not help: commits stopped at the first marker, and
    /healthz asked for a restart for ever."""
    env = worker_env
    raw = env["KAFKA_RAW_TOPIC"]
    _, stream = fleet_stream(env, seconds_ago=60, seed=17)
    producer = Producer({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"],
                         "transactional.id": f"mirror-{uuid.uuid4().hex[:6]}"})  # fmt: skip
    producer.init_transactions(30)
    sent: list[Sample] = []
    touched = dict.fromkeys(range(PARTITIONS), 0)  # transactions per partition
    for _ in range(5):
        batch = [next(stream) for _ in range(30)]
        producer.begin_transaction()
        produce(producer, raw, batch)
        producer.commit_transaction(30)
        sent.extend(batch)
        for partition in {partition_of(s) for s in batch}:
            touched[partition] += 1
    # One record and one marker per transaction and partition: records at 0, 2, 4... The
    # markers followed by a record are holes (the last one ends the log), but for the one at
    # 1: Faust tests the offset read last for truth, so after offset 0 it sees no gap (and
    # needs to see none: the commit after offset 0 lands just before that marker).
    holes = sum(max(0, n - 2) for n in touched.values())
    assert holes >= 3

    worker = start_worker("processor")
    reader = TopicReader(env["KAFKA_BOOTSTRAP_SERVERS"], env["KAFKA_PROCESSED_TOPIC"])
    group = worker_group(env)
    try:
        expected = {(r.timestamp_us, r.device_id, r.datapoint_id) for s in sent for r in s.readings}
        ends = {p: group.get_watermark_offsets(TopicPartition(raw, p), 10)[1]
                for p in range(PARTITIONS)}  # fmt: skip
        offsets: dict[int, int] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            reader.poll(0.2)
            offsets = committed(group, raw)
            # The last record of a partition is just before its last marker.
            done = all(offsets[p] >= ends[p] - 1 for p in range(PARTITIONS) if touched[p])
            if done and not expected - reader.readings().keys():
                break
        assert not expected - reader.readings().keys(), worker.tail()
        assert all(offsets[p] >= ends[p] - 1 for p in range(PARTITIONS) if touched[p]), (
            f"commits stopped at {offsets}, ends {ends}:\n{worker.tail()}"
        )
        status, text = worker.get("/metrics")
        assert metric(text, "f2pipe_processor_offsets_without_records_total") == holes
        assert metric(text, "f2pipe_processor_holes_total", outcome="no_records") == holes
        assert metric(text, "f2pipe_processor_holes_total", outcome="left") == 0
        status, health = worker.get("/healthz")
        assert status == 200, health
        assert "skipped_by_faust" not in health
        assert worker.stop() == 0
    finally:
        reader.close()
        group.close()


# The worker, with its fetch losing one record the way Faust's restart bug did (faust_adapter
# docstring): aiokafka's position moves past it, and Faust is never handed it.
LOSES_ONE_FETCHED_RECORD = """
import sys
from f2pipe.cli import main
from f2pipe_processor import faust_adapter

base = faust_adapter.ShortFetchConsumerThread._fetch_records
lost = []

async def losing(self, consumer, active, timeout=None, max_records=None):
    records = await base(self, consumer, active, timeout=timeout, max_records=max_records)
    for tp, batch in list(records.items()):
        if not lost and tp.topic == sys.argv[1] and tp.partition == 0:
            kept = [r for r in batch if r.offset != 3]
            if len(kept) < len(batch):
                lost.append(tp)
                print("the fetch lost offset 3 of partition 0", flush=True)
                if kept:
                    records[tp] = kept
                else:
                    del records[tp]
    return records

faust_adapter.ShortFetchConsumerThread._fetch_records = losing
raise SystemExit(main(["processor"]))
"""


def test_a_record_the_consumer_skipped_is_read_again_and_processed(
    worker_env: dict[str, str], start_worker: Callable[..., Worker]
) -> None:
    """One fetched record of partition 0 never reaches Faust (as with the restart bug):
    the worker sees the hole at the next record, seeks back to it, processes it, and commits
    to the end. It used to leave the hole uncommitted and /healthz at 503 until a restart."""
    env = worker_env
    raw = env["KAFKA_RAW_TOPIC"]
    _, stream = fleet_stream(env, seconds_ago=60, seed=23)
    producer = Producer({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"]})
    sent: list[Sample] = []
    records = 0
    while records < 6:  # six records in partition 0, offsets 0-5 (one per produce)
        batch = [s for s in (next(stream) for _ in range(30)) if partition_of(s) == 0]
        if batch:
            produce(producer, raw, batch)
            sent.extend(batch)
            records += 1
    assert producer.flush(30) == 0
    command = [sys.executable, "-c", LOSES_ONE_FETCHED_RECORD, raw]
    worker = start_worker("processor", command)
    reader = TopicReader(env["KAFKA_BOOTSTRAP_SERVERS"], env["KAFKA_PROCESSED_TOPIC"])
    group = worker_group(env)
    try:
        expected = {(r.timestamp_us, r.device_id, r.datapoint_id) for s in sent for r in s.readings}
        last = -1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            reader.poll(0.2)
            last = committed(group, raw)[0]
            if last >= 6 and not expected - reader.readings().keys():
                break
        assert "the fetch lost offset 3" in worker.tail(200)  # the fault did happen
        assert not expected - reader.readings().keys(), worker.tail()
        assert last >= 6, f"commits stopped at {last}:\n{worker.tail()}"
        status, text = worker.get("/metrics")
        assert metric(text, "f2pipe_processor_skipped_by_faust_total") == 1
        assert metric(text, "f2pipe_processor_holes_total", outcome="healed") == 1
        assert metric(text, "f2pipe_processor_offsets_without_records_total") == 0
        status, health = worker.get("/healthz")
        assert status == 200, health
        assert worker.stop() == 0
    finally:
        reader.close()
        group.close()

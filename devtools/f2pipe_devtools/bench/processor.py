"""The processor: decoded readings/s of one worker, the cost split, and the alternatives.

Starts its own PostgreSQL (a seeded demo fleet), Redis and Kafka-protocol broker, as the
tests do. Batches are what the bridge sends: 500 MQTT messages of one partition's
controllers, mostly RS-485 frames (every sensor every 30 s) with door, motion, strike and
reader messages in between.

Measured:
- the per-batch core (``BatchProcessor.process`` + output encoding), everything cached;
- each stage alone: parse, lookup (memory), decode, produce (encode + librdkafka delivery);
- cache misses through Redis (pipelined, one round trip per batch) and PostgreSQL (one
  query per batch), next to the seed-style one Redis GET per message;
- end to end: a real ``f2pipe processor`` (Faust) worker draining raw-iot-data into
  processed-iot-data through the broker.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from confluent_kafka import Consumer, Producer, TopicPartition

from f2pipe.migrate import apply_migrations
from f2pipe.seed import seed_demo
from f2pipe_devtools.bench.report import Measurement, Report
from f2pipe_devtools.env import kafka_env, postgres_env, redis_env, service_env
from f2pipe_devtools.servers import KafkaBroker, PostgresServer, RedisServer, free_port
from f2pipe_devtools.testkit.samples import Slot, load_fleet, make_sample
from f2pipe_processor.core import BatchProcessor
from f2pipe_processor.decoder import TimestampWindow, decode_messages, parse_messages
from f2pipe_processor.metrics import ProcessorMetrics
from f2pipe_processor.output import KafkaOutput, output_records
from f2pipe_processor.registry import CompiledTemplate, Registry
from f2pipe_processor.resolver import RedisCache, Resolver
from f2pipe_shared.decoding import frame_data, parse_hex_frame
from f2pipe_shared.kafka import ensure_topics, pipeline_topics
from f2pipe_shared.records import (
    RawMessage,
    decode_processed_batch,
    decode_raw_batch,
    encode_raw_batch,
)
from f2pipe_shared.settings import KafkaSettings

CONTROLLERS = 500  # 6,000 devices on pins: most messages of a batch are distinct devices
PARTITIONS = 6
BATCH = 500
BATCHES = 24
END_TO_END_BATCHES = 120  # 60,000 messages per end-to-end run
YEAR_S = 365 * 86_400.0


def run(report: Report, repeats: int, min_seconds: float) -> None:
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="f2pipe-bench-")))
        root.chmod(0o755)  # PostgreSQL runs as `postgres` when we are root
        pg = stack.enter_context(PostgresServer(root / "postgres"))
        cache = stack.enter_context(RedisServer(root / "redis"))
        kafka = stack.enter_context(KafkaBroker(root / "kafka"))
        conninfo = pg.create_database("bench")
        apply_migrations(conninfo)
        seed_demo(conninfo, CONTROLLERS)
        fleet = load_fleet(conninfo)
        batches = realistic_batches(fleet, BATCHES, random.Random(1))
        bench = InProcess(conninfo, cache.url, kafka.bootstrap_servers, batches)
        bench.fleet = fleet
        asyncio.run(bench.run(report, repeats, min_seconds))
        end_to_end(
            report,
            conninfo,
            cache,
            kafka.bootstrap_servers,
            fleet=fleet,
            root=root,
            repeats=repeats,
        )


def realistic_batches(fleet: list[Slot], count: int, rng: random.Random) -> list[bytes]:
    """``count`` raw records of ``BATCH`` messages, each from one partition's controllers."""
    by_partition: dict[int, list[Slot]] = {}
    for slot in fleet:
        by_partition.setdefault(partition_of(slot.mac), []).append(slot)
    now = int(time.time() * 1e6)
    records = []
    for i in range(count):
        slots = by_partition[i % PARTITIONS]
        # Sensors report every 30 s; doors, buttons, motion and readers now and then.
        weights = [1.0 if s.stem == "sensor" else 0.1 for s in slots]
        chosen = rng.choices(slots, weights, k=BATCH)
        messages = [make_sample(s, now - 10_000_000 + j, rng).message for j, s in enumerate(chosen)]
        records.append(encode_raw_batch(messages))
    return records


def partition_of(mac: str) -> int:
    return zlib.crc32(mac.encode()) % PARTITIONS


class InProcess:
    """One worker's per-batch work without Faust, on one event loop."""

    def __init__(self, conninfo: str, redis_url: str, bootstrap: str, batches: list[bytes]):
        self.conninfo = conninfo
        self.redis_url = redis_url
        self.bootstrap = bootstrap
        self.batches = batches
        self.raws = [decode_raw_batch(b) for b in batches]
        self.messages = sum(len(m) for m in self.raws)
        self.metrics = ProcessorMetrics()
        self.registry = Registry(conninfo, metrics=self.metrics)
        self.cache = RedisCache(redis_url, "bench:", 3600, 5.0, metrics=self.metrics)
        self.resolver = Resolver(self.registry, self.cache, metrics=self.metrics)
        self.processor = BatchProcessor(self.resolver, "raw", 600, YEAR_S, metrics=self.metrics)
        self.fleet: list[Slot] = []

    async def run(self, report: Report, repeats: int, min_seconds: float) -> None:
        self.report, self.repeats, self.min_seconds = report, repeats, min_seconds
        try:
            core = await self.core()
            await self.ceiling(core)
            await self.stages()
            await self.misses()
            await self.seed_style()
        finally:
            await self.cache.close()
            await self.registry.close()

    async def add(
        self, name: str, unit: str, fn: Callable[[], Awaitable[None]], items: int, note: str
    ) -> list[float]:
        runs = await timed(fn, items, self.repeats, self.min_seconds)
        self.report.add(Measurement(name, unit, runs, note))
        return runs

    async def core(self) -> list[float]:
        readings = 0
        for value in self.batches:  # warms every layer
            readings += len((await self.processor.process(0, 0, value)).processed.readings)
        per_message = readings / self.messages

        async def core() -> None:
            for value in self.batches:
                output_records(await self.processor.process(0, 0, value), "processed", "dlq")

        note = f"BatchProcessor.process + output encoding, {BATCH}/batch"
        runs = await self.add("core, all cached", "messages/s", core, self.messages, note)
        readings_runs = [r * per_message for r in runs]
        note = f"{per_message:.2f} readings per message"
        self.report.add(Measurement("core, all cached", "readings/s", readings_runs, note))
        return runs

    async def ceiling(self, core: list[float]) -> None:
        """The floor of the work: json.loads and the shared frame decoder in a loop."""
        table = {}
        for slot in self.fleet:
            template = CompiledTemplate.compile(slot.template) if slot.template else None
            if template and template.decode and template.frame_format:
                table[slot.topic()] = (template.decode, template.frame_format, template.verify_crc)
        messages = [m for raw in self.raws for m in raw]

        async def plain() -> None:
            for m in messages:
                doc = json.loads(m.payload)
                entry = table.get(m.topic)
                if entry is not None:
                    decode, frame_format, crc = entry
                    decode(frame_data(parse_hex_frame(doc["data"]), frame_format, verify_crc=crc))

        note = "json.loads + frame decode per message: no checks, lookups or output"
        runs = await self.add("ceiling: plain JSON + decode loop", "messages/s", plain,
                              self.messages, note)  # fmt: skip
        ratio = median(core) / median(runs)
        self.report.add(Measurement("core / plain loop", "ratio", [ratio], "same run"))

    async def stages(self) -> None:
        window = TimestampWindow.around(int(time.time() * 1e6), 600, YEAR_S)
        parses = [parse_messages(m, window) for m in self.raws]
        lookups = [await self.resolver.resolve(p.topics) for p in parses]
        results = [await self.processor.process(0, i, v) for i, v in enumerate(self.batches)]
        settings = KafkaSettings(kafka_bootstrap_servers=self.bootstrap)
        topic = f"bench-processed-{uuid.uuid4().hex[:6]}"
        ensure_topics(settings, {topic: PARTITIONS, topic + "-dlq": PARTITIONS})
        output = KafkaOutput(settings, self.metrics)

        async def parse() -> None:
            for m in self.raws:
                parse_messages(m, window)

        async def lookup() -> None:
            for p in parses:
                await self.resolver.resolve(p.topics)

        async def decode() -> None:
            for p, found in zip(parses, lookups, strict=True):
                decode_messages(p.parsed, found.locations, found.templates)

        async def produce() -> None:
            # As the agent does: deliveries overlap, each awaited before its record's ack.
            await asyncio.gather(
                *(output.deliver(output_records(r, topic, topic + "-dlq")) for r in results)
            )

        stages = {
            "parse (topic, JSON, timestamp)": parse,
            "lookup, all in memory": lookup,
            "decode (frames, states, events)": decode,
            "produce (encode + librdkafka ack)": produce,
        }
        split = {
            name: await timed(fn, self.messages, self.repeats, self.min_seconds)
            for name, fn in stages.items()
        }
        output.close()
        total_us = sum(1e6 / median(runs) for runs in split.values())
        for name, runs in split.items():
            us = 1e6 / median(runs)
            note = f"{us:.2f} us/message, {us / total_us:.0%} of the four"
            self.report.add(Measurement(f"stage: {name}", "messages/s", runs, note))

    async def misses(self) -> None:
        """Every distinct topic of a batch looked up together, per layer."""
        window = TimestampWindow.around(int(time.time() * 1e6), 600, YEAR_S)
        distinct = [parse_messages(m, window).topics for m in self.raws]
        keys = sum(len(t) for t in distinct)
        postgres_only = Registry(self.conninfo, metrics=self.metrics)
        no_redis = Resolver(postgres_only, None, metrics=self.metrics)

        async def via_redis() -> None:
            for topics in distinct:
                self.resolver._locations.clear()  # memory misses; Redis holds them all
                self.resolver._templates.clear()
                await self.resolver.resolve(topics)

        async def via_postgres() -> None:
            for topics in distinct:
                no_redis._locations.clear()
                no_redis._templates.clear()
                await no_redis.resolve(topics)

        per_batch = keys // len(distinct)
        note = f"pipelined HMGET per controller, {per_batch} distinct topics/batch"
        await self.add("lookup misses via Redis", "keys/s", via_redis, keys, note)
        note = "one query per batch (Redis down, or cold)"
        await self.add("lookup misses via PostgreSQL", "keys/s", via_postgres, keys, note)
        await postgres_only.close()

    async def seed_style(self) -> None:
        """The alternative the issue names: one Redis round trip per message."""
        client = aioredis.Redis.from_url(self.redis_url)
        keys = [f"bench:device:{m.topic}" for m in self.raws[0]]
        await client.mset(dict.fromkeys(keys, b"[1234, 56, 7, 8]"))

        async def get_per_message() -> None:
            for key in keys:
                await client.get(key)

        note = "the lookup alone, before any decoding"
        name = "seed-style: one Redis GET per message"
        await self.add(name, "messages/s", get_per_message, len(keys), note)
        await client.aclose()


async def timed(
    fn: Callable[[], Awaitable[None]], items: int, repeats: int, min_seconds: float
) -> list[float]:
    """`report.rate` for a coroutine function (that one is synchronous)."""
    await fn()
    results = []
    for _ in range(repeats):
        loops, start = 0, time.perf_counter()
        while True:
            await fn()
            loops += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        results.append(items * loops / elapsed)
    return results


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def end_to_end(
    report: Report,
    conninfo: str,
    cache: RedisServer,
    bootstrap: str,
    *,
    fleet: list[Slot],
    root: Path,
    repeats: int,
) -> None:
    """A real worker: raw-iot-data -> Faust -> processed-iot-data, through the broker."""
    suffix = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(
        kafka_bootstrap_servers=bootstrap,
        kafka_raw_topic=f"raw-{suffix}",
        kafka_processed_topic=f"processed-{suffix}",
        kafka_deadletter_topic=f"dlq-{suffix}",
        kafka_raw_partitions=PARTITIONS,
        kafka_processed_partitions=PARTITIONS,
    )
    ensure_topics(kafka, pipeline_topics(kafka))
    env = worker_env(conninfo, cache, kafka, root)
    log = root / "processor.log"
    rng = random.Random(2)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{suffix}",
                       "enable.auto.commit": False})  # fmt: skip
    reader.assign([TopicPartition(kafka.kafka_processed_topic, p, 0) for p in range(PARTITIONS)])
    with log.open("ab") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "f2pipe", "processor"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        # Warm-up: every device once, so the caches hold the fleet (the steady state).
        warm = [make_sample(s, int(time.time() * 1e6), rng).message for s in fleet]
        sent = send(producer, kafka.kafka_raw_topic, warm)
        drain(reader, sent, 120, worker, log)
        runs: list[float] = []
        readings_per_message = 0.0
        for _ in range(max(1, min(repeats, 3))):
            messages = [
                make_sample(s, int(time.time() * 1e6) + i, rng).message
                for i, s in enumerate(cycle_weighted(fleet, rng, END_TO_END_BATCHES * BATCH))
            ]
            started = time.perf_counter()
            sent = send(producer, kafka.kafka_raw_topic, messages)
            readings = drain(reader, sent, 300, worker, log)
            elapsed = time.perf_counter() - started
            runs.append(len(messages) / elapsed)
            readings_per_message = readings / len(messages)
        note = f"Faust worker, {END_TO_END_BATCHES} records of {BATCH}, {PARTITIONS} partitions"
        report.add(Measurement("end to end, one worker", "messages/s", runs, note))
        report.add(Measurement("end to end, one worker", "readings/s",
                               [r * readings_per_message for r in runs],
                               "raw-iot-data in, processed-iot-data acknowledged out"))  # fmt: skip
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        reader.close()


def worker_env(
    conninfo: str, cache: RedisServer, kafka: KafkaSettings, root: Path
) -> dict[str, str]:
    return service_env(
        postgres_env(conninfo),
        redis_env(cache.host, cache.port, cache.password),
        kafka_env(
            kafka.kafka_bootstrap_servers,
            raw=kafka.kafka_raw_topic,
            processed=kafka.kafka_processed_topic,
            dead_letters=kafka.kafka_deadletter_topic,
            partitions=PARTITIONS,
        ),
        PROCESSOR_APP_ID=f"bench-{kafka.kafka_raw_topic}",
        PROCESSOR_DATA_DIR=str(root / "faust"),
        METRICS_HOST="127.0.0.1",
        METRICS_PORT=str(free_port()),
        LOG_LEVEL="WARNING",
    )


def cycle_weighted(fleet: list[Slot], rng: random.Random, count: int) -> Iterator[Slot]:
    weights = [1.0 if s.stem == "sensor" else 0.1 for s in fleet]
    yield from rng.choices(fleet, weights, k=count)


def send(producer: Producer, topic: str, messages: list[RawMessage]) -> int:
    """Batch by partition as the bridge does; return how many raw records were sent."""
    by_partition: dict[int, list[RawMessage]] = {}
    for m in messages:
        by_partition.setdefault(partition_of(m.topic.split("/")[1][3:]), []).append(m)
    records = 0
    for partition, group in by_partition.items():
        for start in range(0, len(group), BATCH):
            value = encode_raw_batch(group[start : start + BATCH])
            producer.produce(topic, value=value, partition=partition)
            producer.poll(0)
            records += 1
    producer.flush(30)
    return records


def drain(
    reader: Consumer, records: int, timeout: float, worker: subprocess.Popen[Any], log: Path
) -> int:
    """Wait for ``records`` processed records; return the readings they carried."""
    seen = readings = 0
    deadline = time.monotonic() + timeout
    while seen < records:
        if worker.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"processor stalled at {seen}/{records} records:\n{tail}")
        for message in reader.consume(500, 0.2):
            value = message.value()
            if message.error() is None and value is not None:
                seen += 1
                readings += len(decode_processed_batch(value).readings)
    return readings

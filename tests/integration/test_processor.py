"""The processor's batch core against real PostgreSQL, Redis and Kafka (in-process, no Faust).

Faust itself, kill -9 and the HTTP endpoints are in test_processor_worker.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import msgpack
import psycopg
import pytest
import redis
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka import TopicPartition as AioTopicPartition
from confluent_kafka import Consumer, Producer, TopicPartition

from f2pipe.migrate import apply_migrations
from f2pipe.seed import DATAPOINTS, DEVICE_TEMPLATES, demo_mac, seed_demo
from f2pipe_devtools.servers import PostgresServer, RedisServer
from f2pipe_devtools.testkit.samples import Sample, Slot, load_fleet, make_sample
from f2pipe_processor.core import BatchProcessor, BatchResult
from f2pipe_processor.invalidation import RegistryListener
from f2pipe_processor.metrics import ProcessorMetrics
from f2pipe_processor.output import KafkaOutput, output_records
from f2pipe_processor.registry import Registry, Unresolved, unpack_resolved
from f2pipe_processor.resolver import RedisCache, Resolver
from f2pipe_shared.deadletters import DeadLetter, Reason, Stage
from f2pipe_shared.decoding import build_modbus_response, format_hex_frame
from f2pipe_shared.kafka import ensure_topics, producer_config
from f2pipe_shared.records import (
    Event,
    ProcessedBatch,
    RawMessage,
    Reading,
    decode_processed_batch,
    decode_raw_batch,
    encode_raw_batch,
)
from f2pipe_shared.settings import KafkaSettings
from f2pipe_shared.timestamps import parse_device_timestamp, to_epoch_us
from f2pipe_shared.topics import ComponentKind
from f2pipe_simulator import registry as sim_registry
from f2pipe_simulator.controller import Controller, Message, Stamper
from tests.integration.bridgekit import Topics

pytestmark = pytest.mark.integration

T = TypeVar("T")
RAW_TOPIC = "raw-iot-data-test"
SENSOR_TOPIC = "tele/f2-aabbccddee01/sensor-mode/J3/sensor-1"
DAY_S = 86_400.0


@pytest.fixture
def registry_db(pg_conninfo: str) -> str:
    apply_migrations(pg_conninfo)
    seed_demo(pg_conninfo, 6)
    return pg_conninfo


@pytest.fixture
def redis_prefix(redis_server: RedisServer) -> Iterator[str]:
    prefix = f"test:{uuid.uuid4().hex[:8]}:"
    yield prefix
    if redis_server.running:
        client = redis.Redis.from_url(redis_server.url)
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)


@dataclass
class Core:
    processor: BatchProcessor
    resolver: Resolver
    registry: Registry
    redis: RedisCache

    async def close(self) -> None:
        await self.registry.close()
        await self.redis.close()


def make_core(
    conninfo: str,
    redis_url: str,
    prefix: str,
    redis_retry: float = 5.0,
    metrics: ProcessorMetrics | None = None,
) -> Core:
    metrics = metrics or ProcessorMetrics()
    registry = Registry(conninfo, retry_max_seconds=0.5, metrics=metrics)
    cache = RedisCache(
        redis_url, prefix, ttl_seconds=600, retry_seconds=redis_retry, metrics=metrics
    )
    resolver = Resolver(registry, cache, metrics=metrics)
    processor = BatchProcessor(
        resolver, RAW_TOPIC, max_future_seconds=600, max_age_seconds=DAY_S, metrics=metrics
    )
    return Core(processor, resolver, registry, cache)


@contextlib.asynccontextmanager
async def core_for(
    conninfo: str,
    redis_url: str,
    prefix: str,
    redis_retry: float = 5.0,
    metrics: ProcessorMetrics | None = None,
) -> AsyncIterator[Core]:
    core = make_core(conninfo, redis_url, prefix, redis_retry, metrics)
    try:
        yield core
    finally:
        await core.close()


def redis_up(core: Core) -> bool:
    return core.redis.up


def registry_down(core: Core) -> bool:
    return core.registry.down_since is not None


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def now_us() -> int:
    return int(time.time() * 1e6)


async def process(core: Core, messages: list[RawMessage], offset: int = 0) -> BatchResult:
    return await core.processor.process(0, offset, encode_raw_batch(messages))


def output_topics(bootstrap: str) -> KafkaSettings:
    """Settings naming topics of their own; the processed and the dead-letter one created."""
    kafka = Topics.unique().kafka_settings(bootstrap)
    ensure_topics(kafka, {kafka.kafka_processed_topic: 1, kafka.kafka_deadletter_topic: 1})
    return kafka


def expected(samples: list[Sample]) -> tuple[list[Reading], list[Event]]:
    return (
        [r for s in samples for r in s.readings],
        [e for s in samples for e in s.events],
    )


def test_every_template_of_the_seed_decodes_to_what_was_encoded(
    registry_db: str, redis_server: RedisServer, redis_prefix: str
) -> None:
    fleet = load_fleet(registry_db)
    rng = random.Random(7)
    start = now_us() - 60_000_000
    samples = [make_sample(slot, start + i, rng) for i, slot in enumerate(fleet)]
    # Every template of the seed, every datapoint of each, is exercised.
    templates = {s.template.key for s in fleet if s.template}
    assert templates == {t["key"] for t in DEVICE_TEMPLATES}
    decoded_points = {r.datapoint_id for s in samples for r in s.readings}
    with psycopg.connect(registry_db) as conn:
        all_points = {row[0] for row in conn.execute("SELECT id FROM registry.datapoints")}
    assert decoded_points == all_points
    assert len(all_points) == len(DATAPOINTS)

    async def scenario() -> tuple[BatchResult, BatchResult]:
        async with core_for(registry_db, redis_server.url, redis_prefix) as core:
            first = await core.processor.process(
                3, 41, encode_raw_batch([s.message for s in samples])
            )
            # The same batch again is answered from memory, with the same result.
            again = await core.processor.process(
                3, 42, encode_raw_batch([s.message for s in samples])
            )
            return first, again

    first, again = run(scenario())
    readings, events = expected(samples)
    assert first.dead_letters == []
    assert (first.processed.source_partition, first.processed.source_offset) == (3, 41)
    assert first.processed.readings == readings  # exact: same floats, same order
    assert first.processed.events == events
    assert again.processed.readings == readings
    assert first.messages == len(samples)
    # Readings are keyed by the sensor devices, never by their controllers.
    with psycopg.connect(registry_db) as conn:
        controllers = {row[0] for row in conn.execute(
            "SELECT id FROM registry.devices WHERE mac IS NOT NULL")}  # fmt: skip
    assert {r.device_id for r in readings} <= {s.device_id for s in fleet}
    assert not controllers & {r.device_id for r in readings}


def test_the_worked_examples_of_the_data_model(
    registry_db: str, redis_server: RedisServer, redis_prefix: str
) -> None:
    """docs/data_model.md's two frames decode to the values the page states."""
    ts = "2026-11-24 10:00:00.000000"
    env = "01 03 06 08 34 10 68 02 58 14 7F"
    power = "02 03 0C 00 00 43 66 00 00 3F C0 80 00 43 AC BC 9B"
    mac = demo_mac(1)
    messages = [
        RawMessage(
            f"tele/f2-{mac}/sensor-mode/J3/{component}",
            json.dumps({"timestamp": ts, "data": data}).encode(),
            0,
        )
        for component, data in (("sensor-1", env), ("sensor-3", power))
    ]

    async def scenario() -> BatchResult:
        async with core_for(registry_db, redis_server.url, redis_prefix) as core:
            core.processor.max_age_seconds = 100 * 365 * DAY_S  # the example's date is fixed
            return await process(core, messages)

    result = run(scenario())
    assert result.dead_letters == []
    assert [r.value for r in result.processed.readings] == [21.0, 42.0, 600.0, 230.0, 1.5, 345.0]


def test_each_dead_letter_reason_and_the_rest_of_the_batch_goes_through(
    registry_db: str, redis_server: RedisServer, redis_prefix: str, kafka_bootstrap: str
) -> None:
    mac, other = demo_mac(1), demo_mac(2)
    with psycopg.connect(registry_db, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM registry.connectors c USING registry.devices d "
            "WHERE c.controller_id = d.id AND d.mac = %s AND c.name = 'J4'",
            (other,),
        )
    ts = now_us()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts / 1e6)) + ".000000"
    env_frame = build_modbus_response(1, bytes.fromhex("0929 11D7 0264"))

    def sensor(
        data: str, connector: str = "J3", component: str = "sensor-1", m: str = mac
    ) -> RawMessage:
        payload = json.dumps({"timestamp": stamp, "data": data}).encode()
        return RawMessage(f"tele/f2-{m}/sensor-mode/{connector}/{component}", payload, ts)

    good = sensor(format_hex_frame(env_frame))
    bad_crc = bytearray(env_frame)
    bad_crc[-1] ^= 0xFF
    door = f"stat/f2-{mac}/access-control-mode/J1/door-sensors"
    far_future = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts / 1e6 + DAY_S))
    too_old = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts / 1e6 - 3 * DAY_S))
    cases: list[tuple[Reason, RawMessage]] = [
        (Reason.bad_topic, RawMessage(f"tele/f2-{mac}/sensor-mode/J9/sensor-1", b"{}", ts)),
        (Reason.bad_topic, RawMessage(f"cmnd/f2-{mac}/alarm-mode/J2/siren-1", b"1", ts)),
        (Reason.invalid_json, RawMessage(door, b"{not json", ts)),
        (
            Reason.schema_violation,
            RawMessage(
                door,
                json.dumps(
                    {"timestamp": stamp, "door-sensor-1": "yes", "door-sensor-2": False}
                ).encode(),
                ts,
            ),
        ),
        (Reason.unknown_mac, sensor(format_hex_frame(env_frame), m="0123456789ab")),
        (Reason.unmapped_connector, sensor(format_hex_frame(env_frame), "J4", m=other)),
        (Reason.unmapped_connector, sensor(format_hex_frame(env_frame), "J1")),
        (Reason.unmapped_position, sensor(format_hex_frame(env_frame), "J3", "sensor-6")),
        (Reason.bad_hex, sensor("01 03 ZZ")),
        (Reason.short_frame, sensor("01 03")),
        (Reason.short_frame, sensor(format_hex_frame(build_modbus_response(1, b"\x09\x29")))),
        (Reason.crc_mismatch, sensor(format_hex_frame(bytes(bad_crc)))),
        (Reason.bad_frame, sensor("01 83 02 C0 F1")),
        (
            Reason.timestamp_implausible,
            RawMessage(
                door,
                json.dumps(
                    {"timestamp": far_future, "door-sensor-1": True, "door-sensor-2": False}
                ).encode(),
                ts,
            ),
        ),
        (
            Reason.timestamp_implausible,
            RawMessage(good.topic, good.payload.replace(stamp[:19].encode(), too_old.encode()), ts),
        ),
    ]
    messages = [cases[0][1], good, *[m for _, m in cases[1:]], good]
    kafka = output_topics(kafka_bootstrap)
    metrics = ProcessorMetrics()
    before = {r: metrics.dead_letters.labels(r.value)._value.get() for r in Reason}

    async def scenario() -> tuple[BatchResult, BatchResult, BatchResult]:
        async with core_for(registry_db, redis_server.url, redis_prefix, metrics=metrics) as core:
            result = await process(core, messages, offset=7)
            garbage = await core.processor.process(0, 8, b"\x93not msgpack")
            empty = await core.processor.process(0, 9, None)
            output = KafkaOutput(kafka, metrics)
            for r in (result, garbage, empty):
                await output.deliver(
                    output_records(r, kafka.kafka_processed_topic, kafka.kafka_deadletter_topic)
                )
            output.close()
            return result, garbage, empty

    result, garbage, empty = run(scenario())
    # The two good messages went through, each with its three readings.
    assert [r.value for r in result.processed.readings] == [23.45, 45.67, 612.0] * 2
    assert [d.reason for d in result.dead_letters] == [reason for reason, _ in cases]
    for dead, (_, message) in zip(result.dead_letters, cases, strict=True):
        assert dead.stage is Stage.processor
        assert dead.original == message.payload
        assert dead.mqtt_topic == message.topic
        assert (dead.source_topic, dead.source_partition, dead.source_offset) == (RAW_TOPIC, 0, 7)
        assert dead.detail
    details: dict[Reason, str] = {}
    for dead in result.dead_letters:
        details.setdefault(dead.reason, dead.detail)
    assert "level 4 (connector)" in details[Reason.bad_topic]
    assert "door-sensor-1" in details[Reason.schema_violation]
    assert "CRC" in details[Reason.crc_mismatch]
    assert "0123456789ab" in details[Reason.unknown_mac]
    for whole in (garbage, empty):
        assert [d.reason for d in whole.dead_letters] == [Reason.bad_batch]
        assert whole.processed.readings == []
        assert whole.processed.events == []
    assert garbage.dead_letters[0].original == b"\x93not msgpack"
    after = {r: metrics.dead_letters.labels(r.value)._value.get() for r in Reason}
    assert after[Reason.crc_mismatch] - before[Reason.crc_mismatch] == 1
    assert after[Reason.bad_batch] - before[Reason.bad_batch] == 2

    # What reached Kafka: one processed record per raw record, every dead letter with headers.
    processed = read_topic(kafka_bootstrap, kafka.kafka_processed_topic, 3)
    assert len(processed) == 3
    letters = read_topic(kafka_bootstrap, kafka.kafka_deadletter_topic, len(cases) + 2)
    parsed = [DeadLetter.from_kafka(value, headers) for _, value, headers in letters]
    assert [d.reason for d in parsed] == [*(reason for reason, _ in cases), Reason.bad_batch,
                                          Reason.bad_batch]  # fmt: skip
    assert parsed[0].original == cases[0][1].payload
    assert letters[0][0] == cases[0][1].topic.encode()  # keyed by MQTT topic


def read_topic(
    bootstrap: str, topic: str, expect: int, timeout: float = 20.0
) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    """Every record of a one-partition topic (counted by reading: Tansu's watermark lies)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expect and time.monotonic() < deadline:
            for m in consumer.consume(500, 0.5):
                if m.error() is None:
                    headers = cast(list[tuple[str, bytes]], m.headers() or [])
                    records.append((m.key(), cast(bytes, m.value()), headers))
    finally:
        consumer.close()
    return records


async def wait_for(check: Callable[[], Awaitable[bool]], within: float) -> float:
    """Seconds until ``check`` passed; fails after ``within``."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within} s")


def test_registry_changes_take_effect_within_five_seconds(
    registry_db: str, redis_server: RedisServer, redis_prefix: str
) -> None:
    fleet = load_fleet(registry_db)
    mac = demo_mac(1)
    by_place = {(s.mac, s.connector, s.component): s for s in fleet}
    env = by_place[(mac, "J3", "sensor-1")]
    power = by_place[(mac, "J3", "sensor-3")]
    rng = random.Random(3)

    def on(slot: Slot, connector: str, component: str) -> Sample:
        moved = Slot(slot.mac, connector, slot.mode, component, slot.device_id, slot.template)
        return make_sample(moved, now_us(), rng)

    async def scenario() -> dict[str, float]:
        timings: dict[str, float] = {}
        async with core_for(registry_db, redis_server.url, redis_prefix) as core:
            listener = RegistryListener(registry_db, core.resolver, retry_max_seconds=0.5)
            task = asyncio.create_task(listener.run())
            try:
                await wait_for(lambda: _true(listener.connected), 5)
                first = await process(
                    core, [on(env, "J3", "sensor-1").message, on(power, "J3", "sensor-3").message]
                )
                assert {r.device_id for r in first.processed.readings} == {
                    env.device_id,
                    power.device_id,
                }
                cache = redis.Redis.from_url(redis_server.url)
                assert cache.hexists(f"{redis_prefix}loc:{mac}", "J3/sensor-1")

                with psycopg.connect(registry_db, autocommit=True) as conn:
                    # 1. The environmental sensor moves from position 1 to position 4.
                    conn.execute(
                        "UPDATE registry.pins SET component = 'sensor-4' WHERE device_id = %s",
                        (env.device_id,),
                    )

                    async def moved() -> bool:
                        now = await process(core, [on(env, "J3", "sensor-4").message,
                                                   on(env, "J3", "sensor-1").message])  # fmt: skip
                        return {r.device_id for r in now.processed.readings} == {
                            env.device_id
                        } and [d.reason for d in now.dead_letters] == [Reason.unmapped_position]

                    timings["pin moved"] = await wait_for(moved, 5)
                    # Redis holds the new answer, written after the old one was deleted.
                    packed = cast(
                        bytes | None, cache.hget(f"{redis_prefix}loc:{mac}", "J3/sensor-1")
                    )
                    assert packed is not None
                    stored = unpack_resolved(msgpack.unpackb(packed))
                    assert isinstance(stored, Unresolved)
                    assert stored.reason is Reason.unmapped_position

                    # 2. A datapoint's decoding changes: temperature gets one decimal, not two.
                    conn.execute(
                        "UPDATE registry.datapoints SET decimals = 1 WHERE key = 'temperature'"
                    )
                    sample = on(env, "J3", "sensor-4")
                    temperature_id = conn.execute(
                        "SELECT id FROM registry.datapoints WHERE key = 'temperature'"
                    ).fetchone()
                    assert temperature_id is not None

                    async def redecoded() -> bool:
                        now = await process(core, [sample.message])
                        values = {r.datapoint_id: r.value for r in now.processed.readings}
                        was = next(r.value for r in sample.readings
                                   if r.datapoint_id == temperature_id[0])  # fmt: skip
                        return values[temperature_id[0]] == pytest.approx(was * 10)

                    timings["decoding changed"] = await wait_for(redecoded, 5)

                    # 3. A device is removed: its messages become unmapped. (Looked up first:
                    # the pin move above dropped every cached position of connector J3.)
                    cached = await process(core, [on(power, "J3", "sensor-3").message])
                    assert len(cached.processed.readings) == 3
                    conn.execute("DELETE FROM registry.devices WHERE id = %s", (power.device_id,))

                    async def removed() -> bool:
                        now = await process(core, [on(power, "J3", "sensor-3").message])
                        return [d.reason for d in now.dead_letters] == [Reason.unmapped_position]

                    timings["device removed"] = await wait_for(removed, 5)
                assert listener.applied >= 4  # pins, datapoints, pins (cascade), devices
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return timings

    timings = run(scenario())
    assert all(t < 5 for t in timings.values()), timings


async def _true(value: bool) -> bool:
    return value


def test_redis_stopped_and_restarted_mid_stream(
    registry_db: str, redis_server: RedisServer, redis_prefix: str
) -> None:
    fleet = load_fleet(registry_db)
    rng = random.Random(5)
    by_controller: dict[str, list[Slot]] = {}
    for slot in fleet:
        by_controller.setdefault(slot.mac, []).append(slot)
    groups = list(by_controller.values())  # 6 controllers: 2 per phase, each new to the cache
    metrics = ProcessorMetrics()
    fallbacks_before = metrics.redis_fallbacks._value.get()
    cache = redis.Redis.from_url(redis_server.url)

    async def batch(core: Core, slots: list[Slot]) -> tuple[BatchResult, list[Sample]]:
        samples = [make_sample(s, now_us(), rng) for s in slots]
        return await process(core, [s.message for s in samples]), samples

    async def scenario() -> None:
        async with core_for(
            registry_db, redis_server.url, redis_prefix, redis_retry=0.3, metrics=metrics
        ) as core:
            result, samples = await batch(core, groups[0] + groups[1])
            assert result.processed.readings == expected(samples)[0]
            assert cache.exists(f"{redis_prefix}loc:{demo_mac(1)}")

            redis_server.stop()
            try:
                for group in (groups[2], groups[3]):
                    result, samples = await batch(core, group)
                    assert result.dead_letters == []
                    assert result.processed.readings == expected(samples)[0]
                assert not redis_up(core)
                assert metrics.redis_fallbacks._value.get() > fallbacks_before
                assert metrics.redis_up._value.get() == 0
                # Hits from memory still answer for what was seen before the outage.
                result, samples = await batch(core, groups[0])
                assert result.processed.readings == expected(samples)[0]
            finally:
                redis_server.start()

            await asyncio.sleep(0.4)  # past PROCESSOR_REDIS_RETRY_SECONDS
            for group in (groups[4], groups[5]):
                result, samples = await batch(core, group)
                assert result.processed.readings == expected(samples)[0]
            assert redis_up(core)
            assert metrics.redis_up._value.get() == 1
            # Recovered: the new lookups were written to Redis again.
            assert cache.exists(f"{redis_prefix}loc:{demo_mac(5)}")
            assert cache.exists(f"{redis_prefix}loc:{demo_mac(6)}")

    run(scenario())


def test_postgres_down_holds_the_batch_until_it_returns(
    registry_db: str, postgres_server: PostgresServer, redis_server: RedisServer, redis_prefix: str
) -> None:
    fleet = load_fleet(registry_db)
    samples = [make_sample(s, now_us(), random.Random(9)) for s in fleet[:12]]
    metrics = ProcessorMetrics()
    value = metrics.registry.get_sample_value
    retries_before = value("f2pipe_processor_postgres_retries_total") or 0.0

    async def scenario() -> BatchResult:
        async with core_for(registry_db, redis_server.url, redis_prefix, metrics=metrics) as core:
            postgres_server.stop()
            try:
                task = asyncio.create_task(process(core, [s.message for s in samples]))
                await asyncio.sleep(2.0)
                assert not task.done()  # waiting, not dead-lettering: nothing is acked
                assert registry_down(core)
                assert value("f2pipe_processor_postgres_up") == 0
            finally:
                postgres_server.start()
            result = await asyncio.wait_for(task, 15)
            assert not registry_down(core)
            return result

    result = run(scenario())
    assert result.dead_letters == []
    assert result.processed.readings == expected(samples)[0]
    assert (value("f2pipe_processor_postgres_retries_total") or 0.0) > retries_before


def test_faust_side_reads_what_the_bridge_producer_config_writes(kafka_bootstrap: str) -> None:
    """The bridge produces with f2pipe_shared.kafka.producer_config (lz4); aiokafka must read it."""
    raw = f"raw-lz4-{uuid.uuid4().hex[:8]}"
    kafka = KafkaSettings(kafka_bootstrap_servers=kafka_bootstrap, kafka_raw_topic=raw)
    ensure_topics(kafka, {raw: 1})
    batch = [RawMessage("tele/f2-aabbccddee01/sensor-mode/J3/sensor-1", b"{}", 1)] * 50
    producer = Producer(producer_config(kafka))
    producer.produce(raw, value=encode_raw_batch(batch), partition=0)
    assert producer.flush(10) == 0

    async def consume() -> bytes:
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = AioTopicPartition(raw, 0)
            consumer.assign([tp])
            consumer.seek(tp, 0)
            records = await consumer.getmany(tp, timeout_ms=10_000)
            value = records[tp][0].value
            assert isinstance(value, bytes)
            return value
        finally:
            await consumer.stop()

    assert decode_raw_batch(asyncio.run(consume())) == batch


class _NoTimers:
    """The simulator's controllers are only asked for messages here, never started."""

    def time(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], object]) -> Any:
        raise AssertionError("not started")


def test_decodes_what_the_simulator_encodes_for_every_template(
    registry_db: str, redis_server: RedisServer, redis_prefix: str
) -> None:
    """Each simulated controller's frames and states decode to the values it says it sent."""
    specs = sim_registry.load_fleet(registry_db)
    sent: list[tuple[Message, int]] = []
    for spec in specs:
        controller = Controller(
            spec,
            outlet=cast(Any, None),
            timers=_NoTimers(),
            stamper=Stamper(now_us),
            rng=random.Random(spec.mac),
            publish_interval=1.0,
            event_interval=10.0,
        )
        for _ in range(3):  # several steps of each signal, not only its first value
            sent += [(controller.sensor_message(s), s.component.device_id or 0)
                     for s in controller.sensors]  # fmt: skip
        sent += [(controller.source_message(s), s.component.device_id or 0)
                 for s in controller.sources]  # fmt: skip
    keys = {dp.id: dp.key for spec in specs for c in spec.components if c.template
            for dp in (*c.template.frame_points, *c.template.field_points)}  # fmt: skip
    templates = {c.template.key for spec in specs for c in spec.components if c.template}
    assert templates == {t["key"] for t in DEVICE_TEMPLATES}

    async def scenario() -> BatchResult:
        async with core_for(registry_db, redis_server.url, redis_prefix) as core:
            raw = [RawMessage(m.topic, m.payload, now_us()) for m, _ in sent]
            return await core.processor.process(0, 0, encode_raw_batch(raw))

    result = run(scenario())
    assert result.dead_letters == []
    decoded: dict[tuple[int, int], dict[str, float]] = {}
    for r in result.processed.readings:
        decoded.setdefault((r.device_id, r.timestamp_us), {})[keys[r.datapoint_id]] = r.value
    for message, device_id in sent:
        stamp = to_epoch_us(parse_device_timestamp(message.timestamp))
        assert decoded.get((device_id, stamp), {}) == message.readings, message.topic
    sources = [m for m, _ in sent if m.kind is not ComponentKind.SENSOR]
    assert sources
    assert len(result.processed.events) == len(sources)
    assert len(result.processed.readings) == sum(len(m.readings) for m, _ in sent) > len(sent)


def test_records_kafka_refuses_become_dead_letters_and_the_next_record_goes_through(
    kafka_bootstrap: str,
) -> None:
    kafka = output_topics(kafka_bootstrap)
    ts = now_us()
    huge = ProcessedBatch(0, 41, [Reading(ts + i, 1, 1, float(i)) for i in range(2000)], [])
    original = bytes(range(256)) * 20  # 5,120 bytes: whole in the letter, too big for Kafka
    letter = DeadLetter(stage=Stage.processor, reason=Reason.bad_hex, detail="odd digits",
                        original=original, mqtt_topic=SENSOR_TOPIC)  # fmt: skip
    refused = BatchResult(huge, [letter], {}, messages=1)
    fine = BatchResult(ProcessedBatch(0, 42, [Reading(ts, 1, 1, 1.5)], []), [], {}, messages=1)
    metrics = ProcessorMetrics()
    before = metrics.refused._value.get()

    async def scenario() -> None:
        # A record limit the huge batch and the letter exceed (librdkafka refuses them before
        # sending, as it does for anything over the broker's limit).
        output = KafkaOutput(kafka, metrics, **{"message.max.bytes": 4000})
        for result in (refused, fine):
            records = output_records(
                result, kafka.kafka_processed_topic, kafka.kafka_deadletter_topic, RAW_TOPIC
            )
            await asyncio.wait_for(output.deliver(records), 30)
        output.close()

    run(scenario())
    processed = read_topic(kafka_bootstrap, kafka.kafka_processed_topic, 1)
    assert [decode_processed_batch(v).source_offset for _, v, _ in processed] == [42]
    letters = [
        DeadLetter.from_kafka(v, h)
        for _, v, h in read_topic(kafka_bootstrap, kafka.kafka_deadletter_topic, 2)
    ]
    by_reason = {d.reason: d for d in letters}
    assert len(letters) == 2
    unproducible = by_reason[Reason.unproducible]
    assert (unproducible.source_topic, unproducible.source_offset) == (RAW_TOPIC, 41)
    assert "2000 readings" in unproducible.detail
    assert unproducible.original_size is not None
    assert unproducible.original_size > 4000
    stripped = by_reason[Reason.bad_hex]
    assert stripped.original == b""
    assert stripped.original_size == len(original)
    assert stripped.original_sha256 == hashlib.sha256(original).hexdigest()
    assert stripped.mqtt_topic == SENSOR_TOPIC
    assert metrics.refused._value.get() - before == 2

"""The processor without servers: decoding a batch, lookups, invalidation, the per-record flow
and its acks, latest values, metrics, settings, and the Faust adapter's version pin."""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import subprocess
import sys
import tomllib
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiokafka  # type: ignore[import-untyped]
import pytest
from aiokafka.errors import (  # type: ignore[import-untyped]
    CommitFailedError,
    GroupAuthorizationFailedError,
    IllegalStateError,
    UnknownError,
)
from faust.types import TP
from intervaltree import IntervalTree  # type: ignore[import-untyped]
from prometheus_client import generate_latest

from f2pipe_processor import faust_adapter
from f2pipe_processor.acks import (
    COMMITS_REFUSED_UNHEALTHY,
    COMMITS_REFUSED_UNHEALTHY_S,
    REREAD_DEADLINE_S,
    REREADS_IN_A_ROW,
    Commits,
    Holes,
    InFlight,
    Verdict,
)
from f2pipe_processor.connectivity import Connectivity
from f2pipe_processor.core import BatchProcessor, BatchResult, log_dead_letters
from f2pipe_processor.decoder import (
    LatestValues,
    Parse,
    TimestampWindow,
    decode_messages,
    parse_messages,
)
from f2pipe_processor.faust_adapter import (
    HOOKS,
    PINNED,
    Hook,
    SafeSeekConsumer,
    ShortFetchConsumerThread,
)
from f2pipe_processor.invalidation import parse_change
from f2pipe_processor.latest import Entry, LatestTable, merge, render
from f2pipe_processor.metrics import ProcessorMetrics
from f2pipe_processor.output import OutRecord, output_records
from f2pipe_processor.registry import (
    CompiledTemplate,
    Location,
    Resolved,
    TemplateRow,
    Unresolved,
    pack_resolved,
    unpack_resolved,
)
from f2pipe_processor.resolver import Change, Resolver
from f2pipe_processor.service import ProcessorService
from f2pipe_processor.settings import ProcessorSettings, interval_to_timedelta
from f2pipe_shared.deadletters import DeadLetter, Reason, Stage
from f2pipe_shared.decoding import build_modbus_response, format_hex_frame
from f2pipe_shared.kafka import FETCH_MAX_WAIT_MS
from f2pipe_shared.records import (
    ProcessedBatch,
    RawMessage,
    decode_processed_batch,
    encode_raw_batch,
)
from f2pipe_shared.settings import KafkaSettings
from f2pipe_shared.topics import Topic

MAC = "aabbccddee01"
TS = "2026-11-24 10:00:00.123456"
TS_US = 1_795_514_400_123_456
WINDOW = TimestampWindow(TS_US - 86_400_000_000, TS_US + 600_000_000)

ENV: TemplateRow = (
    10,
    "environmental-sensor-v1",
    "modbus_rtu",
    True,
    [
        (1, "temperature", 0, 2, "int16", "big", 2, None),
        (2, "humidity", 2, 2, "uint16", "big", 2, None),
        (3, "co2", 4, 2, "uint16", "big", 0, None),
    ],
)
POWER: TemplateRow = (
    11,
    "power-monitor-v1",
    "modbus_rtu",
    True,
    [(4, "voltage", 0, 4, "float32", "word_swapped", 0, None)],
)
DOORS: TemplateRow = (
    12,
    "door-sensor-pair-v1",
    None,
    False,
    [(5, "door-sensor-1", None, None, None, "big", None, "door-sensor-1"),
     (6, "door-sensor-2", None, None, None, "big", None, "door-sensor-2")],
)  # fmt: skip
READER: TemplateRow = (13, "reader-v1", None, False, [])
TEMPLATES = {row[0]: CompiledTemplate.from_row(row) for row in (ENV, POWER, DOORS, READER)}


def topic(kind: str, mode: str, connector: str, component: str, mac: str = MAC) -> str:
    return f"{kind}/f2-{mac}/{mode}/{connector}/{component}"


SENSOR = topic("tele", "sensor-mode", "J3", "sensor-1")
POWER_TOPIC = topic("tele", "sensor-mode", "J3", "sensor-3")
DOOR = topic("stat", "access-control-mode", "J1", "door-sensors")
SCAN = topic("tele", "access-control-mode", "J1", "reader-1")


def processor_letter(
    reason: Reason,
    detail: str,
    *,
    original: bytes = b"{}",
    mqtt_topic: str = SENSOR,
    source_topic: str | None = None,
    offset: int,
) -> DeadLetter:
    """The processor's dead letter of a message at `offset` of partition 2."""
    return DeadLetter(stage=Stage.processor, reason=reason, detail=detail, original=original,
                      mqtt_topic=mqtt_topic, source_topic=source_topic, source_partition=2,
                      source_offset=offset)  # fmt: skip


LOCATIONS: dict[str, Resolved] = {
    SENSOR: Location(100, 10, 1, 3),
    POWER_TOPIC: Location(101, 11, 1, 3),
    DOOR: Location(102, 12, 1, 1),
    SCAN: Location(103, 13, 1, 1),
}


def message(topic_name: str, **fields: Any) -> RawMessage:
    return RawMessage(topic_name, json.dumps({"timestamp": TS, **fields}).encode(), TS_US)


def frame(data_hex: str, address: int = 1) -> str:
    return format_hex_frame(build_modbus_response(address, bytes.fromhex(data_hex)))


def run(messages: Sequence[RawMessage], locations: dict[str, Resolved] | None = None) -> Any:
    parse = parse_messages(messages, WINDOW)
    decoded = decode_messages(parse.parsed, locations or LOCATIONS, TEMPLATES)
    rejected = sorted((*parse.rejected, *decoded.rejected), key=lambda r: r.position)
    return parse, decoded, [(r.reason, r.message.topic) for r in rejected]


def test_every_datapoint_of_a_frame_becomes_a_reading_of_the_sensor_device() -> None:
    # docs/mqtt_topics.md's worked example: 23.45 degC, 45.67 %, 612 ppm.
    parse, decoded, rejected = run([message(SENSOR, data=frame("0929 11D7 0264"))])
    assert rejected == []
    assert [(r.device_id, r.datapoint_id, r.value, r.timestamp_us) for r in decoded.readings] == [
        (100, 1, 23.45, TS_US),
        (100, 2, 45.67, TS_US),
        (100, 3, 612.0, TS_US),
    ]
    assert parse.topics[SENSOR] == Topic(
        "tele", MAC, "sensor-mode", "J3", "sensor-1", parse.topics[SENSOR].component_kind, 1
    )
    assert decoded.latest == {100: {1: (TS_US, 23.45, "temperature"),
                                    2: (TS_US, 45.67, "humidity"),
                                    3: (TS_US, 612.0, "co2")}}  # fmt: skip


def test_word_swapped_float32() -> None:
    # 230.5 V as float32 0x43668000, sent low word first.
    _, decoded, rejected = run([message(POWER_TOPIC, data=frame("8000 4366", address=2))])
    assert rejected == []
    assert [r.value for r in decoded.readings] == [230.5]


def test_states_become_events_and_readings_scans_become_events() -> None:
    _, decoded, rejected = run(
        [
            message(DOOR, **{"door-sensor-1": True, "door-sensor-2": False}),
            message(SCAN, data="04A23B1C5D6E80"),
        ]
    )
    assert rejected == []
    assert [(e.device_id, e.kind, e.data) for e in decoded.events] == [
        (102, "state", {"door-sensor-1": True, "door-sensor-2": False}),
        (103, "scan", {"data": "04A23B1C5D6E80"}),
    ]
    assert [(r.datapoint_id, r.value) for r in decoded.readings] == [(5, 1.0), (6, 0.0)]


def test_each_reason_is_named_and_the_batch_goes_on() -> None:
    unknown = topic("tele", "sensor-mode", "J3", "sensor-1", mac="0123456789ab")
    far = "2030-01-01 00:00:00"
    old = "2020-01-01 00:00:00"
    locations: dict[str, Resolved] = {
        **LOCATIONS,
        unknown: Unresolved(Reason.unknown_mac, "no controller", None, None),
    }
    messages = [
        RawMessage("tele/f2-x/sensor-mode/J3/sensor-1", b"{}", 0),
        RawMessage(topic("cmnd", "alarm-mode", "J2", "siren-1"), b"1", 0),
        RawMessage(DOOR, b"not json", 0),
        message(DOOR, **{"door-sensor-1": "yes", "door-sensor-2": False}),
        message(SENSOR, data=frame("0929 11D7 0264")),  # the good one
        RawMessage(SENSOR, json.dumps({"timestamp": far, "data": "00"}).encode(), 0),
        RawMessage(SENSOR, json.dumps({"timestamp": old, "data": "00"}).encode(), 0),
        message(unknown, data=frame("0929 11D7 0264")),
        message(SENSOR, data="ZZ"),
        message(SENSOR, data="01 03"),
        message(SENSOR, data=frame("0929")),  # CRC fine, too short for the template
        message(SENSOR, data=frame("0929 11D7 0264")[:-2] + "00"),
        message(SENSOR, data="01 83 02 C0 F1"),
    ]
    _, decoded, rejected = run(messages, locations)
    assert [reason for reason, _ in rejected] == [
        Reason.bad_topic,
        Reason.bad_topic,
        Reason.invalid_json,
        Reason.schema_violation,
        Reason.timestamp_implausible,
        Reason.timestamp_implausible,
        Reason.unknown_mac,
        Reason.bad_hex,
        Reason.short_frame,
        Reason.short_frame,
        Reason.crc_mismatch,
        Reason.bad_frame,
    ]
    assert len(decoded.readings) == 3


def test_a_sensor_without_a_frame_template_is_unmapped() -> None:
    locations: dict[str, Resolved] = {SENSOR: Location(100, None, 1, 3)}
    _, decoded, rejected = run([message(SENSOR, data=frame("0929 11D7 0264"))], locations)
    assert rejected == [(Reason.unmapped_position, SENSOR)]
    assert decoded.readings == []


def test_newest_value_per_datapoint_wins_within_a_batch() -> None:
    later = "2026-11-24 10:00:01.000000"
    messages = [
        RawMessage(SENSOR, json.dumps({"timestamp": later, "data": frame("0001 0001 0001")})
                   .encode(), 0),
        message(SENSOR, data=frame("0929 11D7 0264")),
    ]  # fmt: skip
    _, decoded, _ = run(messages)
    assert decoded.latest[100][3][1] == 1.0  # from the later timestamp, though sent first


def test_window_bounds() -> None:
    window = TimestampWindow.around(1_000_000_000, max_future_s=10, max_age_s=100)
    assert window == TimestampWindow(1_000_000_000 - 100_000_000, 1_000_000_000 + 10_000_000)


def test_resolved_values_survive_redis_packing() -> None:
    for value in (
        Location(1, 2, 3, 4),
        Location(1, None, 3, 4),
        Unresolved(Reason.unmapped_position, "nothing on J3/sensor-4", 3, 4),
        Unresolved(Reason.unknown_mac, "no controller", None, None),
    ):
        assert unpack_resolved(pack_resolved(value)) == value


def test_template_splits_frame_and_field_datapoints() -> None:
    doors = TEMPLATES[12]
    assert doors.decode is None
    assert doors.field_points == ((5, "door_sensor_1"), (6, "door_sensor_2"))
    env = TEMPLATES[10]
    assert env.frame_points == (1, 2, 3)
    assert env.keys == {1: "temperature", 2: "humidity", 3: "co2"}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ('{"table": "pins", "op": "UPDATE", "ids": [12, 13], "connector_ids": [4]}',
         Change("pins", (12, 13), (4,))),
        ('{"table": "devices", "op": "INSERT", "ids": [7], "macs": ["aabbccddee01"]}',
         Change("devices", (7,), ("aabbccddee01",))),
        ('{"table": "devices", "op": "UPDATE", "ids": [8], "macs": null}',
         Change("devices", (8,), ())),
        ('{"table": "pins", "op": "TRUNCATE", "ids": null}', Change("pins", None, ())),
        ('{"table": "datapoints", "op": "DELETE", "ids": null, "count": 9000}',
         Change("datapoints", None, ())),
        ("not json", None),
        ('{"op": "INSERT"}', None),
    ],
)  # fmt: skip
def test_notification_payloads(payload: str, expected: Change | None) -> None:
    assert parse_change(payload) == expected


class FakeRegistry:
    """Answers from a dict; counts queries; can be 'down' for MAC mapping."""

    def __init__(self, locations: dict[str, Resolved], templates: dict[int, TemplateRow]) -> None:
        self.locations_by_topic = locations
        self.template_rows = templates
        self.queries = 0
        self.down_since = None
        self.last_error: str | None = None

    async def locations(self, topics: Sequence[Topic]) -> dict[str, Resolved]:
        self.queries += 1
        return {t.format(): self.locations_by_topic[t.format()] for t in topics}

    async def templates(self, ids: Any) -> dict[int, TemplateRow]:
        self.queries += 1
        return {i: self.template_rows[i] for i in ids}

    async def macs_for(self, **_: Any) -> set[str]:
        return set()


def test_resolver_caches_and_forgets_exactly_what_a_change_touches() -> None:
    registry = FakeRegistry(dict(LOCATIONS), {r[0]: r for r in (ENV, POWER, DOORS, READER)})
    resolver = Resolver(registry, None, metrics=ProcessorMetrics())
    topics = parse_messages([message(t, data="00") for t in (SENSOR, POWER_TOPIC)], WINDOW)

    async def scenario() -> list[int]:
        counts = []
        await resolver.resolve(topics.topics)
        counts.append(registry.queries)  # locations + templates
        await resolver.resolve(topics.topics)
        counts.append(registry.queries)  # all from memory
        await resolver.invalidate(Change("pins", (99,), (3,)))  # connector 3 = both
        await resolver.resolve(topics.topics)
        counts.append(registry.queries)  # locations again, templates still cached
        await resolver.invalidate(Change("datapoints", (1,), (10,)))
        lookup = await resolver.resolve(topics.topics)
        counts.append(registry.queries)  # template 10 again
        assert set(lookup.templates) == {10, 11}
        await resolver.invalidate(Change("devices", (101,), ()))  # the power monitor
        lookup = await resolver.resolve(topics.topics)
        assert lookup.stats["memory_hits"] == 1
        await resolver.invalidate(Change("pins", None, ()))  # TRUNCATE: everything
        lookup = await resolver.resolve(topics.topics)
        assert lookup.stats["memory_misses"] == 2
        return counts

    assert asyncio.run(scenario()) == [2, 2, 3, 4]


def test_acks_go_out_in_offset_order_whatever_order_deliveries_finish() -> None:
    acked: list[tuple[int, int]] = []

    async def scenario() -> None:
        inflight = InFlight(limit=10, metrics=ProcessorMetrics())
        gates = {offset: asyncio.Event() for offset in range(4)}

        async def deliver(offset: int) -> None:
            await gates[offset].wait()

        def ack(partition: int, offset: int) -> Any:
            async def do() -> None:
                acked.append((partition, offset))

            return do

        for offset in range(4):
            inflight.add(0, deliver(offset), ack(0, offset))
        for offset in (3, 1, 2):  # out of order; offset 0 still pending
            gates[offset].set()
            await asyncio.sleep(0.01)
        assert acked == []
        gates[0].set()
        await inflight.drain(1)
        assert acked == [(0, 0), (0, 1), (0, 2), (0, 3)]

    asyncio.run(scenario())


def test_a_cancelled_delivery_blocks_every_later_ack_of_its_partition() -> None:
    acked: list[int] = []

    async def scenario() -> None:
        inflight = InFlight(limit=10, metrics=ProcessorMetrics())
        never = asyncio.Event()
        done = asyncio.Event()
        done.set()

        def ack(offset: int) -> Any:
            async def do() -> None:
                acked.append(offset)

            return do

        inflight.add(0, never.wait(), ack(0))
        inflight.add(0, done.wait(), ack(1))
        await asyncio.sleep(0.01)
        for task in list(inflight._tasks):
            task.cancel()
        await asyncio.sleep(0.01)
        assert acked == []

    asyncio.run(scenario())


def test_latest_merge_keeps_the_newer_value() -> None:
    current = {"1": [100, 20.0, "temperature"]}
    assert merge(current, {1: (99, 19.0, "temperature")}) is None
    assert merge(current, {1: (101, 21.0, "temperature"), 2: (101, 40.0, "humidity")}) == {
        "1": [101, 21.0, "temperature"],
        "2": [101, 40.0, "humidity"],
    }
    body = render(7, {"2": [TS_US, 40.0, "humidity"], "1": [TS_US, 21.0, "temperature"]})
    assert body["device_id"] == 7
    assert [p["datapoint_id"] for p in body["datapoints"]] == [1, 2]
    assert body["datapoints"][0]["timestamp"] == TS


def test_output_records_one_processed_record_and_a_dead_letter_per_message() -> None:
    dead = processor_letter(
        Reason.crc_mismatch, "CRC", original=b'{"data": "01"}', source_topic="raw", offset=9
    )
    result = BatchResult(ProcessedBatch(2, 9, [], []), [dead], {}, messages=1)
    records = output_records(result, "processed", "dlq")
    assert [r.topic for r in records] == ["processed", "dlq"]
    assert records[0].key == b"2"
    assert decode_processed_batch(records[0].value) == ProcessedBatch(2, 9, [], [])
    assert records[1].key == SENSOR.encode()
    assert records[1].value == dead.original
    headers = cast(list[tuple[str, bytes]], records[1].headers)
    assert DeadLetter.from_kafka(records[1].value, headers).reason is Reason.crc_mismatch


@pytest.mark.parametrize("processed_partitions", [6, 3, 4])
def test_each_raw_partition_goes_to_its_own_processed_partition_so_every_sink_has_work(
    processed_partitions: int,
) -> None:
    """Left to librdkafka's hash of the keys "0".."5", 6 raw partitions landed on processed
    partitions 5, 5, 1, 1, 4, 4: three of six empty, two sinks splitting 28/72."""
    placed = []
    for raw in range(6):
        result = BatchResult(ProcessedBatch(raw, 0, [], []), [], {}, messages=0)
        [record] = output_records(result, "processed", "dlq", "raw", processed_partitions)
        assert record.key == str(raw).encode()  # still keyed: the order per raw partition
        placed.append(record.partition)
    assert placed == [raw % processed_partitions for raw in range(6)]
    spread = [placed.count(p) for p in range(processed_partitions)]
    assert max(spread) - min(spread) <= 1
    unnumbered = BatchResult(ProcessedBatch(4, 0, [], []), [], {}, messages=0)
    record = output_records(unnumbered, "p", "d")[0]
    assert record.partition is None  # without a count: librdkafka's partitioner, as before


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def counted(metrics: ProcessorMetrics, outcome: str) -> float:
    return cast(float, metrics.holes.labels(outcome=outcome)._value.get())


def test_a_hole_is_read_again_and_heals_when_its_first_record_is_handed_out() -> None:
    metrics = ProcessorMetrics()
    holes = Holes(frozenset({"raw"}), metrics)
    assert holes.skipped("raw", 0, 4, 6) is Verdict.REREAD
    assert holes.partitions == {0}  # connectivity makes no offline decision meanwhile
    assert holes.stuck == 0  # healthy while it is read again
    assert metrics.skipped_by_faust._value.get() == 2
    holes.record(0, 6)  # the rest of the fetch before the seek: not the hole
    holes.record(1, 4)  # another partition
    assert holes.partitions == {0}
    holes.record(0, 4)
    assert holes.partitions == set()
    assert counted(metrics, "healed") == 1
    assert metrics.offsets_without_records._value.get() == 0


def test_a_hole_still_empty_when_read_again_holds_no_records_and_is_committed_past() -> None:
    metrics = ProcessorMetrics()
    holes = Holes(frozenset({"raw"}), metrics)
    assert holes.skipped("raw", 2, 7, 8) is Verdict.REREAD
    # Read again from 7: the next record is 8 again (a commit marker at 7).
    assert holes.skipped("raw", 2, 7, 8) is Verdict.NO_RECORDS
    assert holes.partitions == set()
    assert metrics.offsets_without_records._value.get() == 1
    assert counted(metrics, "no_records") == 1
    # Retention moved on meanwhile: the second read starts further on; still nothing there.
    assert holes.skipped("raw", 2, 20, 25) is Verdict.REREAD
    assert holes.skipped("raw", 2, 20, 40) is Verdict.NO_RECORDS
    assert metrics.offsets_without_records._value.get() == 21
    assert metrics.skipped_by_faust._value.get() == 6  # first reports only


def test_holes_that_do_not_resolve_are_left_for_a_restart() -> None:
    metrics = ProcessorMetrics()
    holes = Holes(frozenset({"raw"}), metrics)
    verdicts = [holes.skipped("raw", 0, 10 * n, 10 * n + 3) for n in range(1, 6)]
    assert verdicts == [Verdict.REREAD] * REREADS_IN_A_ROW + [Verdict.LEAVE] * 2
    assert holes.stuck == 1
    assert holes.partitions == {0}
    assert holes.skipped("raw", 1, 5, 6) is Verdict.REREAD  # other partitions go on
    assert counted(metrics, "left") == 2
    holes.assigned()  # a rebalance seeks every partition to its committed offset
    assert holes.stuck == 0
    assert holes.partitions == set()
    assert holes.skipped("raw", 0, 50, 51) is Verdict.REREAD


def test_a_reread_that_does_not_resolve_in_time_is_left_for_a_restart() -> None:
    clock = Clock()
    holes = Holes(frozenset({"raw"}), ProcessorMetrics(), clock=clock)
    assert holes.skipped("raw", 3, 4, 6) is Verdict.REREAD
    clock.now += REREAD_DEADLINE_S - 1
    assert holes.stuck == 0
    clock.now += 1
    assert holes.stuck == 1
    assert holes.partitions == {3}
    assert holes.skipped("raw", 3, 4, 6) is Verdict.LEAVE  # never taken as empty now
    holes.record(3, 5)
    assert holes.stuck == 1
    holes.record(3, 4)  # its re-read came late (a stream waiting for PostgreSQL): healed
    assert holes.stuck == 0
    assert holes.partitions == set()


def test_health_asks_for_a_restart_only_for_a_hole_left_unresolved() -> None:
    service = fake_service(FakeOutput(), FakeLatest())
    service.holes.skipped("raw", 0, 4, 6)
    ok, details = service.health()
    assert ok
    assert details["rereading"] == [0]
    for n in range(REREADS_IN_A_ROW):
        service.holes.skipped("raw", 0, 10 + n * 5, 12 + n * 5)
    ok, details = service.health()
    assert not ok
    assert details["skipped_by_faust"] == "1 hole(s): restart this worker"


class ThreadDouble:
    """What SafeSeekConsumer asks of aiokafka through Faust's consumer thread."""

    def __init__(self, assigned: set[TP]) -> None:
        self.assigned = assigned
        self.seeks: list[tuple[TP, int]] = []

    def assignment(self) -> set[TP]:
        return self.assigned

    def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def seek_to_committed(self) -> dict[TP, int]:
        return dict.fromkeys(self.assigned, 2)  # offset 2 of each is committed

    async def seek_to_beginning(self, *tps: Any) -> None:
        raise AssertionError("every partition has a committed offset")


def consumer_double(holes: Holes, assigned: set[TP]) -> Any:
    """A SafeSeekConsumer with only the state its hole handling touches (no broker)."""
    consumer: Any = SafeSeekConsumer.__new__(SafeSeekConsumer)
    consumer.app = SimpleNamespace(
        f2pipe_holes=holes, in_recovery=False, tables=SimpleNamespace(changelog_topics=set())
    )
    consumer.log = SimpleNamespace(dev=lambda *args: None)
    consumer._thread = ThreadDouble(assigned)
    consumer._active_partitions = set(assigned)
    consumer._paused_partitions = set()
    consumer._buffered_partitions = set()
    consumer._read_offset = defaultdict(lambda: None)
    consumer._committed_offset = defaultdict(lambda: None)
    consumer._gap = defaultdict(IntervalTree)
    consumer._held = set()
    consumer._rereading = set()
    consumer._reread_tasks = set()
    consumer._next_fetch = asyncio.Event()
    return consumer


def test_the_consumer_seeks_back_to_a_hole_once_the_fetch_it_was_in_is_handed_out() -> None:
    raw, other = TP("raw", 0), TP("raw", 1)
    holes = Holes(frozenset({"raw"}), ProcessorMetrics())
    consumer = consumer_double(holes, {raw, other})

    async def scenario() -> None:
        fetch = consumer._next_fetch
        consumer.on_buffer_full(raw)  # its stream's buffer was full: handed out all the same
        assert raw in consumer._buffered_partitions
        # aiokafka's partition type, as Faust hands it over.
        await consumer._add_gap(aiokafka.TopicPartition("raw", 0), 4, 6)
        # The rest of the fetch is held back, a full buffer or not.
        assert raw not in consumer._active_partitions
        assert raw not in consumer._buffered_partitions
        consumer.on_buffer_full(raw)
        assert raw not in consumer._buffered_partitions
        consumer.on_buffer_drop(raw)  # a stream buffer draining does not resume it early
        assert raw not in consumer._active_partitions
        consumer._read_offset[raw] = 6  # Faust marks the record after the hole read
        await asyncio.sleep(0.05)
        assert consumer._thread.seeks == []  # not while that fetch is handed out
        fetch.set()  # the next fetch starts: the one with the hole is done
        await asyncio.gather(*consumer._reread_tasks)
        assert consumer._thread.seeks == [(raw, 4)]
        assert consumer._read_offset[raw] == 3  # so offset 4 is taken as the next one
        assert consumer._active_partitions == {raw, other}
        assert not consumer._rereading

    asyncio.run(scenario())
    assert holes.partitions == {0}  # until offset 4 is handed out


def test_the_consumer_commits_past_offsets_still_empty_on_the_second_read() -> None:
    raw = TP("raw", 0)
    holes = Holes(frozenset({"raw"}), ProcessorMetrics())
    consumer = consumer_double(holes, {raw})
    holes.skipped("raw", 0, 4, 6)  # the first report: read again

    asyncio.run(consumer._add_gap(raw, 4, 6))

    # Faust's gap is inclusive of its end: exactly 4 and 5 marked processed, not 6.
    assert [(i.begin, i.end) for i in consumer._gap[raw]] == [(4, 6)]
    assert consumer._thread.seeks == []


def test_a_rebalance_s_seek_cancels_a_re_read_waiting_for_its_own() -> None:
    """Every partition goes to its committed offset, before any hole: seeking to the hole
    after that would skip what lies between, and commits would stop there."""
    raw = TP("raw", 0)
    holes = Holes(frozenset({"raw"}), ProcessorMetrics())
    consumer = consumer_double(holes, {raw})

    async def scenario() -> None:
        fetch = consumer._next_fetch
        await consumer._add_gap(raw, 4, 6)
        tasks = set(consumer._reread_tasks)
        consumer.resume_partitions([raw])  # what Faust's recovery does before the seek
        await consumer.perform_seek()
        fetch.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert all(task.cancelled() for task in tasks)

    asyncio.run(scenario())
    assert consumer._thread.seeks == []
    assert consumer._read_offset[raw] == 2  # where Faust's seek put it
    assert not consumer._rereading


def test_a_hole_is_not_read_again_for_a_revoked_partition() -> None:
    raw = TP("raw", 0)
    holes = Holes(frozenset({"raw"}), ProcessorMetrics())
    consumer = consumer_double(holes, set())

    async def scenario() -> None:
        fetch = consumer._next_fetch
        await consumer._add_gap(raw, 4, 6)
        fetch.set()
        await asyncio.gather(*consumer._reread_tasks)

    asyncio.run(scenario())
    assert consumer._thread.seeks == []  # its next owner starts from the committed offset


def test_settings_and_intervals() -> None:
    assert interval_to_timedelta("365 days") == timedelta(days=365)
    assert interval_to_timedelta("2 years") == timedelta(days=730)
    assert interval_to_timedelta("12 hours") == timedelta(hours=12)
    with pytest.raises(ValueError, match="interval"):
        interval_to_timedelta("forever")
    assert ProcessorSettings().max_age("30 days") == timedelta(days=30)
    assert ProcessorSettings(processor_max_age_days=2).max_age("30 days") == timedelta(days=2)


def test_parse_collects_distinct_topics_only() -> None:
    parse: Parse = parse_messages([message(SENSOR, data="00")] * 3, WINDOW)
    assert list(parse.topics) == [SENSOR]
    assert len(parse.parsed) == 3


def test_dead_letters_are_logged_naming_the_device(caplog: pytest.LogCaptureFixture) -> None:
    bad = topic("tele", "sensor-mode", "J3", "sensor-1", mac="0123456789ab")
    letters = [
        processor_letter(Reason.unknown_mac, "no controller", mqtt_topic=bad, offset=7),
        processor_letter(Reason.bad_hex, "odd digit count", offset=7),
    ]
    with caplog.at_level("WARNING", logger="f2pipe_processor.core"):
        log_dead_letters(letters)
    lines = {r.reason: r for r in caplog.records}  # type: ignore[attr-defined]
    assert set(lines) == {"unknown_mac", "bad_hex"}
    assert lines["unknown_mac"].devices == ["f2-0123456789ab"]  # type: ignore[attr-defined]
    assert lines["bad_hex"].devices == [f"f2-{MAC}"]  # type: ignore[attr-defined]
    assert lines["bad_hex"].detail == "odd digit count"  # type: ignore[attr-defined]
    assert "bad_hex" in lines["bad_hex"].getMessage()


def test_the_latest_changelog_is_compacted_and_rolls_segments() -> None:
    import faust

    from f2pipe_processor.faust_adapter import latest_table

    app = faust.App("changelog-test", broker="kafka://127.0.0.1:1", store="memory://")
    topic = latest_table(app, 6).changelog_topic
    assert topic.compacting
    assert topic.config["segment.ms"] == "600000"
    assert float(topic.config["min.cleanable.dirty.ratio"]) <= 0.5


# --- The seams: lookups through fake layers, the per-record flow with a fake output -----------


class FakeCache:
    """Redis as two dicts; while ``up`` is False every call answers None, as RedisCache does."""

    def __init__(self) -> None:
        self.stored_locations: dict[str, Resolved] = {}
        self.stored_templates: dict[int, TemplateRow] = {}
        self.deleted_macs: set[str] = set()
        self.up = True
        self.last_error: str | None = None

    async def get_locations(self, topics: Collection[Topic]) -> dict[str, Resolved] | None:
        if not self.up:
            return None
        keys = [t.format() for t in topics]
        return {k: self.stored_locations[k] for k in keys if k in self.stored_locations}

    async def put_locations(self, items: Mapping[Topic, Resolved]) -> None:
        if self.up:
            self.stored_locations.update({t.format(): v for t, v in items.items()})

    async def get_templates(self, ids: Collection[int]) -> dict[int, TemplateRow] | None:
        if not self.up:
            return None
        return {i: self.stored_templates[i] for i in ids if i in self.stored_templates}

    async def put_templates(self, rows: Mapping[int, TemplateRow]) -> None:
        if self.up:
            self.stored_templates.update(rows)

    async def delete(self, macs: Iterable[str] = (), template_ids: Iterable[int] = ()) -> None:
        self.deleted_macs |= set(macs)
        for key in [k for k in self.stored_locations if k.split("/")[1][3:] in self.deleted_macs]:
            del self.stored_locations[key]
        for template_id in template_ids:
            self.stored_templates.pop(template_id, None)

    async def flush(self) -> None:
        self.stored_locations.clear()
        self.stored_templates.clear()

    async def probe(self) -> bool:
        return self.up


def all_templates() -> dict[int, TemplateRow]:
    return {r[0]: r for r in (ENV, POWER, DOORS, READER)}


def test_resolver_layers_memory_then_cache_then_registry() -> None:
    registry = FakeRegistry(dict(LOCATIONS), all_templates())
    cache = FakeCache()
    metrics = ProcessorMetrics()
    topics = parse_messages([message(t, data="00") for t in (SENSOR, POWER_TOPIC)], WINDOW).topics

    async def scenario() -> None:
        first = Resolver(registry, cache, metrics=metrics)
        lookup = await first.resolve(topics)  # cold: the registry answers, the cache learns
        assert lookup.stats == {"memory_hits": 0, "memory_misses": 2, "redis_hits": 0,
                                "postgres": 2}  # fmt: skip
        assert registry.queries == 2
        assert set(cache.stored_locations) == {SENSOR, POWER_TOPIC}
        assert set(cache.stored_templates) == {10, 11}

        second = Resolver(registry, cache, metrics=metrics)  # another worker, same cache
        lookup = await second.resolve(topics)
        assert lookup.stats["redis_hits"] == 2
        assert registry.queries == 2  # nothing asked of the registry
        assert lookup.locations == {SENSOR: LOCATIONS[SENSOR], POWER_TOPIC: LOCATIONS[POWER_TOPIC]}
        assert set(lookup.templates) == {10, 11}
        assert (await second.resolve(topics)).stats == {"memory_hits": 2, "memory_misses": 0}

        cache.up = False  # Redis down: straight to the registry, counted as fallbacks
        third = Resolver(registry, cache, metrics=metrics)
        lookup = await third.resolve(topics)
        assert lookup.stats["redis_fallbacks"] == 2
        assert registry.queries == 4

        cache.up = True  # a controller changed: its MAC's entries leave memory and the cache
        await second.invalidate(Change("devices", (100,), (MAC,)))
        assert cache.deleted_macs == {MAC}
        assert cache.stored_locations == {}
        assert (await second.resolve(topics)).stats["memory_misses"] == 2

    asyncio.run(scenario())
    value = metrics.registry.get_sample_value
    assert value("f2pipe_processor_cache_lookups_total", {"layer": "redis", "result": "hit"}) == 4
    assert value("f2pipe_processor_redis_fallbacks_total") == 4  # 2 locations, 2 templates
    assert value("f2pipe_processor_invalidations_total", {"table": "devices"}) == 1


class FakeOutput:
    """Kafka as a list. While ``hold`` is set, each delivery waits until released."""

    def __init__(self) -> None:
        self.hold = True
        self.failures = 0
        self.gates: list[asyncio.Event] = []  # one per delivery, in the order they started
        self.delivered: list[list[OutRecord]] = []

    async def deliver(self, records: Sequence[OutRecord]) -> None:
        gate = asyncio.Event()
        self.gates.append(gate)
        if self.hold:
            await gate.wait()
        self.delivered.append(list(records))


class FakeLatest:
    def __init__(self) -> None:
        self.written: list[LatestValues] = []

    def write(self, partition: int, latest: LatestValues) -> None:
        self.written.append(latest)

    def flush(self) -> list[OutRecord]:
        return [OutRecord("latest-changelog", b"100", b"{}", None, 0)] if self.written else []


class FakeListener:
    connected = True

    async def run(self) -> None:
        return None


class MemoryStates:
    """connectivity.StateBackend in a dict."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def store(self) -> dict[str, Any]:
        return self.data

    def changelog_topic(self) -> str:
        return "connectivity-changelog"

    def changelog_key(self, key: str) -> bytes:
        return key.encode()

    def changelog_value(self, state: list[int]) -> bytes:
        return json.dumps(state).encode()


class FakeProgress:
    """connectivity.PartitionProgress of a worker that owns no partition."""

    def owned(self) -> set[int]:
        return set()

    def highwater(self, partition: int) -> int | None:
        return None

    def committed(self, partition: int) -> int | None:
        return None


def fake_service(output: FakeOutput, latest: FakeLatest) -> ProcessorService:
    metrics = ProcessorMetrics()
    registry = FakeRegistry(dict(LOCATIONS), all_templates())
    cache = FakeCache()
    resolver = Resolver(registry, cache, metrics=metrics)
    kafka = KafkaSettings(kafka_raw_topic="raw", kafka_processed_topic="processed",
                          kafka_deadletter_topic="dlq")  # fmt: skip
    core = BatchProcessor(resolver, "raw", max_future_seconds=600, max_age_seconds=86_400,
                          metrics=metrics, clock=lambda: TS_US / 1e6)  # fmt: skip
    return ProcessorService(
        kafka=kafka,
        core=core,
        output=output,
        latest=latest,
        inflight=InFlight(10, metrics),
        holes=Holes(frozenset({"raw"}), metrics),
        commits=Commits(metrics, clock=lambda: 1000.0),
        listener=FakeListener(),
        resolver=resolver,
        registry=registry,
        cache=cache,
        metrics=metrics,
        connectivity=Connectivity(MemoryStates(), 90.0, metrics),
        progress=FakeProgress(),
        clock=lambda: 1000.0,
    )


def test_the_service_acks_each_record_in_offset_order_once_its_output_is_delivered() -> None:
    output, latest = FakeOutput(), FakeLatest()
    service = fake_service(output, latest)
    bad = RawMessage("tele/f2-x/sensor-mode/J3/sensor-1", b"{}", 0)
    value = encode_raw_batch([message(SENSOR, data=frame("0929 11D7 0264")), bad])
    acked: list[int] = []

    def ack(offset: int) -> Any:
        async def do() -> None:
            acked.append(offset)

        return do

    async def scenario() -> None:
        for offset in range(4):
            await service.handle(0, offset, value, ack(offset))
        await asyncio.sleep(0.01)
        assert len(output.gates) == 4
        for offset in (3, 1, 2):  # delivered out of order; offset 0 still travels
            output.gates[offset].set()
            await asyncio.sleep(0.01)
        assert acked == []
        output.gates[0].set()
        output.hold = False  # or drain's flush of the latest values waits out DRAIN_SECONDS
        await service.drain()
        assert acked == [0, 1, 2, 3]

        output.hold = False
        await service.flush_latest()  # the latest values' changelog: delivered, nothing acked
        assert output.delivered[-1][0].topic == "latest-changelog"

    asyncio.run(scenario())
    processed, letter = output.delivered[0]
    assert (processed.topic, letter.topic) == ("processed", "dlq")
    assert len(decode_processed_batch(processed.value).readings) == 3
    assert [set(w) for w in latest.written] == [{100}] * 4
    assert service.metrics.records._value.get() == 4
    assert service.metrics.dead_letters.labels("bad_topic")._value.get() == 4

    ok, details = service.health()
    assert ok, details


def test_commits_refused_again_and_again_for_a_minute_make_the_worker_unhealthy() -> None:
    now = [1000.0]
    metrics = ProcessorMetrics()
    commits = Commits(metrics, clock=lambda: now[0])
    service = fake_service(FakeOutput(), FakeLatest())
    service.commits = commits
    commits.failed(RuntimeError("refused"))
    now[0] += 3600
    assert service.health()[0]  # one refusal, then an idle hour: no trend
    for _ in range(COMMITS_REFUSED_UNHEALTHY - 2):
        commits.failed(RuntimeError("refused"))
    assert service.health()[0]
    commits.succeeded()
    for _ in range(COMMITS_REFUSED_UNHEALTHY):
        commits.failed(RuntimeError("refused"))  # a burst in a rebalance's second: routine
    now[0] += COMMITS_REFUSED_UNHEALTHY_S - 1
    assert service.health()[0]
    now[0] += 1
    ok, details = service.health()
    assert not ok
    assert details["commits"] == f"{COMMITS_REFUSED_UNHEALTHY} refused in a row (RuntimeError)"
    commits.succeeded()
    assert service.health()[0]
    refused = 2 * COMMITS_REFUSED_UNHEALTHY - 1
    assert metrics.commit_failures.labels(error="RuntimeError")._value.get() == refused


def refusing_thread(
    commits: Commits, assigned: set[TP], raises: Exception | None
) -> tuple[SimpleNamespace, list[dict[Any, Any]]]:
    """What ShortFetchConsumerThread._commit uses of itself, with aiokafka's consumer
    refusing the commit with `raises` (or accepting it)."""
    sent: list[dict[Any, Any]] = []

    async def commit(offsets: dict[Any, Any]) -> None:
        sent.append(offsets)
        if raises is not None:
            raise raises

    consumer = SimpleNamespace(commit=commit)
    thread = SimpleNamespace(
        consumer=SimpleNamespace(app=SimpleNamespace(f2pipe_commits=commits)),
        assignment=lambda: assigned,
        _ensure_consumer=lambda: consumer,
        tp_last_committed_at={},
    )
    return thread, sent


@pytest.mark.parametrize(
    "refusal",
    [
        CommitFailedError("Commit cannot be completed since the group has already rebalanced"),
        IllegalStateError("No partitions assigned"),
        UnknownError("the broker's own"),
        GroupAuthorizationFailedError("f2pipe-processor"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_refused_commit_is_counted_not_a_crash_of_the_worker(refusal: Exception) -> None:
    """Faust's consumer thread crashes the worker on any refused commit but "already
    rebalanced"; ours counts it and goes on."""
    metrics = ProcessorMetrics()
    commits = Commits(metrics, clock=lambda: 0.0)
    raw = TP("raw", 0)
    thread, sent = refusing_thread(commits, {raw}, refusal)
    commit = ShortFetchConsumerThread._commit
    assert asyncio.run(commit(thread, {raw: 42, TP("raw", 1): 7})) is False  # type: ignore[arg-type]
    assert [{(tp.topic, tp.partition): v.offset for tp, v in s.items()} for s in sent] == [
        {("raw", 0): 42}  # only what is still assigned
    ]
    assert commits.failed_in_a_row == 1
    assert metrics.commit_failures.labels(error=type(refusal).__name__)._value.get() == 1
    assert thread.tp_last_committed_at == {}

    accepted, _ = refusing_thread(commits, {raw}, None)
    assert asyncio.run(commit(accepted, {raw: 43})) is True  # type: ignore[arg-type]
    assert commits.failed_in_a_row == 0
    assert set(accepted.tp_last_committed_at) == {raw}

    nothing_left, sent = refusing_thread(commits, set(), None)
    assert asyncio.run(commit(nothing_left, {raw: 44})) is False  # type: ignore[arg-type]
    assert sent == []  # a rebalance took it: nothing asked of the broker


def test_latest_table_coalesces_changes_between_flushes() -> None:
    class Backend:
        def __init__(self) -> None:
            self.data: dict[str, Entry] = {}
            self.serialised: list[str] = []

        def store(self) -> dict[str, Entry]:
            return self.data

        def changelog_topic(self) -> str:
            return "app-latest-changelog"

        def changelog_key(self, key: str) -> bytes:
            self.serialised.append(key)
            return key.encode()

        def changelog_value(self, entry: Entry) -> bytes:
            return json.dumps(entry).encode()

    backend = Backend()
    table = LatestTable(backend)
    table.write(1, {7: {1: (100, 20.0, "temperature")}, 8: {2: (100, 1.0, "door")}})
    table.write(1, {7: {1: (101, 21.0, "temperature")}})
    table.write(1, {8: {2: (99, 0.0, "door")}})  # older than what is stored: no change
    records = sorted(table.flush())
    assert [(r.topic, r.key, r.partition) for r in records] == [
        ("app-latest-changelog", b"1:7", 1),
        ("app-latest-changelog", b"1:8", 1),
    ]
    assert json.loads(records[0].value) == {"1": [101, 21.0, "temperature"]}
    assert table.flush() == []
    table.write(1, {7: {1: (102, 22.0, "temperature")}})
    assert [r.key for r in table.flush()] == [b"1:7"]
    assert sorted(backend.serialised) == ["1:7", "1:8"]  # each key serialised and partitioned once


# --- Metrics and wiring ---------------------------------------------------------------------

EXPORTED = (
    "records", "messages", "readings", "events", "dead_letters", "cache_lookups",
    "lookup_seconds", "batch_seconds", "stage_seconds", "redis_up", "redis_fallbacks",
    "postgres_up", "postgres_retries", "invalidations", "cache_flushes", "records_refused",
    "produce_retries", "inflight_records", "skipped_by_faust", "assigned_partitions",
    "commit_failures",
)  # fmt: skip


def test_metrics_instances_share_no_counter_and_keep_the_exported_names() -> None:
    first, second = ProcessorMetrics(), ProcessorMetrics()
    first.readings.inc(3)
    assert second.readings._value.get() == 0
    names = {family.name for family in first.registry.collect()}
    assert {f"f2pipe_processor_{name}" for name in EXPORTED} <= names
    assert "process_cpu_seconds" in names
    # Every outcome of a hole is exported from the start, so the alert sees the first one.
    text = generate_latest(first.registry).decode()
    for outcome in ("healed", "no_records", "left"):
        assert f'f2pipe_processor_holes_total{{outcome="{outcome}"}} 0.0' in text


def test_build_wires_one_metrics_registry_into_the_service_and_faust(
    capfd: pytest.CaptureFixture[str],
) -> None:
    from prometheus_client import generate_latest

    from f2pipe_processor.main import build
    from f2pipe_processor.settings import Settings

    processor = build(Settings.load(), partitions=3)  # no server is contacted
    try:
        service, metrics = processor.service, processor.metrics
        assert service.metrics is metrics
        assert service.core.metrics is metrics
        assert service.resolver.metrics is metrics
        assert {"/healthz", "/metrics", "/latest/{device_id}"} <= set(processor.app.web.views)
        assert processor.app.f2pipe_holes is service.holes
        text = generate_latest(metrics.registry).decode()
        assert "f2pipe_processor_readings_total 0.0" in text
        assert "f2pipe_processor_faust_" in text  # Faust's sensor counts into our registry
    finally:
        processor.output.close(0)


def test_a_rebalance_sets_the_share_of_raw_partitions_the_worker_shows() -> None:
    from faust.types import TP

    from f2pipe_processor.main import build
    from f2pipe_processor.settings import Settings

    settings = Settings.load()
    processor = build(settings, partitions=6)  # no server is contacted
    try:
        raw = settings.kafka.kafka_raw_topic
        gauge = processor.metrics.assigned_partitions
        # The whole assignment after a rebalance: raw partitions and other topics' (changelog).
        assigned = {TP(raw, 0), TP(raw, 3), TP(raw, 5), TP("latest-changelog", 0)}
        asyncio.run(processor.app.on_partitions_assigned.send(assigned))
        assert gauge._value.get() == 3
        asyncio.run(processor.app.on_partitions_assigned.send({TP(raw, 1)}))
        assert gauge._value.get() == 1  # a share that shrank, not a sum
    finally:
        processor.output.close(0)


def test_the_processor_port_routes_only_our_pages_none_of_faust_s_views() -> None:
    from f2pipe_processor.main import build
    from f2pipe_processor.settings import Settings

    processor = build(Settings.load(), partitions=3)  # no server is contacted
    try:
        web = processor.app.web
        web.blueprints.apply(web)  # what the worker does when its web server starts
        ours = {"/healthz", "/metrics", "/latest/{device_id}"}
        # Not /router/… (the cluster's URLs), /table/… (table data), "/", /graph, /stats.
        assert set(web.views) == ours
        aiohttp_app = cast(Any, web).web_app  # the aiohttp driver's application
        routed = {route.resource.canonical for route in aiohttp_app.router.routes()}
        assert routed == ours
    finally:
        processor.output.close(0)


def test_only_the_faust_adapter_imports_faust() -> None:
    package = Path(faust_adapter.__file__).parent
    importers = set()
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            if any(name.split(".")[0] in {"faust", "mode", "aiokafka"} for name in names):
                importers.add(path.name)
    assert importers == {"faust_adapter.py"}
    # Nor indirectly: the service and its core load without Faust.
    probe = (
        "import sys, f2pipe_processor.service\n"
        "print(sorted({'faust', 'mode', 'aiokafka'} & set(sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout.strip()  # fmt: skip
    assert loaded == "[]"


# --- The Faust adapter's pin --------------------------------------------------------------------


def test_faust_and_aiokafka_are_the_versions_the_adapter_was_checked_against() -> None:
    lock = tomllib.loads((Path(__file__).parents[2] / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"] if p["name"] in PINNED}
    for package, pinned in PINNED.items():
        installed = version(package)
        if installed == pinned == locked.get(package):
            continue
        hooks = "\n".join(f"  - {h.label}: {h.why}" for h in HOOKS if h.package == package)
        pytest.fail(
            f"{package} {installed} is installed (uv.lock: {locked.get(package)}), but "
            f"services/processor/f2pipe_processor/faust_adapter.py was checked against "
            f"{pinned}. Re-check each of these hooks in {package} {installed}, run "
            f"tests/integration/test_processor_worker.py (kill -9), then update PINNED:\n{hooks}",
            pytrace=False,
        )


@pytest.mark.parametrize("hook", HOOKS, ids=lambda hook: hook.label)
def test_each_faust_hook_still_exists(hook: Hook) -> None:
    where = f"{hook.package} {version(hook.package)}"
    assert hook.exists(), f"{hook.label} is gone in {where}; faust_adapter.py needs it: {hook.why}"
    if hook.ours is None:
        return
    theirs, ours = getattr(hook.owner, hook.name), getattr(hook.ours, hook.name)
    assert ours is not theirs, f"{hook.ours.__qualname__} no longer overrides {hook.label}"
    if inspect.isclass(theirs):
        assert issubclass(ours, theirs), hook.label
    else:
        expected = list(inspect.signature(theirs).parameters)
        assert list(inspect.signature(ours).parameters) == expected, (
            f"{hook.label} takes {expected} in {where}: re-check the override ({hook.why})"
        )


def test_the_prompt_table_manager_starts_as_faust_s_does_but_for_its_sleep() -> None:
    from faust.tables import TableManager

    def steps(method: Any) -> list[str]:
        body = inspect.getsource(method).split(":", 1)[1]
        lines = [line.strip() for line in body.splitlines()]
        return [line for line in lines if line and not line.startswith('"""')]

    theirs = steps(TableManager.on_start)
    assert "await self.sleep(1.0)" in theirs
    assert steps(faust_adapter.PromptTableManager.on_start) == [
        line for line in theirs if "sleep" not in line
    ]


def test_the_worker_consumer_waits_at_most_the_short_fetch_wait() -> None:
    """Faust passes fetch_max_wait_ms=1500, which Tansu waits out on every fetch that finds
    nothing new; ShortFetchConsumerThread sets aiokafka's attribute, which start() hands to
    the fetcher: both still so in the pinned aiokafka."""
    init = inspect.getsource(aiokafka.AIOKafkaConsumer.__init__)
    assert "self._fetch_max_wait_ms = fetch_max_wait_ms" in init  # what the thread overwrites
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(
        aiokafka.AIOKafkaConsumer.start
    )
    source = inspect.getsource(ShortFetchConsumerThread._create_worker_consumer)
    assert "consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS" in source
    assert FETCH_MAX_WAIT_MS <= 100


def test_no_aiokafka_client_asks_the_broker_to_create_a_topic_by_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broker that lost its topics would otherwise create the raw topic with its own
    partition count at the consumer's next metadata refresh (issue 19, item 1)."""
    import aiokafka.client  # type: ignore[import-untyped]
    from aiokafka.protocol.metadata import (  # type: ignore[import-untyped]
        MetadataRequest,
        MetadataRequest_v5,
    )

    assert MetadataRequest(["raw"]).build(MetadataRequest_v5).allow_auto_topic_creation is True
    # Put back after the test: other tests of this process may use aiokafka as it comes.
    monkeypatch.setattr(aiokafka.client, "MetadataRequest", MetadataRequest)
    faust_adapter.never_auto_create_topics()
    asked = aiokafka.client.MetadataRequest(["raw"]).build(MetadataRequest_v5)
    assert (asked.topics, asked.allow_auto_topic_creation) == (["raw"], False)

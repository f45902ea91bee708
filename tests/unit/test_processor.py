"""The processor's pure parts: decoding a batch, invalidation, acks, latest values, settings."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest

from f2pipe_processor import metrics
from f2pipe_processor.acks import InFlight
from f2pipe_processor.batch import BatchResult, log_dead_letters
from f2pipe_processor.decoder import (
    Parse,
    TimestampWindow,
    decode_messages,
    parse_messages,
)
from f2pipe_processor.faust_consumer import SafeSeekConsumer
from f2pipe_processor.invalidation import parse_change
from f2pipe_processor.latest import merge, render
from f2pipe_processor.output import output_records
from f2pipe_processor.registry import (
    Location,
    Resolved,
    Template,
    TemplateRow,
    Unresolved,
    pack_resolved,
    unpack_resolved,
)
from f2pipe_processor.resolver import Change, Resolver
from f2pipe_processor.settings import ProcessorSettings, interval_to_timedelta
from f2pipe_shared.deadletters import DeadLetter, Reason, Stage
from f2pipe_shared.decoding import build_modbus_response, format_hex_frame
from f2pipe_shared.records import ProcessedBatch, RawMessage, decode_processed_batch
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
TEMPLATES = {row[0]: Template.from_row(row) for row in (ENV, POWER, DOORS, READER)}


def topic(kind: str, mode: str, connector: str, component: str, mac: str = MAC) -> str:
    return f"{kind}/f2-{mac}/{mode}/{connector}/{component}"


SENSOR = topic("tele", "sensor-mode", "J3", "sensor-1")
POWER_TOPIC = topic("tele", "sensor-mode", "J3", "sensor-3")
DOOR = topic("stat", "access-control-mode", "J1", "door-sensors")
SCAN = topic("tele", "access-control-mode", "J1", "reader-1")
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
    resolver = Resolver(registry, None)  # type: ignore[arg-type]
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
        inflight = InFlight(limit=10)
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
        inflight = InFlight(limit=10)
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
    dead = DeadLetter(
        stage=Stage.processor,
        reason=Reason.crc_mismatch,
        detail="CRC",
        original=b'{"data": "01"}',
        mqtt_topic=SENSOR,
        source_topic="raw",
        source_partition=2,
        source_offset=9,
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


def test_a_hole_in_the_raw_topic_is_never_acked() -> None:
    added: list[tuple[int, int]] = []

    async def base_add_gap(tp: Any, start: int, end: int) -> None:
        added.append((start, end))

    consumer = SimpleNamespace(contiguous_topics=frozenset({"raw"}), holes_seen=0)
    before = metrics.SKIPPED_BY_FAUST._value.get()
    tp = SimpleNamespace(topic="raw", partition=0)
    asyncio.run(SafeSeekConsumer._add_gap(consumer, tp, 4, 6))  # type: ignore[arg-type]
    assert consumer.holes_seen == 1
    assert added == []
    assert metrics.SKIPPED_BY_FAUST._value.get() - before == 2


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
        DeadLetter(stage=Stage.processor, reason=Reason.unknown_mac, detail="no controller",
                   original=b"{}", mqtt_topic=bad, source_partition=2, source_offset=7),
        DeadLetter(stage=Stage.processor, reason=Reason.bad_hex, detail="odd digit count",
                   original=b"{}", mqtt_topic=SENSOR, source_partition=2, source_offset=7),
    ]  # fmt: skip
    with caplog.at_level("WARNING", logger="f2pipe_processor.batch"):
        log_dead_letters(letters)
    lines = {r.reason: r for r in caplog.records}  # type: ignore[attr-defined]
    assert set(lines) == {"unknown_mac", "bad_hex"}
    assert lines["unknown_mac"].devices == ["f2-0123456789ab"]  # type: ignore[attr-defined]
    assert lines["bad_hex"].devices == [f"f2-{MAC}"]  # type: ignore[attr-defined]
    assert lines["bad_hex"].detail == "odd digit count"  # type: ignore[attr-defined]
    assert "bad_hex" in lines["bad_hex"].getMessage()


def test_the_latest_changelog_is_compacted_and_rolls_segments() -> None:
    import faust

    from f2pipe_processor.latest import latest_table

    app = faust.App("changelog-test", broker="kafka://127.0.0.1:1", store="memory://")
    topic = latest_table(app, 6).changelog_topic
    assert topic.compacting
    assert topic.config["segment.ms"] == "600000"
    assert float(topic.config["min.cleanable.dirty.ratio"]) <= 0.5

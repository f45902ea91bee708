"""The sink's row checks, COPY encoding, batch bookkeeping and bulk histogram."""

from __future__ import annotations

import json
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from f2pipe_shared.deadletters import Reason, Stage
from f2pipe_shared.records import Event, ProcessedBatch, Reading, encode_processed_batch
from f2pipe_sink.batch import Batch, take
from f2pipe_sink.metrics import BulkHistogram
from f2pipe_sink.rows import (
    COPY_HEADER,
    COPY_TRAILER,
    MAX_TIMESTAMP_US,
    PG_EPOCH_US,
    READING_ROW_BYTES,
    copy_payload,
    pack_event,
    pack_events,
    pack_readings,
    reading_problem,
)

T0 = 1_795_000_000_000_000
ROW = struct.Struct(">hiqiqiiid")


def unpack(data: bytes) -> list[Reading]:
    return [
        Reading(ts + PG_EPOCH_US, dev, dp, value)
        for _, _, ts, _, dev, _, dp, _, value in ROW.iter_unpack(data)
    ]


def test_valid_readings_encode_to_binary_copy_rows() -> None:
    readings = [Reading(T0 + i, 10**12 + i, 2**31 - 1, i / 3) for i in range(100)]
    packed = pack_readings(readings)
    assert packed.rejected == []
    assert packed.count == 100
    assert len(packed.data) == 100 * READING_ROW_BYTES
    assert unpack(packed.data) == readings
    assert packed.timestamps == [r.timestamp_us for r in readings]


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (Reading(T0, 1, 1, math.nan), "not finite"),
        (Reading(T0, 1, 1, math.inf), "not finite"),
        (Reading(T0, 1, 1, -math.inf), "not finite"),
        (Reading(-1, 1, 1, 1.0), "timestamp outside"),
        (Reading(MAX_TIMESTAMP_US, 1, 1, 1.0), "timestamp outside"),
        (Reading(T0, 1, 2**31, 1.0), "does not fit"),
        (Reading(T0, 2**63, 1, 1.0), "does not fit"),
        (Reading(T0, 1, 1, "7"), "does not fit"),  # type: ignore[arg-type]
        (Reading(T0, 1, 1, 10**400), "does not fit"),
        (Reading(float(T0), 1, 1, 1.0), "does not fit"),  # type: ignore[arg-type]
        (Reading("2026-01-01", 1, 1, 1.0), "does not fit"),  # type: ignore[arg-type]
        (Reading(T0, None, 1, 1.0), "does not fit"),  # type: ignore[arg-type]
    ],
)
def test_invalid_readings_are_left_out_and_described(bad: Reading, problem: str) -> None:
    good = [Reading(T0 + i, 1, 1, 1.0) for i in range(4)]
    packed = pack_readings([*good[:2], bad, *good[2:]])
    assert unpack(packed.data) == good
    assert packed.timestamps == [r.timestamp_us for r in good]
    assert len(packed.rejected) == 1
    assert packed.rejected[0].startswith("reading 2 ")
    assert problem in packed.rejected[0]


@given(
    st.lists(
        st.tuples(
            st.one_of(st.integers(-(2**64), 2**64), st.floats(), st.none()),
            st.one_of(st.integers(-(2**64), 2**64), st.booleans()),
            st.integers(-(2**33), 2**33),
            st.one_of(st.floats(), st.integers(-(2**1100), 2**1100), st.text(max_size=2)),
        ),
        max_size=20,
    )
)
def test_fast_and_slow_paths_accept_the_same_rows(rows: list[tuple[object, ...]]) -> None:
    readings = [Reading(*row) for row in rows]  # type: ignore[arg-type]
    packed = pack_readings(readings)
    valid = [r for r in readings if reading_problem(r) is None]
    assert packed.count == len(valid)
    assert len(packed.rejected) == len(readings) - len(valid)
    if not packed.rejected:  # all valid: the fast path's bytes are the slow path's bytes
        assert unpack(packed.data) == [Reading(t, d, p, float(v)) for t, d, p, v in valid]


def test_events_encode_text_and_jsonb() -> None:
    row = pack_event(Event(T0, 42, "scan", {"data": "04A1", "é": [1, None, True]}))
    count, tlen, ts, dlen, device = struct.unpack_from(">hiqiq", row)
    assert (count, tlen, ts + PG_EPOCH_US, dlen, device) == (4, 8, T0, 8, 42)
    rest = row[struct.calcsize(">hiqiq") :]
    (klen,) = struct.unpack_from(">i", rest)
    assert rest[4 : 4 + klen] == b"scan"
    (jlen,) = struct.unpack_from(">i", rest, 4 + klen)
    jsonb = rest[8 + klen : 8 + klen + jlen]
    assert jsonb[:1] == b"\x01"
    assert json.loads(jsonb[1:]) == {"data": "04A1", "é": [1, None, True]}


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        (Event(T0, 1, "scan", {"x": math.nan}), "not JSON"),
        (Event(T0, 1, "scan", {"x": b"bytes"}), "not JSON"),
        (Event(T0, 1, "scan", {"x": "nul\x00"}), "NUL"),
        (Event(T0, 1, "sc\x00an", {}), "without NUL"),
        (Event(T0, 1, 7, {}), "not text"),  # type: ignore[arg-type]
        (Event(T0, 1, "scan", [1, 2]), "not an object"),  # type: ignore[arg-type]
        (Event(-1, 1, "scan", {}), "timestamp"),
        (Event(T0, 2**64, "scan", {}), "not a bigint"),
        (Event(T0, 1, "scan\ud800", {}), "surrogate"),
    ],
)
def test_invalid_events_are_left_out_and_described(event: Event, problem: str) -> None:
    rows, rejected = pack_events([Event(T0, 1, "scan", {}), event])
    assert len(rows) == 1
    assert len(rejected) == 1
    assert rejected[0].startswith("event 1: ")
    assert problem in rejected[0]


def test_copy_payload_frames_the_rows() -> None:
    assert copy_payload([b"a", b"b"]) == COPY_HEADER + b"ab" + COPY_TRAILER
    assert COPY_HEADER.startswith(b"PGCOPY\n\xff\r\n\x00")


def encoded(readings: list[Reading], events: list[Event] | None = None) -> bytes:
    return encode_processed_batch(ProcessedBatch(1, 2, readings, events or []))


def test_take_keeps_valid_rows_and_dead_letters_the_rest() -> None:
    value = encoded(
        [Reading(T0, 1, 1, 1.0), Reading(T0, 1, 2, math.nan)],
        [Event(T0, 1, "scan", {"ok": True}), Event(T0, 1, "scan", {"x": b"no"})],
    )
    record, dead = take("processed", 3, 77, value)
    assert (record.n_readings, len(record.events), record.rows) == (1, 1, 2)
    assert record.value == value
    assert dead is not None
    assert (dead.stage, dead.reason) == (Stage.sink, Reason.invalid_record)
    assert (dead.source_topic, dead.source_partition, dead.source_offset) == ("processed", 3, 77)
    assert dead.original == value
    assert dead.detail.startswith("2 of 4 rows invalid")


@pytest.mark.parametrize(
    "value", [b"garbage", None, b"\x95\x02\x00\x00\x90\x90", b"\x95\x01\x00\x00\x91\x91\x01\x90"]
)
def test_take_turns_a_bad_record_into_an_empty_one_and_a_bad_batch_letter(
    value: bytes | None,
) -> None:
    record, dead = take("processed", 0, 5, value)
    assert (record.rows, record.offset) == (0, 5)
    assert dead is not None
    assert dead.reason is Reason.bad_batch
    assert dead.original == (value or b"")


def test_take_truncates_long_details() -> None:
    value = encoded([Reading(T0, 1, i, math.nan) for i in range(500)])
    _, dead = take("processed", 0, 0, value)
    assert dead is not None
    assert len(dead.detail) == 2000


def test_batch_tracks_rows_offsets_and_due_time() -> None:
    batch = Batch()
    assert not batch.due(0.0, 10, 1.0)
    assert batch.deadline(1.0) is None
    first, _ = take("t", 0, 5, encoded([Reading(T0 + i, 1, 1, 1.0) for i in range(4)]))
    second, _ = take("t", 0, 6, encoded([Reading(T0 + 10 + i, 1, 1, 1.0) for i in range(4)]))
    other, dead = take("t", 1, 9, b"junk")
    batch.add(first)
    batch.add(other, dead)
    batch.add(second)
    assert batch.rows == 8
    assert batch.next_offsets == {("t", 0): 7, ("t", 1): 10}
    assert batch.started is not None
    assert batch.due(batch.started, 8, 1.0)  # size
    assert not batch.due(batch.started, 9, 1.0)
    assert batch.due(batch.started + 1.0, 9, 1.0)  # time
    assert sorted(batch.timestamps()) == sorted(first.timestamps + second.timestamps)

    kept = batch.without([("t", 0)])
    assert [r.offset for r in kept.records] == [9]
    assert kept.next_offsets == {("t", 1): 10}
    assert len(kept.dead_letters) == 1
    assert kept.started == batch.started
    assert batch.without([("t", 1)]).dead_letters == []
    assert batch.without([("t", 0), ("t", 1)]).started is None


def test_bulk_histogram_counts_ages_into_cumulative_buckets() -> None:
    registry = CollectorRegistry()
    hist = BulkHistogram("f2pipe_test_age_seconds", "ages", (0.1, 1.0, 10.0))
    registry.register(hist)
    now = 2_000_000_000_000_000
    ages = [0.05, 0.1, 0.5, 2.0, 2.0, 50.0, -1.0]  # a device clock ahead counts as age <= 0.1
    hist.observe_ages(now, [now - round(a * 1e6) for a in ages])
    hist.observe_ages(now, [])
    text = generate_latest(registry).decode()
    assert 'f2pipe_test_age_seconds_bucket{le="0.1"} 3.0' in text
    assert 'f2pipe_test_age_seconds_bucket{le="1.0"} 4.0' in text
    assert 'f2pipe_test_age_seconds_bucket{le="10.0"} 6.0' in text
    assert 'f2pipe_test_age_seconds_bucket{le="+Inf"} 7.0' in text
    assert "f2pipe_test_age_seconds_count 7.0" in text
    assert "f2pipe_test_age_seconds_sum 53.65" in text

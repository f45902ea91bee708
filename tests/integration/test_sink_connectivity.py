"""The sink keeps telemetry.controller_status (migration 0014) from the processed stream:
connectivity transitions (newest wins, replays never go backwards) and last-seen reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import psycopg
import pytest

from f2pipe.migrate import apply_migrations
from f2pipe_shared.records import (
    Event,
    ProcessedBatch,
    Reading,
    Seen,
    decode_processed_batch,
    encode_processed_batch,
)
from f2pipe_shared.timestamps import format_device_timestamp
from f2pipe_sink.batch import Record, take
from f2pipe_sink.writer import Writer

pytestmark = [pytest.mark.integration, pytest.mark.database]

T0 = 1_795_000_000_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECOND = 1_000_000


@pytest.fixture
def db(pg_conninfo: str) -> str:
    apply_migrations(pg_conninfo)
    return pg_conninfo


def at(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def transition(device: int, t: int, status: str, last_seen: int) -> Event:
    data = {"status": status, "last_seen": format_device_timestamp(at(last_seen))}
    return Event(t, device, "connectivity", data)


def record(
    events: list[Event], seen: tuple[Seen, ...] = (), offset: int = 0, readings: int = 0
) -> Record:
    rows = [Reading(T0 + i, 99, 1, 1.0) for i in range(readings)]
    value = encode_processed_batch(ProcessedBatch(0, offset, rows, events, seen))
    rec, dead = take("processed", 0, offset, value)
    assert dead is None
    return rec


def status(conninfo: str) -> dict[int, tuple[Any, ...]]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT device_id, status, changed_at, last_seen FROM telemetry.controller_status"
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


def test_transitions_and_reports_keep_the_newest_state(db: str) -> None:
    writer = Writer(db)
    try:
        online = transition(5, T0, "online", T0)
        result = writer.write([record([online])])
        assert (result.events, result.statuses) == (1, 1)
        assert status(db) == {5: ("online", at(T0), at(T0))}

        # A last-seen report moves last_seen only; it never touches the status. A batch with
        # no other row still gets written.
        writer.write([record([], (Seen(5, T0 + 20 * SECOND),), offset=1)])
        assert status(db) == {5: ("online", at(T0), at(T0 + 20 * SECOND))}

        # Offline (last_seen + timeout) and online again, in one batch, with a report for a
        # controller not seen before (inserted as online: it was heard).
        off = transition(5, T0 + 23 * SECOND, "offline", T0 + 20 * SECOND)
        back = transition(5, T0 + 60 * SECOND, "online", T0 + 60 * SECOND)
        writer.write([record([off], offset=2), record([back], (Seen(6, T0 + SECOND),), offset=3)])
        assert status(db) == {
            5: ("online", at(T0 + 60 * SECOND), at(T0 + 60 * SECOND)),
            6: ("online", None, at(T0 + SECOND)),
        }

        # Replays of everything, older first: the events are stored once, the state does not
        # go back to offline nor last_seen to an older time.
        replay = writer.write(
            [record([online]), record([off], (Seen(5, T0 + 20 * SECOND),), offset=2)]
        )
        assert replay.events == 0
        assert status(db)[5] == ("online", at(T0 + 60 * SECOND), at(T0 + 60 * SECOND))

        # Offline later on: a transition for a controller only reported before.
        later = transition(6, T0 + 4 * SECOND, "offline", T0 + SECOND)
        writer.write([record([later], offset=4, readings=3)])
        assert status(db)[6] == ("offline", at(T0 + 4 * SECOND), at(T0 + SECOND))
    finally:
        writer.close()
    with psycopg.connect(db) as conn:
        stored = conn.execute(
            "SELECT device_id, data->>'status' FROM telemetry.events "
            "WHERE kind = 'connectivity' ORDER BY timestamp"
        ).fetchall()
    assert stored == [(5, "online"), (6, "offline"), (5, "offline"), (5, "online")]


def test_an_invalid_transition_is_described_and_the_rest_written(db: str) -> None:
    bad = Event(T0, 5, "connectivity", {"status": "sleepy", "last_seen": "yesterday"})
    good = transition(7, T0, "online", T0)
    value = encode_processed_batch(ProcessedBatch(0, 0, [], [bad, good], (Seen(-1, -5),)))
    rec, dead = take("processed", 0, 0, value)
    assert dead is not None
    assert "not a valid transition" in dead.detail
    assert "last-seen report 0" in dead.detail
    writer = Writer(db)
    try:
        writer.write([rec])
    finally:
        writer.close()
    assert status(db) == {7: ("online", at(T0), at(T0))}


def test_processed_records_of_the_first_framing_still_decode() -> None:
    # Records an older processor wrote (version 1, no last-seen reports) are still in Kafka.
    v1 = msgpack.packb([1, 2, 3, [[T0, 1, 2, 0.5]], [[T0, 1, "scan", {"data": "ab"}]]])
    batch = decode_processed_batch(v1)
    assert batch == ProcessedBatch(
        2, 3, [Reading(T0, 1, 2, 0.5)], [Event(T0, 1, "scan", {"data": "ab"})]
    )
    assert batch.seen == ()
    # Without reports the processor still writes version 1; with them, version 2.
    assert encode_processed_batch(batch)[1] == 1
    v2 = encode_processed_batch(batch._replace(seen=(Seen(1, T0),)))
    assert v2[1] == 2
    assert decode_processed_batch(v2).seen == (Seen(1, T0),)

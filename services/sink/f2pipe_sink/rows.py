"""Readings and events checked and encoded as PostgreSQL binary COPY rows.

The sink checks every row before it goes near the database, because PostgreSQL would accept
some values we must never store (NaN and infinity are valid `double precision`) and refuse
others only at COPY time, which costs a rolled-back transaction and a bisection to find the
row. Encoding here, once per Kafka record, also makes the write itself a byte copy: a batch's
COPY payload is the records' chunks joined.

Binary COPY row: int16 field count, then per field an int32 length and the value in network
byte order. `timestamptz` is int64 microseconds since 2000-01-01 UTC (PostgreSQL's epoch),
so a device timestamp in Unix microseconds needs one subtraction, no datetime objects.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from f2pipe_shared.records import Event, Reading, Seen
from f2pipe_shared.timestamps import parse_device_timestamp, to_epoch_us

PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 00:00:00 UTC in Unix microseconds

# Device timestamps the sink stores: 1970-01-01 <= t < 2100-01-01. Wider than anything a
# controller should send (the processor rejects implausible ones relative to now); narrow
# enough that a unit mix-up (seconds, nanoseconds) is caught instead of creating a chunk in
# year 57,000.
MIN_TIMESTAMP_US = 0
MAX_TIMESTAMP_US = 4_102_444_800_000_000

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
COPY_TRAILER = b"\xff\xff"

# (timestamptz, bigint, integer, double precision): the column types of telemetry.readings.
_READING = struct.Struct(">hiqiqiiid")
READING_ROW_BYTES = _READING.size
_EVENT_HEAD = struct.Struct(">hiqiq")  # 4 fields; timestamptz; bigint
_LENGTH = struct.Struct(">i")
_JSONB_VERSION = b"\x01"  # jsonb's binary form: a version byte, then the JSON text

# struct's own range errors are what a value that does not fit its column raises.
_PACK_ERRORS = (struct.error, OverflowError, TypeError)


class PackedReadings:
    """A record's valid readings as COPY rows, their device timestamps, and what was refused."""

    __slots__ = ("data", "rejected", "timestamps")

    def __init__(self, data: bytes, timestamps: list[int], rejected: list[str]) -> None:
        self.data = data
        self.timestamps = timestamps
        self.rejected = rejected

    @property
    def count(self) -> int:
        return len(self.data) // READING_ROW_BYTES


def pack_readings(readings: Sequence[Reading]) -> PackedReadings:
    """Encode the valid readings; describe each invalid one (index and why)."""
    pack = _READING.pack
    epoch = PG_EPOCH_US
    # Fast path: one comprehension and three C-level checks for the usual all-valid record.
    try:
        data = b"".join([pack(4, 8, t - epoch, 8, d, 4, p, 8, v) for t, d, p, v in readings])
        timestamps = [r[0] for r in readings]
        if (
            not timestamps
            or (min(timestamps) >= MIN_TIMESTAMP_US and max(timestamps) < MAX_TIMESTAMP_US)
        ) and all(map(math.isfinite, [r[3] for r in readings])):
            return PackedReadings(data, timestamps, [])
    except _PACK_ERRORS:
        pass
    # Slow path: row by row, keeping the good ones.
    rows: list[bytes] = []
    timestamps = []
    rejected = []
    for index, reading in enumerate(readings):
        problem = reading_problem(reading)
        if problem is None:
            t, d, p, v = reading
            rows.append(pack(4, 8, t - epoch, 8, d, 4, p, 8, v))
            timestamps.append(t)
        else:
            rejected.append(f"reading {index} {tuple(reading)!r:.120}: {problem}")
    return PackedReadings(b"".join(rows), timestamps, rejected)


def reading_problem(reading: Reading) -> str | None:
    """Why this reading can never be stored, or None. Accepts exactly what the fast path does."""
    t, d, p, v = reading
    try:
        _READING.pack(4, 8, t - PG_EPOCH_US, 8, d, 4, p, 8, v)
    except _PACK_ERRORS as exc:
        return f"does not fit the columns' types: {exc}"
    if not MIN_TIMESTAMP_US <= t < MAX_TIMESTAMP_US:
        return "timestamp outside 1970-01-01..2099-12-31"
    if not math.isfinite(v):
        return f"value {v!r} is not finite"
    return None


def pack_event(event: Event) -> bytes:
    """One event as a COPY row (timestamptz, bigint, text, jsonb); ValueError says why not."""
    t, d, kind, data = event
    if type(kind) is not str or "\x00" in kind:
        raise ValueError(f"kind {kind!r:.60} is not text without NUL")
    if type(data) is not dict:
        raise ValueError(f"data is a {type(data).__name__}, not an object")
    if not (type(t) is int and MIN_TIMESTAMP_US <= t < MAX_TIMESTAMP_US):
        raise ValueError(f"timestamp {t!r:.40} outside 1970-01-01..2099-12-31")
    json_text = _json(data)
    # jsonb refuses the escaped NUL character that json.dumps writes for "\x00".
    if "\\u0000" in json_text:
        raise ValueError("data contains a NUL character, which jsonb cannot store")
    kind_bytes = kind.encode()
    json_bytes = _JSONB_VERSION + json_text.encode()
    try:
        head = _EVENT_HEAD.pack(4, 8, t - PG_EPOCH_US, 8, d)
    except _PACK_ERRORS as exc:
        raise ValueError(f"device_id {d!r:.40} is not a bigint: {exc}") from None
    return b"".join(
        (head, _LENGTH.pack(len(kind_bytes)), kind_bytes, _LENGTH.pack(len(json_bytes)), json_bytes)
    )


def pack_events(events: Sequence[Event]) -> tuple[list[bytes], list[str]]:
    """The valid events as COPY rows, and a description of each invalid one."""
    rows = []
    rejected = []
    for index, event in enumerate(events):
        try:
            rows.append(pack_event(event))
        except ValueError as exc:
            rejected.append(f"event {index}: {exc}")
    return rows, rejected


def _json(data: dict[str, Any]) -> str:
    try:
        # allow_nan=False: NaN and Infinity are not JSON, and jsonb refuses them.
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"data is not JSON: {exc}") from None


def copy_payload(chunks: Sequence[bytes]) -> bytes:
    """A complete binary COPY stream from row chunks."""
    return b"".join((COPY_HEADER, *chunks, COPY_TRAILER))


# -- controller connectivity -------------------------------------------------------------------

CONNECTIVITY = "connectivity"  # the event kind the processor's transitions have
_STATUSES = ("online", "offline")
_BIGINT = range(-(2**63), 2**63)


class StatusRow(NamedTuple):
    """One change to telemetry.controller_status: a transition (status and changed_at set)
    or a last-seen report (both None)."""

    device_id: int
    status: str | None
    changed_at_us: int | None
    last_seen_us: int


def status_rows(events: Sequence[Event], seen: Sequence[Seen]) -> tuple[list[StatusRow], list[str]]:
    """The record's connectivity transitions and last-seen reports, and what is invalid.

    The events themselves go to telemetry.events like any other; this is what the current
    state table makes of them."""
    rows: list[StatusRow] = []
    rejected: list[str] = []
    for event in events:
        if event[2] != CONNECTIVITY:
            continue
        t, d, _, data = event
        status = data.get("status") if type(data) is dict else None
        last = _last_seen_us(data)
        if status not in _STATUSES or not _fits(d, t) or last is None:
            rejected.append(f"connectivity event {tuple(event)!r:.120}: not a valid transition")
            continue
        rows.append(StatusRow(d, status, t, last))
    for index, item in enumerate(seen):
        if len(item) != 2 or not _fits(item[0], item[1]):
            rejected.append(f"last-seen report {index} {tuple(item)!r:.80}: invalid")
            continue
        rows.append(StatusRow(item[0], None, None, item[1]))
    return rows, rejected


def _fits(device_id: object, timestamp_us: object) -> bool:
    return (
        type(device_id) is int
        and device_id in _BIGINT
        and type(timestamp_us) is int
        and MIN_TIMESTAMP_US <= timestamp_us < MAX_TIMESTAMP_US
    )


def _last_seen_us(data: Any) -> int | None:
    """The event's last_seen ("YYYY-MM-DD HH:MM:SS.ffffff", UTC) in µs, or None."""
    text = data.get("last_seen") if type(data) is dict else None
    if type(text) is not str:
        return None
    try:
        us = to_epoch_us(parse_device_timestamp(text))
    except (ValueError, TypeError, OverflowError):
        return None
    return us if MIN_TIMESTAMP_US <= us < MAX_TIMESTAMP_US else None

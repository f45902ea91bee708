"""Idempotent batch writes to `telemetry.readings` and `telemetry.events` with psycopg 3.

One transaction per batch, by the fastest idempotent method measured (docs/sink.md):

* **direct**: binary COPY straight into the tables. A COPY either inserts every row or, when
  any key is already there, fails with a unique violation and inserts none, so it never lands a
  row twice. Nearly all batches take this path: in steady state no key is already stored.
* **merge**: after a unique violation (a replay after a restart, a rebalance, a duplicated
  message) the same batch goes by binary COPY into a temporary table, then
  `INSERT … SELECT … ON CONFLICT DO NOTHING`. The writer stays on this path while batches keep
  meeting stored keys and returns to direct COPY after the first batch that met none.

Both use only what PostgreSQL and TimescaleDB hypertables share (COPY, temporary tables,
ON CONFLICT on the primary key's columns).

Connectivity transitions and last-seen reports (`Record.status`) then update
`telemetry.controller_status` in a transaction of their own: one upsert per controller, the
newer transition winning and last_seen only moving forward, so a replay changes nothing.

A batch refused for its data (SQLSTATE class 22 data exception, class 23 integrity constraint)
is bisected: by records, then by rows of a failing record, each part in its own transaction,
until every row that can be written is and each one that cannot is pinned to its record. Any
other failure (connection lost, server shutting down, out of disk, deadlock, a missing table)
is `DatabaseUnavailable`: nothing is judged, the caller keeps the batch and retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from f2pipe_shared.deadletters import Reason
from f2pipe_shared.timestamps import from_epoch_us
from f2pipe_sink.batch import Record
from f2pipe_sink.rows import READING_ROW_BYTES, StatusRow, copy_payload

log = logging.getLogger(__name__)

READINGS = "telemetry.readings"
EVENTS = "telemetry.events"

# Created once per connection; ON COMMIT DELETE ROWS empties them at every commit, and a
# rollback discards what a failed transaction put there.
_STAGING = (
    """CREATE TEMPORARY TABLE IF NOT EXISTS sink_readings (
        "timestamp" timestamptz, device_id bigint, datapoint_id integer, value double precision
    ) ON COMMIT DELETE ROWS""",
    """CREATE TEMPORARY TABLE IF NOT EXISTS sink_events (
        "timestamp" timestamptz, device_id bigint, kind text, data jsonb
    ) ON COMMIT DELETE ROWS""",
)
# The conflict target is spelled as columns, not ON CONSTRAINT: TimescaleDB infers the
# matching unique index on every chunk of a hypertable that way.
_MERGE_READINGS = """INSERT INTO telemetry.readings ("timestamp", device_id, datapoint_id, value)
    SELECT "timestamp", device_id, datapoint_id, value FROM sink_readings
    ON CONFLICT ("timestamp", device_id, datapoint_id) DO NOTHING"""
_MERGE_EVENTS = """INSERT INTO telemetry.events ("timestamp", device_id, kind, data)
    SELECT "timestamp", device_id, kind, data FROM sink_events
    ON CONFLICT ("timestamp", device_id, kind) DO NOTHING"""

# A transition wins only over an older one; a last-seen report (changed_at NULL) never touches
# the status. GREATEST ignores NULLs.
_UPSERT_STATUS = """INSERT INTO telemetry.controller_status AS s
        (device_id, status, changed_at, last_seen)
    SELECT * FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[], %s::timestamptz[])
    ON CONFLICT (device_id) DO UPDATE SET
        status = CASE
            WHEN EXCLUDED.changed_at IS NOT NULL
                AND (s.changed_at IS NULL OR EXCLUDED.changed_at > s.changed_at)
            THEN EXCLUDED.status ELSE s.status END,
        changed_at = GREATEST(s.changed_at, EXCLUDED.changed_at),
        last_seen = GREATEST(s.last_seen, EXCLUDED.last_seen)"""

# libpq settings that bound how long a write can hang on a dead server or network: a blocked
# write would otherwise stall the consumer past max.poll.interval.ms.
CONNECT_OPTIONS: dict[str, str | int] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
    "application_name": "f2pipe-sink",
}


class DatabaseUnavailable(Exception):
    """The write failed for a reason that is not its data: keep the batch, retry later."""


class Rejection(NamedTuple):
    """A record with rows the database refused: why, and which rows."""

    record: Record
    reason: Reason
    detail: str


class WriteResult(NamedTuple):
    readings: int  # rows inserted (a key already stored is not inserted again)
    events: int
    rejected: list[Rejection]
    transactions: int
    merged: bool  # went by the temporary table + ON CONFLICT path
    committed_at: float  # time.time() when the last transaction committed
    statuses: int = 0  # controllers whose controller_status row was upserted


class Refused(Exception):
    """The database refused a part's data (SQLSTATE class 22 or 23)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _Tally:
    def __init__(self) -> None:
        self.readings = 0
        self.events = 0
        self.transactions = 0


class Writer:
    """One connection, reopened after any failure; used from one thread."""

    def __init__(self, conninfo: str) -> None:
        # Ours are defaults: whatever the operator's conninfo sets wins.
        self._conninfo = make_conninfo("", **{**CONNECT_OPTIONS, **conninfo_to_dict(conninfo)})
        self._conn: psycopg.Connection[TupleRow] | None = None
        self.direct = True  # which path the next batch tries first

    def write(self, records: Sequence[Record]) -> WriteResult:
        """Write the records' rows; raise DatabaseUnavailable when it cannot be decided."""
        tally = _Tally()
        merged = not self.direct
        rejected: list[Rejection] = []
        try:
            if self.direct:
                try:
                    self._transaction(records, tally, direct=True)
                except pg_errors.UniqueViolation:
                    # Some key is already stored: the COPY inserted nothing; merge instead.
                    merged, self.direct = True, False
                    self._transaction(records, tally, direct=False)
            else:
                self._transaction(records, tally, direct=False)
                # Nothing was already there: the replay is over, go back to plain COPY.
                self.direct = tally.readings + tally.events == sum(r.rows for r in records)
        except Refused:
            merged = True
            rejected = isolate_refused(
                records,
                lambda readings, events: self._write_rows(readings, events, tally, direct=False),
            )
        statuses = self._write_status(records, tally)
        return WriteResult(
            tally.readings, tally.events, rejected, tally.transactions, merged, time.time(),
            statuses,
        )  # fmt: skip

    def ping(self) -> None:
        """Raise DatabaseUnavailable unless the server answers."""
        try:
            conn = self._connection()
            conn.execute("SELECT 1")
            conn.rollback()
        except psycopg.Error as exc:
            self._discard_connection()
            raise DatabaseUnavailable(_describe(exc)) from exc

    def close(self) -> None:
        self._discard_connection()

    # -- transactions ------------------------------------------------------------------------

    def _transaction(self, records: Sequence[Record], tally: _Tally, *, direct: bool) -> None:
        readings, events = _rows_of(records)
        self._write_rows(readings, events, tally, direct=direct)

    def _write_rows(
        self,
        reading_chunks: Sequence[bytes],
        event_rows: Sequence[bytes],
        tally: _Tally,
        *,
        direct: bool,
    ) -> None:
        """One transaction: reading rows (chunks of COPY rows) and event rows, or none of them."""
        n_readings = sum(map(len, reading_chunks)) // READING_ROW_BYTES
        if not n_readings and not event_rows:
            return
        readings = copy_payload(reading_chunks) if n_readings else b""
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                inserted_readings = inserted_events = 0
                if n_readings:
                    with cur.copy(_copy(READINGS if direct else "sink_readings")) as copy:
                        copy.write(readings)
                    if direct:
                        inserted_readings = n_readings
                    else:
                        cur.execute(_MERGE_READINGS)
                        inserted_readings = cur.rowcount
                if event_rows:
                    with cur.copy(_copy(EVENTS if direct else "sink_events")) as copy:
                        copy.write(copy_payload(event_rows))
                    if direct:
                        inserted_events = len(event_rows)
                    else:
                        cur.execute(_MERGE_EVENTS)
                        inserted_events = cur.rowcount
            conn.commit()
        except pg_errors.UniqueViolation:
            self._rollback()
            if direct:
                raise
            # The merge path cannot meet the primary key; another unique index it can.
            raise Refused(Reason.constraint_violation, "unique violation") from None
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            self._rollback()
            reason = (
                Reason.constraint_violation
                if isinstance(exc, psycopg.IntegrityError)
                else Reason.invalid_record
            )
            raise Refused(reason, _describe(exc)) from None
        except psycopg.Error as exc:
            self._discard_connection()
            raise DatabaseUnavailable(_describe(exc)) from exc
        tally.readings += inserted_readings
        tally.events += inserted_events
        tally.transactions += 1

    def _write_status(self, records: Sequence[Record], tally: _Tally) -> int:
        """Upsert telemetry.controller_status from the records' connectivity rows."""
        merged = merge_status(row for record in records for row in record.status)
        if not merged:
            return 0
        columns: tuple[list[object], ...] = ([], [], [], [])
        for device, status, changed, last in merged:
            columns[0].append(device)
            # A report without a transition inserts a row as online: the controller was heard.
            columns[1].append(status or "online")
            columns[2].append(None if changed is None else from_epoch_us(changed))
            columns[3].append(from_epoch_us(last))
        conn = self._connection()
        try:
            conn.execute(_UPSERT_STATUS, columns)
            conn.commit()
        except psycopg.Error as exc:
            # Checked in rows.status_rows: nothing here is the data's fault.
            self._discard_connection()
            raise DatabaseUnavailable(_describe(exc)) from exc
        tally.transactions += 1
        return len(merged)

    # -- connection --------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[TupleRow]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = psycopg.connect(self._conninfo)
            for statement in _STAGING:
                conn.execute(statement)
            conn.commit()
        except psycopg.Error as exc:
            raise DatabaseUnavailable(_describe(exc)) from exc
        log.info("connected to the database")
        self._conn = conn
        return conn

    def _rollback(self) -> None:
        try:
            if self._conn is not None:
                self._conn.rollback()
        except psycopg.Error:
            self._discard_connection()

    def _discard_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                log.debug("closing a broken connection failed", exc_info=True)


def merge_status(rows: Iterable[StatusRow]) -> list[StatusRow]:
    """One row per controller (an upsert may touch a row once): its newest transition and
    its newest last_seen; sorted by controller, so concurrent sinks lock in one order."""
    by_device: dict[int, StatusRow] = {}
    for row in rows:
        old = by_device.get(row.device_id)
        if old is None:
            by_device[row.device_id] = row
            continue
        newer = row.changed_at_us is not None and (
            old.changed_at_us is None or row.changed_at_us > old.changed_at_us
        )
        status, changed = (row.status, row.changed_at_us) if newer else old[1:3]
        last = max(old.last_seen_us, row.last_seen_us)
        by_device[row.device_id] = StatusRow(row.device_id, status, changed, last)
    return [by_device[d] for d in sorted(by_device)]


# -- isolating refused rows ------------------------------------------------------------------

Transaction = Callable[[Sequence[bytes], Sequence[bytes]], None]
"""Write reading rows (chunks of COPY rows) and event rows in one transaction on the merge
path, or raise Refused: `Writer._write_rows`, or a fake in unit tests."""


def isolate_refused(records: Sequence[Record], transaction: Transaction) -> list[Rejection]:
    """Write what can be written; one Rejection per record with refused rows.

    Bisects by records, then by rows of a refused record, each part in its own transaction.
    """
    if len(records) == 1:
        return _isolate_rows(records[0], transaction)
    middle = len(records) // 2
    rejected: list[Rejection] = []
    for part in (records[:middle], records[middle:]):
        try:
            transaction(*_rows_of(part))
        except Refused:
            rejected += isolate_refused(part, transaction)
    return rejected


def _isolate_rows(record: Record, transaction: Transaction) -> list[Rejection]:
    size = READING_ROW_BYTES
    rows: list[tuple[bool, int, bytes]] = [
        (True, i, record.readings[i * size : (i + 1) * size]) for i in range(record.n_readings)
    ]
    rows += [(False, i, row) for i, row in enumerate(record.events)]
    refused: list[tuple[bool, int, Refused]] = []
    _bisect(rows, transaction, refused)
    if not refused:  # refused as a whole, accepted in parts: nothing left to blame
        return []
    reason = refused[0][2].reason
    parts = [
        f"{'reading' if is_reading else 'event'} row {i}: {problem.detail}"
        for is_reading, i, problem in refused
    ]
    detail = f"{len(refused)} of {record.rows} rows refused by the database: " + "; ".join(parts)
    log.warning(
        "database refused rows",
        extra={
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "reason": str(reason),
            "refused": len(refused),
        },
    )
    return [Rejection(record, reason, detail)]


def _bisect(
    rows: list[tuple[bool, int, bytes]],
    transaction: Transaction,
    refused: list[tuple[bool, int, Refused]],
) -> None:
    readings = [row for is_reading, _, row in rows if is_reading]
    events = [row for is_reading, _, row in rows if not is_reading]
    try:
        transaction(readings, events)
    except Refused as exc:
        if len(rows) == 1:
            refused.append((rows[0][0], rows[0][1], exc))
            return
        middle = len(rows) // 2
        _bisect(rows[:middle], transaction, refused)
        _bisect(rows[middle:], transaction, refused)


def _rows_of(records: Sequence[Record]) -> tuple[list[bytes], list[bytes]]:
    """The records' reading chunks and event rows, in order."""
    return [r.readings for r in records], [row for r in records for row in r.events]


def _copy(table: str) -> str:
    return f"COPY {table} FROM STDIN (FORMAT BINARY)"


def _describe(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = diag.message_primary or str(exc).strip() or type(exc).__name__
    if diag.message_detail:
        text += f" ({diag.message_detail})"
    return f"{diag.sqlstate or type(exc).__name__}: {text}"

"""LISTEN registry_changed: registry edits reach the caches within milliseconds.

The database sends one notification per changed statement (f2pipe/migrations/0003); each becomes a
``Change`` the resolver applies to memory and Redis. Silence is checked now and then with a
query: a dead TCP connection would otherwise look like a quiet registry.

A listener that reconnects (a PostgreSQL restart, a network cut) keeps the caches: the same
notifications are also rows of ``registry.changes`` (migration 0017), and it applies the rows
it may have missed. Which ones: the listener remembers a snapshot (``pg_current_snapshot()``)
every transaction visible in which it has applied, and reads the rows of the transactions
not visible in it. That snapshot moves forward with a marker: every keepalive notifies a
channel of the listener's own, in the statement that takes the snapshot, and PostgreSQL
delivers notifications in commit order, so once the marker arrives, every change the snapshot
sees has arrived before it. Only the first connection of the process, a listener away longer
than ``REPLAY_MAX_SECONDS``, or a database without the table empties the caches.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors
from psycopg.rows import TupleRow

from f2pipe_processor.resolver import Change, Resolver

log = logging.getLogger(__name__)

CHANNEL = "registry_changed"
# The parent key each table's notification carries (see docs/data_model.md).
PARENT_KEYS = {
    "pins": "connector_ids",
    "connectors": "controller_ids",
    "datapoints": "template_ids",
    "device_templates": "device_type_ids",
    "devices": "macs",
}
# registry.changes keeps 7 days (migration 0017): a listener away longer than this margin
# cannot trust the table to hold everything it missed, and empties the caches instead.
REPLAY_MAX_SECONDS = 86_400.0
# The rows of the transactions a snapshot does not see: committed after it was taken.
MISSED = """
SELECT payload::text FROM registry.changes
WHERE xid >= pg_snapshot_xmin(%(since)s::pg_snapshot)
  AND NOT pg_visible_in_snapshot(xid, %(since)s::pg_snapshot)
ORDER BY id
"""
# A database whose table or grant is missing (migration 0017 not applied yet): flush instead.
NO_CHANGES_TABLE = (errors.UndefinedTable, errors.InsufficientPrivilege)

Connection = psycopg.AsyncConnection[TupleRow]


def parse_change(payload: str) -> Change | None:
    """A notification's JSON payload as a Change; None for a payload we do not understand."""
    try:
        doc: Any = json.loads(payload)
        table = doc["table"]
        ids = doc.get("ids")
        parents = doc.get(PARENT_KEYS.get(table, ""), None) or []
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(table, str) or not (ids is None or isinstance(ids, list)):
        return None
    return Change(table, None if ids is None else tuple(ids), tuple(parents))


def coalesce(changes: Iterable[Change | None]) -> list[Change] | None:
    """One change per table, with every id and parent of ``changes``; None when one of them
    cannot be applied by ids (unreadable, TRUNCATE, too many rows): then flush instead."""
    ids: dict[str, set[int]] = {}
    parents: dict[str, set[Any]] = {}
    for change in changes:
        if change is None or change.ids is None:
            return None
        ids.setdefault(change.table, set()).update(change.ids)
        parents.setdefault(change.table, set()).update(change.parents)
    return [Change(table, tuple(ids[table]), tuple(parents[table])) for table in ids]


def xmax(snapshot: str) -> int:
    """The ``xmax`` of a snapshot's text form ``xmin:xmax:xip,…``."""
    return int(snapshot.split(":")[1])


@dataclass(frozen=True, slots=True)
class Synced:
    """A snapshot every transaction visible in which the caches have seen the change of."""

    snapshot: str  # pg_snapshot as text
    at: float  # monotonic time it was taken


@dataclass(eq=False)
class RegistryListener:
    conninfo: str
    resolver: Resolver
    retry_max_seconds: float = 5.0
    keepalive_seconds: float = 10.0
    connected: bool = field(default=False, init=False)
    applied: int = field(default=0, init=False)
    replayed: int = field(default=0, init=False)  # changes read from registry.changes
    reconnects: int = field(default=0, init=False)  # connections after the first one
    last_change_at: float | None = field(default=None, init=False)  # wall clock of last change
    _synced: Synced | None = field(default=None, init=False, repr=False)
    _markers: dict[int, Synced] = field(default_factory=dict, init=False, repr=False)
    _tokens: itertools.count[int] = field(default_factory=itertools.count, init=False, repr=False)
    _channel: str = field(
        default_factory=lambda: f"registry_synced_{uuid.uuid4().hex[:12]}", init=False
    )

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff."""
        delay = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo,
                    autocommit=True,
                    application_name="f2pipe-processor-listener",
                    connect_timeout=5,
                ) as conn:
                    await self._start(conn)
                    self.connected = True
                    delay = 0.2
                    log.info("listening for registry changes", extra={"channel": CHANNEL})
                    await self._listen(conn)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                if self.connected:
                    log.warning(
                        "registry listener lost its connection; the caches are kept, and what "
                        "changed meanwhile is read from registry.changes on reconnect",
                        extra={"error": f"{type(exc).__name__}: {exc}"},
                    )
                self.connected = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_seconds)

    async def _start(self, conn: Connection) -> None:
        # The snapshot before LISTEN: a change it does not see either arrives as a
        # notification or is read from registry.changes on the next reconnect.
        snapshot = await self._snapshot(conn)
        await conn.execute(f"LISTEN {CHANNEL}")
        await conn.execute(f"LISTEN {self._channel}")
        self._markers.clear()
        since = self._synced
        if since is None:
            # The first connection of this process: what Redis holds may be older than any
            # snapshot we know of (no processor may have been listening).
            await self.resolver.flush()
        else:
            self.reconnects += 1
            if not await self._catch_up(conn, since, snapshot):
                await self.resolver.flush()
        self._synced = Synced(snapshot, time.monotonic())

    async def _catch_up(self, conn: Connection, since: Synced, now: str) -> bool:
        """Apply the changes committed after ``since``; False when the caches must be emptied."""
        away = time.monotonic() - since.at
        if away > REPLAY_MAX_SECONDS or xmax(now) < xmax(since.snapshot):
            # Too long for registry.changes, or another database (restored: its
            # transaction ids went back).
            log.warning("registry listener was away too long, or the database is another one: "
                        "emptying the caches", extra={"away_s": round(away)})  # fmt: skip
            return False
        try:
            cursor = await conn.execute(MISSED, {"since": since.snapshot})
            payloads = [row[0] for row in await cursor.fetchall()]
        except NO_CHANGES_TABLE as exc:
            log.warning("cannot read registry.changes (migration 0017, its grant): emptying "
                        "the caches", extra={"error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
            return False
        changes = coalesce(parse_change(p) for p in payloads)
        if changes is None:
            return False  # a TRUNCATE or a change too big to list: as its notification would
        for change in changes:
            await self.resolver.invalidate(change)
        self.replayed += len(payloads)
        self.resolver.metrics.registry_replayed.inc(len(payloads))
        log.info("registry listener reconnected: caches kept, missed changes applied",
                 extra={"changes": len(payloads), "away_s": round(away, 1)})  # fmt: skip
        return True

    async def _listen(self, conn: Connection) -> None:
        while True:
            async for notify in conn.notifies(timeout=self.keepalive_seconds):
                if notify.channel == self._channel:
                    # Ours only: any login may NOTIFY any channel.
                    if notify.pid == conn.info.backend_pid:
                        self._marker_arrived(notify.payload)
                else:
                    await self._apply(notify.payload)
            async with asyncio.timeout(5):
                await self._send_marker(conn)

    async def _snapshot(self, conn: Connection) -> str:
        cursor = await conn.execute("SELECT pg_current_snapshot()::text")
        row = await cursor.fetchone()
        assert row is not None
        return str(row[0])

    async def _send_marker(self, conn: Connection) -> None:
        """The keepalive: a snapshot, and a notification to ourselves committed after it."""
        token = next(self._tokens)
        cursor = await conn.execute(
            "SELECT pg_current_snapshot()::text, pg_notify(%s, %s)", (self._channel, str(token))
        )
        row = await cursor.fetchone()
        assert row is not None
        self._markers[token] = Synced(str(row[0]), time.monotonic())

    def _marker_arrived(self, payload: str) -> None:
        # Everything committed before the marker's snapshot was delivered before the marker.
        token = int(payload) if payload.isdigit() else -1
        synced = self._markers.get(token)
        if synced is None:
            return
        self._synced = synced
        for older in [t for t in self._markers if t <= token]:
            del self._markers[older]

    async def _apply(self, payload: str) -> None:
        change = parse_change(payload)
        if change is None:
            log.warning("unreadable registry_changed payload: emptying the caches",
                        extra={"payload": payload[:200]})  # fmt: skip
            await self.resolver.flush()
        else:
            await self.resolver.invalidate(change)
        self.applied += 1
        self.last_change_at = time.time()
        log.debug("registry change applied", extra={"payload": payload[:200]})
